"""The paired comparison of a new model with the champion on the same test images (used by register only).

Both models are scored on the same duplicate groups, so the difference is judged paired: by
exchanging the two models' outputs within whole groups, and for metrics linear in per-image
correctness also by a score test stratified by class. Superiority is decided by the exchanges alone;
non-inferiority, and every interval, by the more cautious of the two bounds.
Pure numpy/scipy: no TensorFlow, no MLflow.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm, rankdata

from pipeline.intervals import group_codes
from pipeline.metrics import auc_values, confusion_metrics, confusions, metric_values, named


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


def restricted_variance(wins, losses, n, delta, concentration=1.0, floor=0.0):
    """Per class, the variance of one group's paired outcome d under 'true difference = delta'. d averages the
    group's images' +1 (only the new model right), -1 (only the old one) and 0, so E[d^2] <= E[wins + losses].
    E[wins + losses] is taken at the maximum-likelihood disagreement rates under the hypothesis (Tango 1998): with
    no disagreement seen it is still |delta|, the hypothesis itself requires disagreements. `concentration`, the
    class's observed sum d^2 / sum (wins + losses) (1 for single images, and when no group disagrees), turns it into
    E[d^2]: treating an averaged group as one +1/0/-1 outcome overstated the variance (1.3-1.6x on groups of 1-4).
    `floor` = 1 / the largest group's size: a group of images weighing alike moves by at least that when it moves,
    so E[d^2] >= floor |delta| under any hypothesis."""
    w = wins * (1 + delta) + losses * (1 - delta) - 2 * n * delta
    old_only = (w + np.sqrt(np.maximum(w * w + 8 * n * losses * delta * (1 - delta), 0))) / (4 * n)
    disagreement = 2 * old_only + delta  # new only + old only
    return np.maximum(np.maximum(concentration * disagreement, floor * np.abs(delta)) - delta ** 2, 0)


def score_lower(weight, right_new, right_old, inverse, gclass, alpha: float) -> float:
    """One-sided lower confidence bound of weight @ (right_new - right_old) by inverting a score test stratified by
    class, each duplicate group one unit (its images' disagreements averaged). Unlike the sign-flip bound it does
    not collapse when the two models happen to disagree on few groups."""
    total = np.bincount(inverse, weight)
    used = total > 0
    share = lambda right: np.bincount(inverse, weight * right)[used] / total[used]  # noqa: E731
    wins, losses = share(right_new & ~right_old), share(right_old & ~right_new)
    t2, cls, k = total[used] ** 2, gclass[used], gclass.max() + 1
    per_class = lambda v=None: np.bincount(cls, v, minlength=k)  # noqa: E731
    seen, moved = per_class(t2 * (wins + losses)), per_class(t2 * (wins - losses) ** 2)
    largest = np.zeros(k)
    np.maximum.at(largest, cls, np.bincount(inverse)[used])
    keep = per_class() > 0
    q, w, lose, n = (v[keep] for v in (per_class(t2), per_class(wins), per_class(losses), per_class()))
    concentration = np.divide(moved, seen, out=np.ones(k), where=seen > 0)[keep]
    floor = 1 / largest[keep]
    estimate, z = total[used] @ (wins - losses), norm.ppf(1 - alpha)

    def excess(delta):  # > 0 where 'true difference = delta' is rejected
        delta = np.asarray(delta, dtype=float)
        variance = restricted_variance(w, lose, n, delta[..., None], concentration, floor) @ q
        return estimate - delta - z * np.sqrt(variance)

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
    `one_sided_lower`: the one-sided bound at `confidence` that decides the rule; `verdict`: better (also under
    non-inferiority), not_worse or not_shown; `identical`: the metric cannot tell the two models apart.

    Why two bounds: exchanging the two models' outputs within random groups (a sign-flip test) is exact for
    "equally good", but it conditions on the disagreements seen, and when a worse model happens to disagree
    rarely (often, at 15-45 images) it looks certain: alone it passed ~20% of models worse by the margin. The
    score test takes its variance under the hypothesis itself, which forces disagreements. Under non-inferiority
    the lower of the two decides; under superiority the sign-flip bound alone does (a difference of 0 is what it
    tests exactly; the lower of the two cost power there). The interval is always the more cautious one, so it
    never collapses to zero width. Both error rates stay at most 1 - confidence (bench/gate_simulation.py and, on
    a generator of its own, bench/gate_power.py measure them)."""
    y, new, old = np.asarray(y), np.asarray(probs_new, dtype=float), np.asarray(probs_old, dtype=float)
    linear = linear_terms(name, y, classes)
    if rule not in ("superiority", "non_inferiority") or (rule == "non_inferiority" and linear is None):
        raise ValueError(f"rule {rule!r} on {name!r}: superiority works on every metric, non_inferiority only on "
                         f"accuracy, balanced_accuracy, recall_, sensitivity_ and specificity_<class>")
    inverse, gclass = group_codes(y, groups)
    diffs = flip_differences(name, y, new, old, inverse, classes, n_resamples, seed)
    alpha, identical = 1 - confidence, same_scores(name, new, old)
    out = {"new": metric_values(name, y, new, np.ones(len(y)), classes)[0],
           "old": metric_values(name, y, old, np.ones(len(y)), classes)[0], "difference": diffs[0],
           "lower": np.nan, "upper": np.nan, "one_sided_lower": np.nan, "rule": rule, "margin": float(margin),
           "confidence": confidence, "verdict": "not_shown", "identical": identical,
           "method": comparison_method(linear is not None, rule, len(gclass), n_resamples)}
    if np.all(np.isfinite(diffs)):
        ahead = behind = None  # the score test's terms, for new - old and for old - new
        if linear:
            weight, right = linear[0], (linear[1](new.argmax(1)), linear[1](old.argmax(1)))
            ahead, behind = (weight, *right), (weight, *right[::-1])
        deciding = ahead if rule == "non_inferiority" else None
        out.update(one_sided_lower=lower_bound(diffs, deciding, inverse, gclass, alpha),
                   lower=lower_bound(diffs, ahead, inverse, gclass, alpha / 2),
                   upper=-lower_bound(-diffs, behind, inverse, gclass, alpha / 2))
        out["verdict"] = verdict(out["one_sided_lower"], rule, margin, identical)
    return {k: (v if not isinstance(v, float) else float(v) if np.isfinite(v) else None) for k, v in out.items()}


def same_scores(name: str, new: np.ndarray, old: np.ndarray) -> bool:
    """Whether the metric cannot tell the two models apart on any resample: for roc_auc the same order of the
    images (ties included) in every class's probability, as AUC reads only that; else the same predicted class."""
    if name == "roc_auc":
        return all(np.array_equal(rankdata(new[:, c]), rankdata(old[:, c])) for c in range(new.shape[1]))
    return bool(np.array_equal(new.argmax(1), old.argmax(1)))


def verdict(one_sided_lower: float, rule: str, margin: float, identical: bool) -> str:
    """better: superiority shown, under either rule (a closed test: a bound above 0 is also above -margin, so
    non-inferiority may switch to superiority at no cost in error rate); not_worse: only non-inferiority shown."""
    if one_sided_lower > 0 and not identical:
        return "better"
    return "not_worse" if rule == "non_inferiority" and one_sided_lower > -margin else "not_shown"


def comparison_method(linear: bool, rule: str, groups: int, n_resamples: int) -> str:
    flip = (f"a sign-flip randomization test over {groups} duplicate groups ({n_resamples} random exchanges of the "
            f"two models' outputs within a group, exact when the two models are interchangeable)")
    if not linear:
        return f"Paired: the bounds come from {flip}."
    score = ("a score test stratified by class whose variance is taken under the hypothesis tested, so a few "
             "observed disagreements cannot fake certainty, and counts each duplicate group's averaged outcome")
    decides = ("the sign-flip bound alone decides superiority (a difference of 0 is what it tests exactly)"
               if rule == "superiority" else "the more cautious of the two decides non-inferiority and superiority")
    return f"Paired: {flip}, and {score}; {decides}; the interval is the more cautious of the two."


def describe(comparison: dict, metric: str) -> str:
    """One sentence for the model card: the difference, its bound and what it shows. The evidence only: what
    follows from it (who is champion) is `register.promotion_decision`'s to say, so the two never disagree."""
    c, level = comparison, f"{comparison['confidence'] * 100:g}%"
    if c["one_sided_lower"] is None:
        return f"{metric} cannot be compared on this test split."
    margin = f"non-inferiority within a margin of {c['margin']:.3f}"
    shown = {("superiority", "better"): f"superiority at {level} confidence shown",
             ("superiority", "not_shown"): f"superiority at {level} confidence not shown",
             ("non_inferiority", "better"): f"superiority at {level} confidence shown (so {margin} too)",
             ("non_inferiority", "not_worse"): f"{margin} at {level} confidence shown; superiority not shown",
             ("non_inferiority", "not_shown"): f"{margin} at {level} confidence not shown"}[c["rule"], c["verdict"]]
    same = ""
    if c["identical"]:
        same = (" (both models rank the images alike for every class)" if metric == "roc_auc"
                else " (both models predict the same class on every image)")
    return (f"{metric} {c['new']:.3f} vs champion {c['old']:.3f}: difference {c['difference']:+.3f} ({level} "
            f"one-sided lower bound {c['one_sided_lower']:+.3f}); {shown}{same}.")
