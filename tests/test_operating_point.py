"""pipeline.operating_point: the threshold's guarantee (exact, by duplicate group, checked by simulation),
temperature scaling, and the decision checked on test."""
import numpy as np
import pytest
from scipy.stats import binom

from pipeline.metrics import threshold_text
from pipeline.operating_point import (at_threshold, choose_threshold, decide, fit_temperature, positive_group_scores,
                                      refer_score, with_temperature)

CLASSES = ["normal", "precancer", "cancer"]


def test_zero_misses_at_95_95_needs_59_positive_groups():
    scores = np.linspace(0.2, 0.9, 59)
    met = choose_threshold(scores, 0.95, 0.95)
    assert met["target_met"] and met["misses_allowed"] == 0 and met["threshold"] == pytest.approx(0.2)
    short = choose_threshold(scores[:58], 0.95, 0.95)
    assert not short["target_met"] and short["threshold"] == pytest.approx(0.2)
    assert short["guaranteed_sensitivity"] == 0.949  # 0.05 ** (1 / 58) = 0.94968, rounded down, never up
    assert "needs at least 59" in short["reason"] and "guarantees sensitivity >= 0.950" not in short["reason"]
    assert choose_threshold(np.array([]), 0.95, 0.95)["threshold"] is None


def test_more_groups_allow_misses_and_a_higher_threshold():
    scores = np.random.default_rng(0).uniform(0, 1, 300)
    point = choose_threshold(scores, 0.95, 0.95)
    k = point["misses_allowed"]
    assert binom.cdf(k, 300, 0.05) <= 0.05 < binom.cdf(k + 1, 300, 0.05)  # the last rejection of the sequence
    assert point["threshold"] == np.sort(scores)[k] and (scores < point["threshold"]).sum() == k


def test_a_group_is_found_only_when_all_its_images_are():
    score = np.array([0.9, 0.2, 0.8, 0.7, 0.1])
    positive = np.array([True, True, True, False, True])
    groups = np.array(["a", "a", "b", "c", "d"])
    assert sorted(positive_group_scores(score, positive, groups)) == [0.1, 0.2, 0.8]


def simulate_guarantee(n_groups: int, target: float, confidence: float, runs: int, seed: int) -> tuple[float, float]:
    """Share of calibration sets whose chosen threshold truly reaches the level it states; mean true sensitivity.
    Positive groups of 1-3 images with correlated scores (a shared lesion effect), the truth known exactly
    from a large sample of the same distribution."""
    rng = np.random.default_rng(seed)

    def groups(n):
        effect = rng.normal(0, 1, n)
        sizes = rng.integers(1, 4, n)
        scores = [1 / (1 + np.exp(-(1.2 + e + rng.normal(0, 0.5, s)))) for e, s in zip(effect, sizes)]
        return np.array([s.min() for s in scores]), np.concatenate(scores), np.repeat(np.arange(n), sizes)

    truth_groups, truth_images, truth_ids = groups(100_000)
    held = 0
    for _ in range(runs):
        point = choose_threshold(groups(n_groups)[0], target, confidence)
        true_sensitivity = (truth_groups >= point["threshold"]).mean()  # a group found when all its images are
        held += true_sensitivity >= point["guaranteed_sensitivity"]
    return held / runs, float((truth_images >= point["threshold"]).mean())


@pytest.mark.parametrize("n_groups", [20, 80, 200])
def test_the_stated_level_holds_with_the_stated_confidence(n_groups):
    held, _ = simulate_guarantee(n_groups, 0.9, 0.9, runs=400, seed=n_groups)
    # at least 90% of runs must reach their stated level; 400 runs: allow binomial noise at the 1% level
    assert held >= binom.ppf(0.01, 400, 0.9) / 400, held


def test_temperature_recovers_an_overconfident_model():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 4000)
    logits = rng.normal(0, 1, (4000, 3)) + 1.5 * np.eye(3)[y]
    honest = np.exp(1.5 * logits) / np.exp(1.5 * logits).sum(1, keepdims=True)  # the true posterior here
    overconfident = with_temperature(honest, 1 / 2.5)  # logits x 2.5
    assert fit_temperature(overconfident, y) == pytest.approx(2.5, rel=0.1)
    np.testing.assert_allclose(with_temperature(overconfident, 2.5), honest, atol=1e-6)
    assert (with_temperature(overconfident, 2.5).argmax(1) == overconfident.argmax(1)).all()
    # a split the model gets all right cannot ask for endless sharpening
    assert fit_temperature(honest[y == honest.argmax(1)], y[y == honest.argmax(1)]) == pytest.approx(0.5, rel=1e-3)


def test_at_threshold_counts_groups_once_with_exact_intervals():
    y = np.array([2, 2, 2, 1, 0, 0])
    score = np.array([0.9, 0.9, 0.3, 0.8, 0.1, 0.6])
    groups = np.array(["a", "a", "b", "c", "d", "e"])
    r = at_threshold(score, y, groups, CLASSES, ["cancer", "precancer"], 0.5, 0.95)
    assert r["sensitivity"]["value"] == pytest.approx(2 / 3) and r["sensitivity"]["groups"] == 3
    assert r["per_class"]["cancer"]["value"] == 0.5 and r["per_class"]["precancer"]["value"] == 1.0
    assert r["specificity"]["value"] == 0.5 and 0 < r["specificity"]["interval"][0] < 0.5 < r["specificity"]["interval"][1]
    none = at_threshold(score, y, groups, CLASSES, ["cancer"], None, 0.95)
    assert none["sensitivity"]["value"] == 0.0  # no threshold: nobody is referred


def test_decide_states_everything_the_model_ships_with():
    rng = np.random.default_rng(2)

    def split(n):
        y = rng.integers(0, 3, n)
        logits = rng.normal(0, 1, (n, 3)) + 2.0 * np.eye(3)[y]
        p = np.exp(3 * logits)
        return p / p.sum(1, keepdims=True), y, np.arange(n).astype(str)

    (cal, cal_y, cal_groups), (test, test_y, test_groups) = split(400), split(200)
    temperature = fit_temperature(cal, cal_y)
    assert temperature == pytest.approx(1.5, rel=0.2)  # 3x logits where 2x is honest
    calibrated = with_temperature(test, temperature)
    d = decide(with_temperature(cal, temperature), cal_y, cal_groups, test, calibrated, test_y, test_groups, CLASSES,
               ["cancer", "precancer"], temperature, 0.9, 0.9, 10, 50, 0)
    assert d["target_met"] and d["temperature"] == temperature
    assert d["ece_test"]["after"]["value"] < d["ece_test"]["before"]["value"]
    refer = refer_score(calibrated, CLASSES, ["cancer", "precancer"]) >= d["threshold"]
    assert d["test"]["referred_share"] == pytest.approx(refer.mean())
    assert d["test"]["sensitivity"]["value"] >= 0.85  # the guarantee at work on fresh data of the same kind


def test_the_shipped_threshold_sits_in_the_gap_and_decides_the_calibration_split_alike():
    """Saturated positives (1.0 in float32) and well separated negatives: not a threshold of exactly 1.0 but the
    middle of the gap; on overlapping scores every calibration image keeps its decision."""
    from pipeline.operating_point import into_gap

    rng = np.random.default_rng(3)
    negatives, positives = rng.uniform(0, 0.02, 40), np.ones(70, "float32")
    cal = np.concatenate([negatives, positives])
    chosen = choose_threshold(positives, 0.95, 0.95)["threshold"]
    assert chosen == 1.0
    placed = into_gap(chosen, cal)
    assert placed["threshold"] == pytest.approx((1.0 + negatives.max()) / 2) and placed["gap"][1] == 1.0
    overlapping = rng.uniform(0, 1, 300)
    for t in np.sort(overlapping)[::37]:
        moved = into_gap(float(t), overlapping)["threshold"]
        assert moved <= t and ((overlapping >= moved) == (overlapping >= t)).all()
    assert into_gap(None, cal)["threshold"] is None and into_gap(0.0, np.array([0.0, 0.5]))["gap"] is None
    # float32 scores, as models give them: the middle is a float32 strictly inside, or the threshold stays
    near = np.array([0.99999994, 1.0], "float32")
    moved = into_gap(1.0, near)["threshold"]
    assert moved == 1.0 and ((near >= np.float32(moved)) == (near >= 1.0)).all()  # adjacent: no room
    wide = np.array([0.2, 0.6], "float32")
    moved = into_gap(float(wide[1]), wide)["threshold"]
    assert 0.2 < moved < 0.6 and np.float32(moved) == moved and ((wide >= moved) == (wide >= wide[1])).all()


def test_a_threshold_below_one_is_never_printed_as_one():
    assert threshold_text(0.0491) == "0.0491" and threshold_text(0.99998) == "0.99998"
    assert threshold_text(1.0) == "1.0000" and threshold_text(None) == "none"
