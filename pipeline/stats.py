"""Metrics and honest intervals for small test splits of grouped images (used by evaluate and register).

Test splits hold 15-300 images, and the near-duplicates of one lesion (a dedup group) are one
piece of evidence, not several: every resampling here moves whole groups, stratified by class.
A metric that cannot be measured is None in reports and nan inside arrays, never 0.
Pure numpy/scipy: no TensorFlow, no MLflow.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import brentq
from scipy.stats import beta, norm

AVERAGED = ("balanced_accuracy", "macro_f1", "roc_auc")  # class-averaged: each class weighs the same


def fmt(value, digits: int = 3) -> str:
    """A metric as people read it: None (or nan) is "not measured", never 0 or "nan"."""
    return "not measured" if value is None or value != value else f"{value:.{digits}f}"


def clopper_pearson(k: float, n: float, confidence: float = 0.95) -> tuple[float, float] | None:
    """Exact binomial interval; k may be fractional (group-level counts). None when n == 0."""
    if n <= 0:
        return None
    a = (1 - confidence) / 2
    low = 0.0 if k <= 0 else float(beta.ppf(a, k, n - k + 1))
    high = 1.0 if k >= n else float(beta.ppf(1 - a, k + 1, n - k))
    return low, high


def calibration_error(y: np.ndarray, probs: np.ndarray, bins: int) -> float:
    """Expected calibration error of the top-1 confidence, equal-width bins."""
    confidence, correct = probs.max(1), probs.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    return float(sum(abs(confidence[which == b].mean() - correct[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))


def confusions(y: np.ndarray, pred: np.ndarray, weights: np.ndarray, k: int, inverse=None) -> np.ndarray:
    """(rows, k, k) weighted confusion matrices (true x predicted), one per row of weights, in one matrix product.
    Weights are per image, or per group when `inverse` (each image's group) is given: a smaller product."""
    inverse, weights = np.arange(len(y)) if inverse is None else inverse, np.atleast_2d(weights)
    # integer weights (swaps, resample counts) give integer counts: exact in float32, and several times faster
    exact32 = np.issubdtype(weights.dtype, np.integer) and np.abs(weights).sum(1).max() * len(y) < 2 ** 24
    onehot = np.zeros((inverse.max() + 1, k * k), dtype=np.float32 if exact32 else float)
    np.add.at(onehot, (inverse, y * k + pred), 1)
    return (weights.astype(onehot.dtype) @ onehot).astype(float).reshape(-1, k, k)


def confusion_metrics(conf: np.ndarray, classes) -> dict[str, np.ndarray]:
    """Every confusion-based metric by name (recall_<c>, sensitivity_<c>, ...), one value per matrix; nan where
    unmeasurable: the recall of a class absent from the sample, a specificity without negatives."""
    diag = np.diagonal(conf, axis1=1, axis2=2)
    true, predicted, total = conf.sum(2), conf.sum(1), conf.sum((1, 2))[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        recall, precision = diag / true, diag / predicted
        specificity = (total - true - predicted + diag) / (total - true)
        present = np.isfinite(recall)
        table = {"accuracy": diag.sum(1) / total[:, 0],
                 # sklearn's balanced accuracy: the mean recall of the classes present in y
                 "balanced_accuracy": np.where(present, recall, 0).sum(1) / present.sum(1),
                 # F1 of a class neither present nor predicted is 0, as sklearn's zero_division=0
                 "macro_f1": np.nan_to_num(2 * diag / (true + predicted)).mean(1)}
    for i, c in enumerate(classes):
        table.update({f"precision_{c}": precision[:, i], f"recall_{c}": recall[:, i],
                      f"specificity_{c}": specificity[:, i], f"sensitivity_{c}": recall[:, i]})
    return table


def named(name: str, table: dict[str, np.ndarray]) -> np.ndarray:
    if name not in table:
        raise ValueError(f"unknown metric {name!r}: not one of roc_auc, {', '.join(table)}")
    return table[name]


def weighted_auc(positive: np.ndarray, score: np.ndarray, weight: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half, each pair weighted by its sample weights."""
    _, level = np.unique(score, return_inverse=True)
    pos, neg = np.bincount(level, weight * positive), np.bincount(level, weight * ~positive)
    return float(pos @ (np.cumsum(neg) - neg / 2) / (pos.sum() * neg.sum()))


def auc_values(y: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """roc_auc per row of weights: binary AUC of probs[:, 1] for 2 classes, else the one-vs-rest
    macro over the classes present (an absent class is skipped, not fatal); nan below 2 classes."""
    k, out = probs.shape[1], np.full(len(weights), np.nan)
    for row, w in enumerate(weights):
        present = np.flatnonzero(np.bincount(y, w, minlength=k) > 0)
        if len(present) >= 2:
            out[row] = np.mean([weighted_auc(y == c, probs[:, c], w) for c in ([1] if k == 2 else present)])
    return out


def scores(y, probs, classes, positive, bins: int) -> dict:
    """Test metrics of one model; None where a metric cannot be measured on this split."""
    y, probs = np.asarray(y), np.asarray(probs, dtype=float)
    table = confusion_metrics(confusions(y, probs.argmax(1), np.ones(len(y)), len(classes)), classes)
    out = {k: v[0] for k, v in table.items() if not k.startswith("sensitivity_") or k[12:] in positive}
    out.update(roc_auc=auc_values(y, probs, np.ones((1, len(y))))[0], ece=calibration_error(y, probs, bins))
    return {**{k: float(v) if np.isfinite(v) else None for k, v in out.items()}, "test_images": int(len(y))}


def group_codes(y: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray]:
    """Each image's group index, and each group's class: its most common label (ties: smallest index)."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    counts = np.zeros((inverse.max() + 1, np.max(y) + 1), dtype=int)
    np.add.at(counts, (inverse, y), 1)
    return inverse, counts.argmax(1)


def group_resample_weights(y, groups, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n_images) counts: groups drawn with replacement within their class, as many as there
    are; an image weighs as often as its group was drawn."""
    inverse, gclass = group_codes(np.asarray(y), groups)
    rng, n_groups = np.random.default_rng(seed), len(gclass)
    counts = np.zeros(n_resamples * n_groups, dtype=int)
    offset = np.arange(n_resamples)[:, None] * n_groups
    for c in np.unique(gclass):
        members = np.flatnonzero(gclass == c)
        draws = members[rng.integers(0, len(members), (n_resamples, len(members)))]
        counts += np.bincount((draws + offset).ravel(), minlength=len(counts))
    return counts.reshape(n_resamples, n_groups)[:, inverse]


def metric_values(name, y, probs, weights, classes) -> np.ndarray:
    """The metric `name` for each row of `weights` (sample weights); nan where unmeasurable in a row."""
    y, probs = np.asarray(y), np.asarray(probs, dtype=float)
    weights = np.atleast_2d(weights)
    if name == "roc_auc":
        return auc_values(y, probs, weights)
    return named(name, confusion_metrics(confusions(y, probs.argmax(1), weights, len(classes)), classes))


def effective_groups(name: str, gclass: np.ndarray, classes) -> float:
    """How many independent groups the metric rests on (used for its exact binomial floor)."""
    per_class = np.bincount(gclass, minlength=len(classes)).astype(float)
    if name == "accuracy":
        return per_class.sum()
    if name in AVERAGED:  # the variance of a mean of K class rates ~ sum_c p(1-p)/n_c / K^2
        present = per_class[per_class > 0]
        return len(present) ** 2 / np.sum(1 / present)
    kind, _, label = name.partition("_")
    if kind not in ("recall", "sensitivity", "specificity"):
        raise ValueError(f"no interval for {name!r}")
    own = per_class[list(classes).index(label)]
    return own if kind != "specificity" else per_class.sum() - own


def interval(name, y, probs, groups, classes, n_resamples, seed, confidence=0.95) -> dict:
    """Estimate and a never-degenerate interval: the stratified group bootstrap (percentile) joined with
    the exact Clopper-Pearson interval of the estimate over the metric's effective number of groups."""
    y = np.asarray(y)
    estimate = metric_values(name, y, probs, np.ones(len(y)), classes)[0]
    _, gclass = group_codes(y, groups)
    if not np.isfinite(estimate):
        return {"estimate": None, "low": None, "high": None, "groups": len(gclass),
                "method": f"{name} cannot be measured on this split"}
    n_eff = effective_groups(name, gclass, classes)
    values = metric_values(name, y, probs, group_resample_weights(y, groups, n_resamples, seed), classes)
    values, a = values[np.isfinite(values)], (1 - confidence) / 2
    boot = np.quantile(values, [a, 1 - a]) if len(values) else [estimate, estimate]
    exact = clopper_pearson(estimate * n_eff, n_eff, confidence)
    method = (f"{confidence * 100:g}% interval: percentile bootstrap of {len(gclass)} duplicate groups resampled "
              f"within their class ({n_resamples} resamples), widened to at least the exact binomial "
              f"(Clopper-Pearson) interval over {n_eff:.1f} effective independent groups, so that a small split "
              f"never reports a zero width")
    return {"estimate": float(estimate), "low": float(min(boot[0], exact[0])),
            "high": float(max(boot[1], exact[1])), "method": method, "groups": len(gclass)}


def class_intervals(y, pred, groups, classes, confidence=0.95) -> dict:
    """Per class: sensitivity and specificity with exact intervals where each duplicate group counts once
    (k = the sum over groups of the share of its images classified right, n = the number of groups)."""
    y, pred = np.asarray(y), np.asarray(pred)
    inverse, gclass = group_codes(y, groups)
    out = {}
    for i, c in enumerate(classes):
        sens = group_proportion(inverse[y == i], pred[y == i] == i, confidence)
        spec = group_proportion(inverse[y != i], pred[y != i] != i, confidence)
        out[c] = {"sensitivity": sens[0], "sensitivity_ci": sens[1], "specificity": spec[0],
                  "specificity_ci": spec[1], "images": int((y == i).sum()), "groups": int((gclass == i).sum())}
    return out


def group_proportion(group: np.ndarray, correct: np.ndarray, confidence: float):
    """(proportion, exact interval) over groups, each group's images averaged first; (None, None) if empty."""
    if not len(group):
        return None, None
    _, which = np.unique(group, return_inverse=True)
    k = float(np.sum(np.bincount(which, correct) / np.bincount(which)))
    return float(k / (which.max() + 1)), clopper_pearson(k, which.max() + 1, confidence)


def swapped_values(name, y, first, second, swaps, inverse, classes) -> np.ndarray:
    """The metric of model `first` after taking `second`'s outputs on the swapped groups, per row of swaps."""
    if name == "roc_auc":
        one = np.ones((1, len(y)))
        return np.array([auc_values(y, np.where(s[inverse, None] > 0, second, first), one)[0] for s in swaps])
    k = len(classes)
    conf = (confusions(y, first.argmax(1), 1 - swaps, k, inverse)
            + confusions(y, second.argmax(1), swaps, k, inverse))
    return named(name, confusion_metrics(conf, classes))


def kth_largest(values: np.ndarray, alpha: float) -> float:
    """The value a randomization test needs the observed statistic to exceed: p = (1 + #{T* >= T}) / (B + 1) <= alpha
    exactly when T > the k-th largest T*, k = floor(alpha (B + 1))."""
    k = int(np.floor(alpha * (len(values) + 1) + 1e-9))
    if k < 1:
        raise ValueError(f"{len(values)} resamples cannot reach a level of {alpha}: use at least {1 / alpha:.0f}")
    return float(np.sort(values)[-k])


def linear_terms(name: str, y: np.ndarray, classes):
    """(weight per image, right(pred) -> bool per image) with metric = weight @ right(pred), for the metrics linear
    in per-image correctness (accuracy, balanced accuracy, recall/sensitivity, specificity); else None."""
    classes, counts = list(classes), np.bincount(y, minlength=len(classes))
    kind, _, label = name.partition("_")
    if name in ("accuracy", "balanced_accuracy"):
        weight = np.ones(len(y)) / (len(y) if name == "accuracy" else (counts > 0).sum() * counts[y])
    elif kind in ("recall", "sensitivity", "specificity") and label in classes:
        own = (y == classes.index(label)) != (kind == "specificity")  # the images the rate is over
        weight = own / max(own.sum(), 1)
        if kind == "specificity":
            return weight, lambda pred: pred != classes.index(label)
    else:
        return None
    return weight, lambda pred: pred == y


def restricted_variance(wins, losses, n, delta):
    """Per class, the variance of one group's paired outcome (+1: only the new model right, -1: only the old one) at
    the maximum-likelihood disagreement rates under 'true difference = delta' (Tango 1998). With no disagreement
    seen it is still |delta| (1 - |delta|): the hypothesis itself requires disagreements."""
    w = wins * (1 + delta) + losses * (1 - delta) - 2 * n * delta
    old_only = (w + np.sqrt(np.maximum(w * w + 8 * n * losses * delta * (1 - delta), 0))) / (4 * n)
    return np.maximum(2 * old_only + delta - delta ** 2, 0)


def score_lower(weight, right_new, right_old, inverse, gclass, alpha: float) -> float:
    """One-sided lower confidence bound of weight @ (right_new - right_old) by inverting a score test stratified by
    class, each duplicate group one unit (its images' disagreements averaged). Unlike the sign-flip bound it does
    not collapse when the two models happen to disagree on few groups."""
    total = np.bincount(inverse, weight)
    used = total > 0
    share = lambda right: np.bincount(inverse, weight * right)[used] / total[used]  # noqa: E731
    wins, losses = share(right_new & ~right_old), share(right_old & ~right_new)
    strata = [np.bincount(gclass[used], v) for v in (total[used] ** 2, wins, losses, np.ones(used.sum()))]
    q, w, lose, n = (v[strata[3] > 0] for v in strata)
    estimate, z = total[used] @ (wins - losses), norm.ppf(1 - alpha)

    def excess(delta):  # > 0 where 'true difference = delta' is rejected
        delta = np.asarray(delta, dtype=float)
        return estimate - delta - z * np.sqrt(restricted_variance(w, lose, n, delta[..., None]) @ q)

    grid = np.linspace(-1 + 1e-9, estimate, 401)  # the bound is the smallest delta that is not rejected
    first = int(np.argmax(excess(grid) <= 0))
    return float(grid[0] if first == 0 else brentq(excess, grid[first - 1], grid[first]))


def flip_differences(name, y, new, old, inverse, classes, n_resamples: int, seed: int) -> np.ndarray:
    """metric(new) - metric(old) with the two models' outputs exchanged on random duplicate groups; row 0 exchanges
    nothing (the observed difference, computed by exactly the same arithmetic as the others)."""
    n_groups, rng = inverse.max() + 1, np.random.default_rng(seed)
    swaps = np.vstack([np.zeros(n_groups, dtype=int), rng.integers(0, 2, (n_resamples, n_groups))])
    return (swapped_values(name, y, new, old, swaps, inverse, classes)
            - swapped_values(name, y, old, new, swaps, inverse, classes))


def lower_bound(diffs: np.ndarray, terms, inverse, gclass, alpha: float) -> float:
    """The more cautious of the sign-flip bound and, for a linear metric (terms not None), the score bound."""
    flip = diffs[0] - kth_largest(diffs[1:], alpha)
    return flip if terms is None else min(flip, score_lower(*terms, inverse, gclass, alpha))


def paired_comparison(name, y, probs_new, probs_old, groups, classes, n_resamples, seed,
                      confidence=0.95, rule="superiority", margin=0.0) -> dict:
    """New vs old model on the same test images. `lower`/`upper`: two-sided interval at `confidence`;
    `one_sided_lower`: the one-sided bound at `confidence` that decides the rule.

    Why two bounds: exchanging the two models' outputs within random groups (a sign-flip test) is exact for
    "equally good", but it conditions on the disagreements seen, and when a worse model happens to disagree
    rarely (often, at 15-45 images) it looks certain: alone it passed ~20% of models worse by the margin. The
    score test takes its variance under the hypothesis itself, which forces disagreements. Taking the lower
    of the two keeps both error rates at most 1 - confidence (bench/gate_simulation.py measures them)."""
    y, new, old = np.asarray(y), np.asarray(probs_new, dtype=float), np.asarray(probs_old, dtype=float)
    linear = linear_terms(name, y, classes)
    if rule not in ("superiority", "non_inferiority") or (rule == "non_inferiority" and linear is None):
        raise ValueError(f"rule {rule!r} on {name!r}: superiority works on every metric, non_inferiority only on "
                         f"accuracy, balanced_accuracy, recall_, sensitivity_ and specificity_<class>")
    inverse, gclass = group_codes(y, groups)
    diffs = flip_differences(name, y, new, old, inverse, classes, n_resamples, seed)
    alpha, identical = 1 - confidence, bool(np.array_equal(new.argmax(1), old.argmax(1)))
    out = {"new": metric_values(name, y, new, np.ones(len(y)), classes)[0],
           "old": metric_values(name, y, old, np.ones(len(y)), classes)[0], "difference": diffs[0],
           "lower": np.nan, "upper": np.nan, "one_sided_lower": np.nan, "rule": rule, "margin": float(margin),
           "confidence": confidence, "verdict": "not_shown", "identical": identical,
           "method": comparison_method(linear is not None, len(gclass), n_resamples)}
    if np.all(np.isfinite(diffs)):
        ahead = behind = None  # the score test's terms, for new - old and for old - new
        if linear:
            weight, right = linear[0], (linear[1](new.argmax(1)), linear[1](old.argmax(1)))
            ahead, behind = (weight, *right), (weight, *right[::-1])
        out.update(one_sided_lower=lower_bound(diffs, ahead, inverse, gclass, alpha),
                   lower=lower_bound(diffs, ahead, inverse, gclass, alpha / 2),
                   upper=-lower_bound(-diffs, behind, inverse, gclass, alpha / 2))
        if out["one_sided_lower"] > (0.0 if rule == "superiority" else -margin):
            out["verdict"] = "not_worse" if rule == "non_inferiority" else "not_shown" if identical else "better"
    return {k: (v if not isinstance(v, float) else float(v) if np.isfinite(v) else None) for k, v in out.items()}


def comparison_method(linear: bool, groups: int, n_resamples: int) -> str:
    flip = (f"a sign-flip randomization test over {groups} duplicate groups ({n_resamples} random exchanges of the "
            f"two models' outputs within a group, exact when the two models are interchangeable)")
    if not linear:
        return f"Paired: the bounds come from {flip}."
    return (f"Paired: each bound is the more cautious of {flip} and a score test stratified by class whose variance "
            f"is taken under the hypothesis tested, so a few observed disagreements cannot fake certainty.")


def describe(comparison: dict, metric: str) -> str:
    """One sentence for the model card: the rule, the difference, its bound, the verdict in words."""
    c, level = comparison, f"{comparison['confidence'] * 100:g}%"
    if c["one_sided_lower"] is None:
        return f"{metric} cannot be compared on this test split, so the champion stays."
    claim = ("superiority" if c["rule"] == "superiority"
             else f"non-inferiority within a margin of {c['margin']:.3f}")
    verdict = "shown, so the new model becomes champion" if c["verdict"] != "not_shown" else \
        "not shown, so the champion stays"
    same = " (both models predict the same class on every image)" if c["identical"] else ""
    return (f"{metric} {c['new']:.3f} vs champion {c['old']:.3f}: difference {c['difference']:+.3f} ({level} "
            f"one-sided lower bound {c['one_sided_lower']:+.3f}); {claim} at {level} confidence {verdict}{same}.")
