"""pipeline.intervals: groups resampled whole within their class, intervals never degenerate, coverage by simulation."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.intervals import class_intervals, group_codes, group_resample_weights, interval
from pipeline.metrics import clopper_pearson
from tests.conftest import bench_module

# the simulated paired test splits are the benchmark's, so the test and bench/gate_simulation.py measure one thing
sim = bench_module("gate_simulation")

CLASSES = ["normal", "precancer", "cancer"]
OLD = sim.OLD  # champion's per-class recall, balanced accuracy 0.75


def test_group_class_is_the_most_common_label_ties_to_the_smallest():
    _, gclass = group_codes(np.array([2, 1, 2, 2, 1, 0]), np.array(["a", "a", "b", "b", "b", "c"]))
    assert gclass.tolist() == [1, 2, 0]


def test_group_resample_weights_are_stratified_and_keep_groups_whole():
    rng = np.random.default_rng(3)
    y, _, _, groups = sim.simulate_pair(rng, np.array([6, 4, 2]), OLD, OLD)
    weights = group_resample_weights(y, groups, 200, seed=0)
    assert weights.shape == (200, len(y)) and weights.dtype.kind == "i"
    first = np.unique(groups, return_index=True)[1]  # one image per group
    for g in np.unique(groups):
        members = groups == g
        assert (weights[:, members] == weights[:, members][:, :1]).all()  # a group is drawn whole
    per_class = np.stack([weights[:, first][:, y[first] == c].sum(1) for c in range(3)], 1)
    assert (per_class == [6, 4, 2]).all()  # as many groups of each class as the split has
    assert weights.std() > 0


def test_perfect_score_on_a_tiny_split_still_gets_an_interval():
    y = np.repeat(np.arange(3), 5)  # 15 images, 5 single-image groups per class
    perfect = interval("balanced_accuracy", y, np.eye(3)[y], np.arange(15), CLASSES, 500, seed=0)
    assert perfect["estimate"] == 1.0 and perfect["high"] == 1.0 and perfect["low"] < 0.85
    assert "Clopper-Pearson" in perfect["method"] and perfect["groups"] == 15
    wrong = interval("recall_cancer", y, np.eye(3)[(y + 1) % 3], np.arange(15), CLASSES, 500, seed=0)
    assert wrong["estimate"] == 0.0 and wrong["low"] == 0.0 and wrong["high"] > 0.3
    assert interval("recall_cancer", y[:10], np.eye(3)[y[:10]], np.arange(10), CLASSES, 100, 0)["low"] is None


def test_duplicates_widen_the_interval():
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(3), 15)  # 15 groups x 3 near-identical images
    right = np.repeat(rng.random(15) < 0.8, 3)
    probs = np.eye(3)[np.where(right, y, (y + 1) % 3)] * 0.9 + 0.1 / 3
    grouped = interval("balanced_accuracy", y, probs, np.repeat(np.arange(15), 3), CLASSES, 2000, seed=0)
    single = interval("balanced_accuracy", y, probs, np.arange(45), CLASSES, 2000, seed=0)
    width = lambda r: r["high"] - r["low"]  # noqa: E731
    # measured: 0.544 wide with the 15 groups, 0.300 if each of the 45 images were independent
    assert width(grouped) > width(single) * 1.5


def test_interval_covers_the_true_balanced_accuracy():
    rng, recall, hits = np.random.default_rng(5), np.array([0.9, 0.7, 0.8]), 0  # true balanced accuracy 0.8
    for seed in range(300):
        y, probs, _, groups = sim.simulate_pair(rng, 11, recall, recall)  # ~46 images in ~33 groups
        r = interval("balanced_accuracy", y, probs, groups, CLASSES, 300, seed)
        hits += r["low"] <= 0.8 <= r["high"]
    assert hits / 300 >= 0.93  # measured 0.977 (nominal 0.95; the exact floor makes it conservative)


def test_class_intervals_count_each_group_once():
    y, pred = np.array([0, 0, 0, 1, 1, 2]), np.array([0, 1, 0, 1, 0, 2])
    out = class_intervals(y, pred, ["a", "a", "b", "c", "d", "e"], ["x", "y", "z", "absent"])
    assert out["x"]["sensitivity"] == pytest.approx(0.75)  # group a half right, group b right: 1.5 of 2
    assert out["x"]["sensitivity_ci"] == pytest.approx(clopper_pearson(1.5, 2))
    assert out["x"]["specificity"] == pytest.approx(2 / 3) and out["x"]["images"] == 3 and out["x"]["groups"] == 2
    assert out["absent"]["sensitivity"] is None and out["absent"]["sensitivity_ci"] is None
    assert out["absent"]["specificity"] == 1.0 and out["absent"]["groups"] == 0
