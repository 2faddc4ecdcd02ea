"""Honest intervals by duplicate group for small test splits (used by evaluate).

Test splits hold 15-300 images, and the near-duplicates of one lesion (a dedup group) are one
piece of evidence, not several: every resampling here moves whole groups, stratified by class,
and every exact interval counts a group once. An interval that cannot be measured is None.
Pure numpy/scipy: no TensorFlow, no MLflow.
"""
from __future__ import annotations

import numpy as np

from pipeline.metrics import AVERAGED, clopper_pearson, metric_values


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
