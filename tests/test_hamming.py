import numpy as np
import pytest

from pipeline.hamming import choose_plan, flip_masks, naive_pairs, near_pairs


def planted(n: int, seed: int, flips: int = 4) -> np.ndarray:
    """n random 64-bit hashes plus n/5 copies of some of them with up to `flips` bits flipped."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    src = rng.integers(0, n, n // 5)
    noise = np.zeros(len(src), dtype=np.uint64)
    for _ in range(flips):
        noise |= np.uint64(1) << rng.integers(0, 64, len(src)).astype(np.uint64)
    return np.concatenate([base, base[src] ^ noise, base[:3]])  # and three exact copies


@pytest.mark.parametrize("d", [0, 1, 3, 6, 10])
@pytest.mark.parametrize("n", [50, 3000])
def test_matches_all_pairs_exactly(n, d):
    hashes = planted(n, seed=n + d)
    expected = np.unique(naive_pairs(hashes, d), axis=0)
    assert np.array_equal(near_pairs(hashes, d), expected)


def test_finds_planted_pairs_and_nothing_farther():
    hashes = np.array([0, 0b111, 0b1111111, 2**64 - 1], dtype=np.uint64)
    assert near_pairs(hashes, 3).tolist() == [[0, 1]]
    assert near_pairs(hashes, 4).tolist() == [[0, 1], [1, 2]]


def test_small_inputs():
    assert near_pairs(np.array([], dtype=np.uint64), 5).shape == (0, 2)
    assert near_pairs(np.array([7], dtype=np.uint64), 5).shape == (0, 2)


def test_short_hashes():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**16, 500).astype(np.uint64)
    assert np.array_equal(near_pairs(hashes, 2, bits=16), np.unique(naive_pairs(hashes, 2), axis=0))


def test_flip_masks_and_chunking():
    assert sorted(flip_masks(4, 1).tolist()) == [0, 1, 2, 4, 8]
    assert len(flip_masks(16, 2)) == 1 + 16 + 120
    assert 1 <= len(choose_plan(1_000_000, 64, 6)) <= 64


@pytest.mark.parametrize("plan", [
    [(22, 2), (21, 1), (21, 1)],           # the plan chosen for 1M hashes at d=6
    [(16, 1), (16, 1), (16, 1), (16, 0)],  # the plan chosen for 100k
    [(22, 0), (21, 0), (21, 0), (0, -1)],  # too few radii: must miss pairs (the test can fail)
])
def test_each_plan_is_exact_or_detectably_not(monkeypatch, plan):
    import pipeline.hamming as hamming
    hashes = planted(3000, seed=7, flips=6)
    expected = np.unique(naive_pairs(hashes, 6), axis=0)
    monkeypatch.setattr(hamming, "choose_plan", lambda n, bits, d: plan)
    exact = sum(t + 1 for _, t in plan) >= 7  # the generalised pigeonhole rule
    assert np.array_equal(near_pairs(hashes, 6), expected) == exact


@pytest.mark.parametrize("n, bits, d", [(10, 64, 0), (1000, 64, 1), (10**6, 64, 6), (3000, 64, 10), (500, 16, 2)])
def test_chosen_plans_satisfy_the_pigeonhole_rule(n, bits, d):
    plan = choose_plan(n, bits, d)
    assert sum(w for w, _ in plan) == bits and max(w for w, _ in plan) <= 24
    assert sum(t + 1 for _, t in plan) >= d + 1
