"""pipeline.metrics: metrics against sklearn (also with sample weights), and None where a metric cannot be measured."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, recall_score, roc_auc_score

from pipeline.metrics import clopper_pearson, metric_values, scores

CLASSES, POSITIVE = ["normal", "precancer", "cancer"], ["cancer", "precancer"]


def noisy_probs(rng, y, k, accuracy=0.7):
    pred = np.where(rng.random(len(y)) < accuracy, y, rng.integers(0, k, len(y)))
    logits = rng.normal(0, 1, (len(y), k))
    logits[np.arange(len(y)), pred] += 2
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (5, 10), (3, 17), (1, 1)])
def test_clopper_pearson_matches_scipy_exact_interval(k, n):
    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    assert clopper_pearson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_clopper_pearson_fractional_and_empty():
    assert clopper_pearson(1, 0) is None
    low, high = clopper_pearson(2.5, 10)
    assert clopper_pearson(2, 10)[0] < low < clopper_pearson(3, 10)[0]
    assert clopper_pearson(2, 10)[1] < high < clopper_pearson(3, 10)[1]


@pytest.mark.parametrize("k", [2, 3, 4])
def test_scores_match_sklearn(k):
    rng = np.random.default_rng(k)
    y = rng.integers(0, k, 120)
    probs = noisy_probs(rng, y, k)
    pred = probs.argmax(1)
    classes = [f"c{i}" for i in range(k)]
    s = scores(y, probs, classes, ["c1"], 10)
    assert s["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert s["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert s["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", labels=range(k), zero_division=0))
    expected_auc = roc_auc_score(y, probs[:, 1]) if k == 2 else roc_auc_score(y, probs, multi_class="ovr")
    assert s["roc_auc"] == pytest.approx(expected_auc)
    assert s["recall_c1"] == s["sensitivity_c1"] == pytest.approx(recall_score(y, pred, labels=[1], average=None)[0])
    negatives = y != 0
    assert s["specificity_c0"] == pytest.approx(np.mean(pred[negatives] != 0))
    assert s["test_images"] == 120 and 0 <= s["ece"] <= 1


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_absent_class_is_none_and_auc_uses_the_present_classes():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40)  # no cancer (class 2) in this split
    probs = noisy_probs(rng, y, 3)
    s = scores(y, probs, CLASSES, POSITIVE, 10)
    assert s["recall_cancer"] is None and s["sensitivity_cancer"] is None
    assert s["specificity_cancer"] is not None and s["sensitivity_precancer"] is not None
    per_class = [roc_auc_score(y == c, probs[:, c]) for c in (0, 1)]
    assert s["roc_auc"] == pytest.approx(np.mean(per_class))
    assert s["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))


def test_one_class_present_leaves_auc_and_specificity_unmeasured():
    y = np.zeros(6, dtype=int)
    s = scores(y, np.eye(3)[[0, 0, 0, 1, 0, 2]], CLASSES, POSITIVE, 10)
    assert s["roc_auc"] is None and s["specificity_normal"] is None and s["recall_cancer"] is None
    assert s["recall_normal"] == pytest.approx(4 / 6) and s["specificity_cancer"] == pytest.approx(5 / 6)


def test_metric_values_equal_sklearn_with_sample_weights():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 60)
    probs = noisy_probs(rng, y, 3)
    weights = rng.integers(0, 3, (5, 60))
    pred = probs.argmax(1)
    for w, ba, f1, auc, acc in zip(weights, *(metric_values(m, y, probs, weights, CLASSES)
                                             for m in ("balanced_accuracy", "macro_f1", "roc_auc", "accuracy"))):
        assert ba == pytest.approx(balanced_accuracy_score(y, pred, sample_weight=w))
        assert f1 == pytest.approx(f1_score(y, pred, average="macro", sample_weight=w, zero_division=0))
        assert auc == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", sample_weight=w))
        assert acc == pytest.approx(accuracy_score(y, pred, sample_weight=w))
