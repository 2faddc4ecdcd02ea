import numpy as np
import pytest

from pipeline.evaluate import bootstrap_interval, calibration_error, leaderboard, scores

CLASSES, POSITIVE = ["normal", "precancer", "cancer"], ["cancer", "precancer"]


def test_calibration_error_of_known_cases():
    y = np.array([0, 1, 2, 0])
    assert calibration_error(y, np.eye(3)[y], 10) == pytest.approx(0.0)
    half = np.full((4, 3), [0.6, 0.2, 0.2])  # always says class 0 with 60%, right half the time
    assert calibration_error(y, half, 10) == pytest.approx(0.1)


def test_scores_per_class_and_sensitivity():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 0, 1, 0, 2, 2]] * 0.8 + 0.2 / 3
    s = scores(y, probs, CLASSES, POSITIVE, 10)
    assert s["accuracy"] == pytest.approx(5 / 6)
    assert s["recall_precancer"] == s["sensitivity_precancer"] == pytest.approx(0.5)
    assert s["sensitivity_cancer"] == 1.0 and s["precision_normal"] == pytest.approx(2 / 3)
    assert 0 < s["roc_auc"] <= 1


def test_auc_is_nan_when_a_class_is_missing():
    y = np.array([0, 0, 1])
    assert np.isnan(scores(y, np.eye(3)[y], CLASSES, POSITIVE, 10)["roc_auc"])


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    pred = np.where(rng.random(200) < 0.8, y, (y + 1) % 3)
    probs = np.eye(3)[pred] * 0.9 + 0.1 / 3
    low, high = bootstrap_interval(y, probs, "accuracy", CLASSES, POSITIVE, 300, seed=0)
    point = scores(y, probs, CLASSES, POSITIVE, 10)["accuracy"]
    assert low < point < high and high - low < 0.2


def test_leaderboard_ranks_by_select_by():
    board = leaderboard({"A": {"balanced_accuracy": 0.7, "roc_auc": 0.9}, "B": {"balanced_accuracy": 0.8, "roc_auc": 0.5}},
                        "balanced_accuracy")
    assert list(board.architecture) == ["B", "A"]
