"""The clinical decision that ships: calibrated probabilities and a refer threshold with a guarantee.

A clinic refers a patient when the summed probability of the positive classes (`refer score`)
passes a threshold. Both steps are fitted on the calibration split, which did not shape the
weights (validation drives early stopping and chooses the architecture; test only reports):
- temperature scaling: one T > 0 dividing the logits, fitted by likelihood; folded into the last
  Dense layer (W/T, b/T), so Keras, TFLite and the served model share it with no new layer;
- the threshold, Learn-then-Test with fixed-sequence testing: thresholds are tested from the
  lowest (every calibration positive referred) upward, each against H0 "sensitivity < target" with
  an exact binomial test over positive duplicate groups (a group counts as found only if all its
  images are referred), stopping at the first that cannot be rejected. Sensitivity only falls as
  the threshold rises, so the sequence needs no multiplicity correction and the chosen threshold
  has P(true sensitivity >= target) >= confidence. With n positive groups and no miss this needs
  target^n <= 1 - confidence (59 groups for 95%/95%); with fewer, the best level that can be
  guaranteed, (1 - confidence)^(1/n), is reported instead of the target. The threshold shipped is the
  middle of the gap between that score and the next calibration score below it (`into_gap`): the same
  decisions on the calibration split, the same guarantee, and room for photos slightly below it.
Pure numpy/scipy: no TensorFlow, no MLflow.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.stats import binom

from pipeline.intervals import group_proportion

EPS = 1e-30  # a float32 softmax can round to 0: its log must stay finite


def log_probs(probs: np.ndarray) -> np.ndarray:
    """Logits up to a constant per row (softmax is blind to it)."""
    return np.log(np.clip(np.asarray(probs, dtype=float), EPS, 1.0))


def with_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    z = log_probs(probs) / temperature
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


T_RANGE = (0.5, 10.0)  # a calibration split of a few dozen images that the model separates perfectly would
# otherwise drive T toward 0 (any sharpening lowers the likelihood's loss there): that is overfitting, not calibration


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The T in T_RANGE minimising the negative log-likelihood of the labels. `probs` (images, classes), or
    for an ensemble (members, images, classes): its output is then the mean of softmax(z_i / T) over the
    members, as export folds T into each member's last layer."""
    y, probs = np.asarray(y), np.asarray(probs)

    def nll(log_t):
        t = float(np.exp(log_t))
        p = np.mean([with_temperature(m, t) for m in probs], 0) if probs.ndim == 3 else with_temperature(probs, t)
        return -float(np.mean(np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0))))

    bounds = tuple(np.log(T_RANGE))
    return float(np.exp(minimize_scalar(nll, bounds=bounds, method="bounded").x))


def refer_score(probs: np.ndarray, classes, positive) -> np.ndarray:
    """The summed probability of the positive classes."""
    return np.asarray(probs)[:, [list(classes).index(c) for c in positive]].sum(1)


def positive_group_scores(score: np.ndarray, is_positive: np.ndarray, groups) -> np.ndarray:
    """Per positive duplicate group, its lowest refer score: the group is found only when all its images are."""
    groups = np.asarray(groups)[is_positive]
    score = np.asarray(score)[is_positive]
    if not len(score):
        return np.array([])
    _, which = np.unique(groups, return_inverse=True)
    out = np.full(which.max() + 1, np.inf)
    np.minimum.at(out, which, score)
    return out


def choose_threshold(group_scores: np.ndarray, target: float, confidence: float) -> dict:
    """Learn-then-Test with fixed-sequence testing over the positive groups' scores (see the module)."""
    n, alpha = len(group_scores), 1 - confidence
    if n == 0:
        return {"threshold": None, "target_met": False, "guaranteed_sensitivity": 0.0, "positive_groups": 0,
                "misses_allowed": 0, "reason": "no positive image in the calibration split: no threshold can be "
                                               "chosen or guaranteed"}
    ordered = np.sort(group_scores)
    # with the threshold at the (k+1)-th lowest group score, k groups are missed; H0 "sensitivity < target"
    # is rejected when P(Binom(n, 1 - target) <= k) <= alpha. The p-value grows with k: the last k rejected is
    # where the fixed sequence (thresholds rising) stops.
    misses = np.arange(n)
    rejected = binom.cdf(misses, n, 1 - target) <= alpha
    if rejected[0]:
        k = int(np.flatnonzero(rejected)[-1])
        return {"threshold": float(ordered[k]), "target_met": True, "guaranteed_sensitivity": float(target),
                "positive_groups": n, "misses_allowed": k,
                "reason": f"refers all but {k} of {n} positive calibration groups; sensitivity >= {target:g} "
                          f"with {confidence:.0%} confidence"}
    level = float(np.floor(alpha ** (1 / n) * 1000) / 1000)  # the best level n groups with no miss guarantee,
    # rounded down so that no printed figure overstates it
    needed = int(np.ceil(np.log(alpha) / np.log(target)))
    return {"threshold": float(ordered[0]), "target_met": False, "guaranteed_sensitivity": level,
            "positive_groups": n, "misses_allowed": 0,
            "reason": f"the calibration split holds {n} positive duplicate groups; a sensitivity of {target:g} "
                      f"with {confidence:.0%} confidence needs at least {needed} with none missed. The threshold "
                      f"refers every calibration positive, which guarantees sensitivity >= {level:.3f} only"}


def into_gap(threshold: float | None, scores: np.ndarray) -> dict:
    """The threshold moved down to the middle of the gap below it: halfway to the highest calibration refer score
    (any image) under it. Every calibration image gets the decision it got before, and sensitivity can only
    rise as the threshold falls, so the guarantee stands; a positive photo scoring a little below the lowest
    calibration positive is still referred (a model that separates the split perfectly scores its positives
    1.0 in float32, and the threshold would otherwise be exactly 1.0)."""
    scores = np.asarray(scores, dtype=float)
    below = scores[scores < (np.inf if threshold is None else threshold)]
    if threshold is None or not len(below):
        return {"threshold": threshold, "gap": None}
    low = float(below.max())
    # a float32 value: the models' scores are float32, so the middle must be one too to fall strictly inside
    middle = float(np.float32((float(threshold) + low) / 2))
    if not low < middle <= threshold:  # adjacent float32 scores: no room in between
        return {"threshold": float(threshold), "gap": None}
    return {"threshold": middle, "gap": [low, float(threshold)]}


def at_threshold(score: np.ndarray, y: np.ndarray, groups, classes, positive, threshold, confidence: float) -> dict:
    """Sensitivity (overall and per positive class) and specificity of `refer = score >= threshold`, each with
    its exact interval counting a duplicate group once."""
    y, groups, classes = np.asarray(y), np.asarray(groups), list(classes)
    refer = np.asarray(score) >= (np.inf if threshold is None else threshold)
    pos = np.isin(y, [classes.index(c) for c in positive])

    def rate(mask, hit):
        value, ci = group_proportion(groups[mask], hit[mask], confidence)
        return {"value": value, "interval": list(ci) if ci else None, "images": int(mask.sum()),
                "groups": int(len(np.unique(groups[mask])))}

    out = {"sensitivity": rate(pos, refer), "specificity": rate(~pos, ~refer),
           "per_class": {c: rate(y == classes.index(c), refer) for c in positive}}
    out["referred_share"] = float(refer.mean()) if len(refer) else None
    return out


def calibration_curve(y: np.ndarray, probs: np.ndarray, bins: int) -> list[dict]:
    """Reliability of the top-1 confidence: per non-empty bin, mean confidence, accuracy, count."""
    confidence, correct = probs.max(1), probs.argmax(1) == np.asarray(y)
    which = np.clip(np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    return [{"confidence": float(confidence[which == b].mean()), "accuracy": float(correct[which == b].mean()),
             "count": int((which == b).sum())} for b in range(bins) if (which == b).any()]


def calibration_error_interval(y, probs, groups, bins: int, n_resamples: int, seed: int, confidence: float) -> dict:
    """Expected calibration error with a percentile interval from duplicate groups resampled within their class."""
    from pipeline.intervals import group_resample_weights
    from pipeline.metrics import calibration_error

    y, probs = np.asarray(y), np.asarray(probs)
    values = [calibration_error(y[idx], probs[idx], bins) for idx in
              (np.repeat(np.arange(len(y)), w) for w in group_resample_weights(y, groups, n_resamples, seed))
              if len(idx)]
    a = (1 - confidence) / 2
    low, high = np.quantile(values, [a, 1 - a]) if values else (None, None)
    return {"value": calibration_error(y, probs, bins), "interval": [float(low), float(high)] if values else None}


def decide(cal, cal_y, cal_groups, test_before, test, test_y, test_groups, classes, positive, temperature: float,
           target: float, confidence: float, bins: int, n_resamples: int, seed: int) -> dict:
    """The threshold from the calibration split's calibrated probabilities (`cal`, the shipped model's own outputs,
    so that the decision it makes is exactly the one chosen), checked on the test split (`test`, and `test_before`
    calibration for the reliability comparison): everything the model card and metadata.json state."""
    classes, positive = list(classes), list(positive)
    cal_pos = np.isin(cal_y, [classes.index(c) for c in positive])
    cal_score = refer_score(cal, classes, positive)
    point = choose_threshold(positive_group_scores(cal_score, cal_pos, cal_groups), target, confidence)
    point.update(into_gap(point["threshold"], cal_score))
    score = refer_score(test, classes, positive)
    argmax_refer = np.isin(test.argmax(1), [classes.index(c) for c in positive])
    return {"positive_classes": positive, "target_sensitivity": target, "confidence": confidence, **point,
            "temperature": temperature, "calibration_images": int(len(cal_y)),
            "calibration_groups": int(len(np.unique(cal_groups))),
            "test": at_threshold(score, test_y, test_groups, classes, positive, point["threshold"], confidence),
            # what argmax gave before (refer when the top class is positive), for comparison
            "test_argmax": at_threshold(argmax_refer.astype(float), test_y, test_groups, classes, positive, 0.5,
                                        confidence),
            "ece_test": {when: calibration_error_interval(test_y, p, test_groups, bins, n_resamples, seed, confidence)
                         for when, p in (("before", test_before), ("after", test))},
            "reliability_test": {"before": calibration_curve(test_y, test_before, bins),
                                 "after": calibration_curve(test_y, test, bins)}}
