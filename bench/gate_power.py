"""The promotion gate measured on a second, independent generator (run: `python bench/gate_power.py`).

`bench/gate_simulation.py` shares its generator with tests/test_paired.py, so a flaw in that
generator would hide from both. This one is built differently: a probit model with a lesion
effect. Each image has a latent difficulty per model,

    S = sqrt(between) * (shared lesion + shared image) + sqrt(1 - between) * (own lesion + own image),

each part standard normal and the lesion part weighted by `within`, so duplicates of one lesion
are correlated `within` for either model and the two models' latents are correlated `between` on
every image. A model is right when S < probit(its recall for the class), so its true per-class
recall, and the true difference in balanced accuracy, are exact. Groups of 1-4 images; 3 classes
at 50/10/40% of groups; the champion's recalls are unequal (the middle class is hard).

Reported per cell: the false-promotion rate (equal skill under superiority; worse by exactly the
margin under non-inferiority), the power at +0.05 and +0.10 under superiority, and under
non-inferiority how often an equal model is shown not worse and a better one shown better; for the
gate (`paired_comparison`: promoted, and shown better) and for each of its two bounds alone.
Power depends on the class imbalance (a rare class's groups weigh most in balanced accuracy), the
models' correlation (correlated models disagree less, so a difference is seen sooner), the
duplicate groups and the champion's recalls: these figures hold for this generator only.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import binom, norm
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline import paired  # noqa: E402
from pipeline.intervals import group_codes  # noqa: E402

CLASSES = ["normal", "precancer", "cancer"]
SHARES = np.array([0.5, 0.1, 0.4])          # of groups
SIZE_P = np.array([0.4, 0.3, 0.2, 0.1])     # groups of 1, 2, 3, 4 images: 2.0 images a group on average
OLD = np.array([0.85, 0.45, 0.70])          # champion's recall per class: balanced accuracy 0.667
# (label, rule, true difference in balanced accuracy); the challenger's recalls are OLD + difference
SETTINGS = [("equal skill: false promotion", "superiority", 0.0),
            ("worse by the margin: false promotion", "non_inferiority", -0.05),
            ("better: power", "superiority", 0.05), ("better: power", "superiority", 0.10),
            ("equal skill: promoted if on newer data", "non_inferiority", 0.0),
            ("better: power", "non_inferiority", 0.10)]


def class_counts(n_groups: int, shares=SHARES) -> np.ndarray:
    """Groups per class at `shares` (largest remainder), at least one of each."""
    raw = n_groups * np.asarray(shares)
    counts = np.floor(raw).astype(int)
    counts[np.argsort(counts - raw)[: n_groups - counts.sum()]] += 1
    while (counts == 0).any():
        counts[counts.argmax()] -= 1
        counts[counts.argmin()] += 1
    return counts


def draw_split(rng, n_images: int, shares=SHARES) -> tuple[np.ndarray, np.ndarray]:
    """(y, group) for a test split of exactly n_images in groups of 1-4."""
    sizes = rng.choice(np.arange(1, len(SIZE_P) + 1), n_images, p=SIZE_P)
    ends = np.cumsum(sizes)
    n_groups = int(np.searchsorted(ends, n_images)) + 1
    sizes = sizes[:n_groups]
    sizes[-1] -= ends[n_groups - 1] - n_images
    gclass = rng.permutation(np.repeat(np.arange(len(CLASSES)), class_counts(n_groups, shares)))
    groups = np.repeat(np.arange(n_groups), sizes)
    return gclass[groups], groups


def latent(rng, groups: np.ndarray, within: float) -> np.ndarray:
    """Standard normal per image, correlated `within` inside a group."""
    return np.sqrt(within) * rng.standard_normal(groups.max() + 1)[groups] + \
        np.sqrt(1 - within) * rng.standard_normal(len(groups))


def probabilities(rng, y: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Dirichlet probabilities whose largest entry sits on y when right, else on another class at random."""
    k = len(CLASSES)
    pred = np.where(right, y, (y + rng.integers(1, k, len(y))) % k)
    p = np.sort(rng.dirichlet(np.ones(k), len(y)), axis=1)
    order = (pred[:, None] + 1 + rng.permuted(np.tile(np.arange(k - 1), (len(y), 1)), axis=1)) % k
    out = np.empty_like(p)
    rows = np.arange(len(y))
    out[rows, pred] = p[:, -1]
    for j in range(k - 1):
        out[rows, order[:, j]] = p[:, j]
    return out


def draw_pair(rng, n_images: int, old_recall, new_recall, between: float, within: float = 0.8, shares=SHARES):
    """One test split scored by two models: (y, probs_new, probs_old, groups)."""
    y, groups = draw_split(rng, n_images, shares)
    shared = latent(rng, groups, within)
    scores = [np.sqrt(between) * shared + np.sqrt(1 - between) * latent(rng, groups, within) for _ in range(2)]
    right = [s < norm.ppf(np.asarray(r)[y]) for s, r in zip(scores, (new_recall, old_recall))]
    return y, probabilities(rng, y, right[0]), probabilities(rng, y, right[1]), groups


def bounds(y, new, old, groups, n_resamples: int, seed: int, alpha: float) -> tuple[float, float]:
    """(sign-flip bound alone, score bound alone) for balanced accuracy, as the gate computes them."""
    inverse, gclass = group_codes(y, groups)
    diffs = paired.flip_differences("balanced_accuracy", y, new, old, inverse, CLASSES, n_resamples, seed)
    weight, right = paired.linear_terms("balanced_accuracy", y, CLASSES)
    flip = diffs[0] - paired.kth_largest(diffs[1:], alpha)
    return flip, paired.score_lower(weight, right(new.argmax(1)), right(old.argmax(1)), inverse, gclass, alpha)


def rates(n_images, setting, between, shares, decisions, n_resamples, margin, confidence, seed) -> np.ndarray:
    """Shares (promoted by the gate, shown better by it, promoted by the sign-flip bound alone, by the score bound
    alone)."""
    _, rule, difference = setting
    rng, promoted = np.random.default_rng(seed), np.zeros(4)
    threshold = 0.0 if rule == "superiority" else -margin
    for d in range(decisions):
        y, new, old, groups = draw_pair(rng, n_images, OLD, OLD + difference, between, shares=shares)
        c = paired.paired_comparison("balanced_accuracy", y, new, old, groups, CLASSES, n_resamples, seed + d,
                                     confidence, rule, margin)
        flip, score = bounds(y, new, old, groups, n_resamples, seed + d, 1 - confidence)
        promoted += [c["verdict"] != "not_shown", c["verdict"] == "better", flip > threshold, score > threshold]
    return promoted / decisions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decisions", type=int, default=2000, help="simulated test splits per cell")
    parser.add_argument("--sizes", type=int, nargs="+", default=[45, 300], help="images per test split")
    parser.add_argument("--between", type=float, nargs="+", default=[0.5, 0.8],
                        help="correlation of the two models' latent scores on an image")
    parser.add_argument("--shares", type=float, nargs=3, default=SHARES.tolist(), help="of groups, per class")
    parser.add_argument("--settings", type=int, nargs="+", default=list(range(len(SETTINGS))),
                        help="rows of SETTINGS to run (default: all)")
    parser.add_argument("--resamples", type=int, default=500)
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start, alpha = time.perf_counter(), 1 - args.confidence
    limit = binom.ppf(0.99, args.decisions, alpha) / args.decisions
    print(f"`python bench/gate_power.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n")
    print(f"balanced accuracy; classes at {args.shares} of groups; groups of 1-4 images with probabilities "
          f"{SIZE_P.tolist()}; champion's recalls {OLD.tolist()}; margin {args.margin}; one-sided confidence "
          f"{args.confidence}; {args.resamples} exchanges per decision; {args.decisions} decisions per cell. "
          f"A false-promotion rate is within Monte-Carlo error of {alpha:.2f} up to {limit:.3f} (binomial 99%).\n")
    print("| images | model correlation | rule | true difference | promoted by the gate | shown better "
          "| sign-flip bound alone | score bound alone |\n|---|---|---|---|---|---|---|---|")
    for i, n_images in enumerate(args.sizes):
        for j, between in enumerate(args.between):
            for s in args.settings:
                setting = SETTINGS[s]
                with threadpool_limits(1):
                    gate, better, flip, score = rates(n_images, setting, between, args.shares, args.decisions,
                                                      args.resamples,
                                              args.margin, args.confidence, args.seed + 1000 * (100 * i + 10 * j + s))
                print(f"| {n_images} | {between:.1f} | {setting[1]} | {setting[2]:+.2f} ({setting[0]}) | {gate:.3f} "
                      f"| {better:.3f} | {flip:.3f} | {score:.3f} |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
