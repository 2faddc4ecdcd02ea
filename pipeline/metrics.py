"""Point metrics of one model on a small test split of grouped images (used by evaluate, report, the model card).

Test splits hold 15-300 images, and the near-duplicates of one lesion (a dedup group) are one
piece of evidence, not several: so every metric here also takes sample weights, one row per
resample (images weighted by how often their group was drawn, or swapped per group), and
pipeline.intervals and pipeline.paired compute a whole resampling in one matrix product.
A metric that cannot be measured is None in reports and nan inside arrays, never 0.
Pure numpy/scipy: no TensorFlow, no MLflow.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import beta

AVERAGED = ("balanced_accuracy", "macro_f1", "roc_auc")  # class-averaged: each class weighs the same


def fmt(value, digits: int = 3) -> str:
    """A metric as people read it: None (or nan) is "not measured", never 0 or "nan"."""
    return "not measured" if value is None or value != value else f"{value:.{digits}f}"


def threshold_text(threshold) -> str:
    """The threshold as people read it: 4 decimals, more when 4 would round a threshold below 1 up to 1."""
    if threshold is None or threshold != threshold:
        return "none"
    digits = 4
    while digits < 10 and threshold < 1 and round(threshold, digits) >= 1:
        digits += 1
    return f"{threshold:.{digits}f}"


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


def metric_values(name, y, probs, weights, classes) -> np.ndarray:
    """The metric `name` for each row of `weights` (sample weights); nan where unmeasurable in a row."""
    y, probs = np.asarray(y), np.asarray(probs, dtype=float)
    weights = np.atleast_2d(weights)
    if name == "roc_auc":
        return auc_values(y, probs, weights)
    return named(name, confusion_metrics(confusions(y, probs.argmax(1), weights, len(classes)), classes))
