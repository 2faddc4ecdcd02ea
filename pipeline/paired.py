"""The paired comparison of a new model with the champion on the same test images (used by register only).

Both models are scored on the same duplicate groups, so the difference is judged paired: by
exchanging the two models' outputs within whole groups, and for metrics linear in per-image
correctness also by a score test stratified by class; the gate takes the more cautious bound.
Pure numpy/scipy: no TensorFlow, no MLflow.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

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
