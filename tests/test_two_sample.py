"""The two-sample tests of the shift check: valid permutation p-values (also with duplicate groups),
power against a real shift, and the vectorized pieces equal to the library versions they replace."""
import numpy as np
import pytest

from pipeline import two_sample as ts


def gaussian(rng, n, dims=16, shift=0.0):
    x = rng.normal(size=(n, dims))
    x[:, :3] += shift
    return x


def near_copies(rng, groups, dims=16, shift=0.0):
    """Groups of 1-3 near-identical rows (duplicate groups): what dedup joins."""
    sizes = rng.integers(1, 4, groups)
    base = gaussian(rng, groups, dims, shift)
    rows = np.repeat(base, sizes, 0) + rng.normal(scale=0.05, size=(sizes.sum(), dims))
    return rows, np.repeat(np.arange(groups), sizes)


def test_group_permutations_move_whole_groups_and_keep_the_count():
    rng = np.random.default_rng(0)
    groups = np.array([0, 0, 1, 2, 2, 3, 4, 5, 5, 5, 6, 6])
    is_new = np.array([1, 1, 0, 0, 0, 1, 0, 1, 0, 1, 0, 1], bool)
    dealt = ts.group_permutations(is_new, groups, 500, rng)
    assert dealt.shape == (12, 500) and (dealt.sum(0) == is_new.sum()).all()
    patterns = {tuple(is_new[groups == g]) for g in (0, 2, 6)}  # the size-2 groups' patterns, dealt among them
    for column in dealt.T:
        assert {tuple(column[groups == g]) for g in (0, 2, 6)} <= patterns
    assert dealt[1].mean() == pytest.approx(2 / 3, abs=0.08)  # [1, 1] or [0, 1]: 2 of the 3 patterns


@pytest.mark.parametrize("test", [ts.mmd_test, ts.classifier_test])
def test_same_distribution_gives_valid_p_values_that_are_not_small(test):
    rng, p = np.random.default_rng(1), []
    for _ in range(20):
        ref, new = gaussian(rng, 80), gaussian(rng, 30)
        p.append(test(ref, new, np.arange(110), 99, rng)["p_value"])
    p = np.array(p)
    assert np.isfinite(p).all() and (p >= 1 / 100).all() and (p <= 1).all()
    assert (p < 0.05).mean() <= 0.2 and np.median(p) > 0.2  # uniform under the null: about 1 in 20 below 0.05


@pytest.mark.parametrize("test", [ts.mmd_test, ts.classifier_test])
def test_a_shift_gives_the_smallest_p_value(test):
    rng = np.random.default_rng(2)
    result = test(gaussian(rng, 150), gaussian(rng, 40, shift=1.0), np.arange(190), 199, rng)
    assert result["p_value"] == pytest.approx(1 / 200)


def test_duplicate_groups_do_not_fake_a_shift():
    """Near copies inside the new batch make it look tighter than the reference; dealing labels image by image
    would call that a shift, dealing whole groups does not."""
    rng = np.random.default_rng(3)
    ref, ref_groups = near_copies(rng, 120)
    new, new_groups = near_copies(rng, 40)
    groups = np.concatenate([ref_groups, new_groups + 1000])
    by_group = ts.compare(ref, new, groups, 199, rng)[0]["p_value"]
    by_image = ts.mmd_test(ref, new, np.arange(len(groups)), 199, rng)["p_value"]
    assert by_group > 0.05 and by_image < 0.01


def test_identical_points_give_p_one_and_no_nan():
    rng = np.random.default_rng(4)
    ref, new = np.ones((30, 8)), np.ones((10, 8))
    result, witness = ts.compare(ref, new, np.arange(40), 199, rng)
    assert result["p_value"] == 1.0 and result["classifier"]["auc"] == 0.5
    assert np.isfinite(witness).all() and np.isfinite(result["mmd"]["statistic"])


def test_too_few_groups_to_cross_validate_give_p_one():
    rng = np.random.default_rng(7)
    for groups in (np.zeros(12), np.r_[np.zeros(8), np.ones(4)]):  # one group; one group a side
        result = ts.classifier_test(gaussian(rng, 8), gaussian(rng, 4, shift=3.0), groups, 99, rng)
        assert result["p_value"] == 1.0 and result["auc"] == 0.5


def test_witness_ranks_the_odd_new_images_first():
    rng = np.random.default_rng(5)
    new = gaussian(rng, 30)
    new[:5] += 4.0  # five images from somewhere the reference never was
    witness = ts.mmd_test(gaussian(rng, 100), new, np.arange(130), 99, rng)["witness"]
    assert set(np.argsort(-witness)[:5]) == set(range(5))


def test_logistic_fit_and_auc_match_scikit_learn():
    from scipy.stats import rankdata
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(6)
    x, y = gaussian(rng, 400, 6), (rng.random(400) < 0.25).astype(float)
    x[y == 1, 0] += 0.5
    beta = ts.fit_logistic(np.column_stack([np.ones(400), x]), y[:, None])[:, 0]
    reference = LogisticRegression(class_weight="balanced", C=1 / ts.L2, max_iter=1000).fit(x, y)
    assert beta[1:] == pytest.approx(reference.coef_[0], abs=2e-3)
    scores = rng.integers(0, 5, (400, 3)).astype(float)  # many ties
    labels = (rng.random((400, 3)) < 0.3).astype(float)
    assert ts.average_ranks(scores) == pytest.approx(rankdata(scores, axis=0))
    assert ts.column_auc(scores, labels) == pytest.approx([roc_auc_score(labels[:, j], scores[:, j]) for j in range(3)])


def test_combining_and_adjusting_p_values():
    assert ts.combine([0.004, 0.3]) == pytest.approx(0.008) and ts.combine([0.7, 0.9]) == 1.0
    assert ts.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
