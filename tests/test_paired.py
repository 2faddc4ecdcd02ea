"""pipeline.paired: the promotion gate's error rates by simulation, its verdicts and its sentence."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from pipeline.paired import describe, paired_comparison
from tests.conftest import bench_module

# the simulated paired test splits are the benchmark's, so the test and bench/gate_simulation.py measure one thing
sim = bench_module("gate_simulation")

CLASSES = ["normal", "precancer", "cancer"]
OLD = sim.OLD  # champion's per-class recall, balanced accuracy 0.75


def promotions(settings, rule, decisions, seed, margin=0.05):
    """How many of `decisions` simulated splits per setting the gate promotes (balanced accuracy, 500 flips)."""
    rng, counts = np.random.default_rng(seed), []
    for per_class, sizes, new_recall in settings:
        promoted = 0
        for d in range(decisions):
            y, new, old, groups = sim.simulate_pair(rng, per_class, OLD, new_recall, sizes)
            c = paired_comparison("balanced_accuracy", y, new, old, groups, CLASSES, 500, d, 0.95, rule, margin)
            promoted += c["verdict"] != "not_shown"
        counts.append(promoted)
    return np.array(counts)


TINY, DEMO, MID = (5, (1.0, 0, 0)), (11, (0.7, 0.2, 0.1)), (35, (0.7, 0.2, 0.1))  # ~15, ~46, ~147 images
TRADED = np.array([0.70, 0.75, 0.80])  # equal balanced accuracy, better on cancer, worse on normal


def test_gate_false_promotion_at_equal_skill_is_at_most_five_percent():
    decisions = 600
    counts = promotions([(*TINY, OLD), (*DEMO, OLD), (*DEMO, TRADED), (*MID, OLD), (*MID, TRADED)],
                        "superiority", decisions, seed=10)
    # measured (of 600): 0, 5, 13, 20, 14; the limit is 43. A plain percentile group bootstrap promotes
    # 6-7% on ~46-image splits (bench/gate_simulation.py)
    assert (counts <= binom.ppf(0.99, decisions, 0.05)).all(), counts


def test_gate_false_promotion_when_worse_by_the_margin_is_at_most_five_percent():
    decisions = 600
    counts = promotions([(*TINY, OLD - 0.05), (*DEMO, OLD - 0.05), (*DEMO, TRADED - 0.05), (*MID, OLD - 0.05)],
                        "non_inferiority", decisions, seed=20)
    # measured (of 600): 20, 13, 20, 17; the limit is 43. The sign-flip or the percentile bootstrap bound alone
    # promotes ~20% at 15 images and ~10% at ~46: when the models happen to disagree rarely they look certain
    assert (counts <= binom.ppf(0.99, decisions, 0.05)).all(), counts


def test_gate_promotes_a_clearly_better_model():
    counts = promotions([(*MID, OLD + 0.15)], "superiority", 200, seed=30)
    assert counts[0] / 200 >= 0.8  # measured 0.955 at +0.15 balanced accuracy on ~147 images


def test_identical_predictions_are_never_better():
    rng = np.random.default_rng(6)
    for seed in range(20):
        y, new, old, groups = sim.simulate_pair(rng, 5, OLD, OLD)
        same_class = np.eye(3)[new.argmax(1)] * 0.5 + new * 0.5  # other probabilities, same predicted classes
        for name in ("balanced_accuracy", "roc_auc", "macro_f1"):
            c = paired_comparison(name, y, same_class, new, groups, CLASSES, 200, seed)
            assert c["identical"] and c["verdict"] == "not_shown"
    c = paired_comparison("accuracy", y, new, new, groups, CLASSES, 200, 0, rule="non_inferiority", margin=0.05)
    assert c["difference"] == 0 and c["verdict"] == "not_shown"  # 15 images cannot rule out worse by 0.05


def test_comparison_fields_and_sentence():
    rng = np.random.default_rng(7)
    y, new, old, groups = sim.simulate_pair(rng, 35, OLD, OLD + 0.15)
    c = paired_comparison("balanced_accuracy", y, new, old, groups, CLASSES, 1000, 0)
    assert c["verdict"] == "better" and c["lower"] <= c["one_sided_lower"] < c["difference"] < c["upper"]
    assert c["difference"] == pytest.approx(c["new"] - c["old"])
    text = describe(c, "balanced_accuracy")
    assert text.startswith(f"balanced_accuracy {c['new']:.3f} vs champion {c['old']:.3f}: difference +")
    assert "95% one-sided lower bound" in text and "superiority at 95% confidence shown" in text
    with pytest.raises(ValueError, match="non_inferiority"):
        paired_comparison("roc_auc", y, new, old, groups, CLASSES, 100, 0, rule="non_inferiority", margin=0.05)
