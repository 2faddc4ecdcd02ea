import pandas as pd
import pytest

from pipeline.evaluate import leaderboard, read_sets
from pipeline.stage import StageError


def result(val: float, test: float, low=0.5, high=0.9) -> dict:
    interval = {"estimate": test, "low": low, "high": high, "method": "m", "groups": 10}
    return {"val": {"balanced_accuracy": val, "roc_auc": 0.9},
            "test": {"balanced_accuracy": test, "roc_auc": 0.9, "sensitivity_cancer": 1.0},
            "test_report": {"intervals": {"balanced_accuracy": interval}}}


def test_the_validation_split_chooses_not_the_test_split():
    # B is luckier on test, A is better on validation: A is chosen, and both test scores are shown
    board = leaderboard({"A": result(0.9, 0.70), "B": result(0.8, 0.95)}, "balanced_accuracy", ["cancer"])
    assert list(board.architecture) == ["A", "B"] and list(board.chosen) == [True, False]
    assert list(board.test_balanced_accuracy) == [0.70, 0.95]
    assert {"val_balanced_accuracy", "test_balanced_accuracy_low", "test_balanced_accuracy_high"} <= set(board)


def test_unmeasured_validation_score_ranks_last():
    board = leaderboard({"A": result(None, 0.7), "B": result(0.6, 0.6)}, "balanced_accuracy", ["cancer"])
    assert list(board.architecture) == ["B", "A"]


def test_an_empty_validation_split_is_a_clear_error(tmp_path):
    pd.DataFrame({"path": ["a.png"], "label": ["x"], "group_id": ["g"], "split": ["test"]}).to_csv(
        tmp_path / "split.csv", index=False)
    with pytest.raises(StageError, match="the val split is empty"):
        read_sets(tmp_path / "split.csv", ["x"])
