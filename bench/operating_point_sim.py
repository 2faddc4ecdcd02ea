"""Does the shipped threshold keep its promise? Simulated calibration sets, a known score distribution.

    python bench/operating_point_sim.py [--runs 2000] [--target 0.95] [--confidence 0.95]

Positive and negative duplicate groups of 1-4 images draw refer scores from fixed distributions (a
shared lesion effect per group, so images of a group are correlated). For each size of the
calibration set (20-300 positive groups) the threshold is chosen `--runs` times by
pipeline.operating_point.choose_threshold; the truth is computed on 200,000 fresh groups of the same
distribution. Printed per size: how often the true sensitivity (a group found when all its images
are referred) reaches the level the run states (must be >= the confidence), how often the target
itself was met, the mean true sensitivity and specificity at the chosen threshold, and the
specificity the oracle threshold (true sensitivity exactly the target) would give.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.operating_point import choose_threshold  # noqa: E402


def draw_groups(rng, n: int, centre: float) -> tuple[np.ndarray, np.ndarray]:
    """Per group: the lowest and the highest score of its 1-4 images (logistic of a shared effect + noise)."""
    sizes = rng.integers(1, 5, n)
    effect = np.repeat(rng.normal(centre, 1.0, n), sizes) + rng.normal(0, 0.5, sizes.sum())
    scores = 1 / (1 + np.exp(-effect))
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    return np.minimum.reduceat(scores, starts), np.maximum.reduceat(scores, starts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng, start = np.random.default_rng(args.seed), time.time()
    positive_min, _ = draw_groups(rng, 200_000, 1.5)    # positives score high
    _, negative_max = draw_groups(rng, 200_000, -1.5)   # a negative group is wrongly referred if any image is
    oracle = np.quantile(positive_min, 1 - args.target)
    oracle_specificity = (negative_max < oracle).mean()
    print(f"target sensitivity {args.target}, confidence {args.confidence}, {args.runs} runs per size; "
          f"oracle threshold {oracle:.3f} gives specificity {oracle_specificity:.3f}")
    print("positive groups | stated level reached | target met | true sensitivity | true specificity | "
          "specificity given up vs oracle")
    for n in (20, 40, 59, 100, 200, 300):
        reached = met = 0
        sens, spec = [], []
        for _ in range(args.runs):
            point = choose_threshold(draw_groups(rng, n, 1.5)[0], args.target, args.confidence)
            true_sensitivity = (positive_min >= point["threshold"]).mean()
            reached += true_sensitivity >= point["guaranteed_sensitivity"]
            met += point["target_met"]
            sens.append(true_sensitivity)
            spec.append((negative_max < point["threshold"]).mean())
        print(f"{n:15d} | {reached / args.runs:20.3f} | {met / args.runs:10.3f} | {np.mean(sens):16.3f} | "
              f"{np.mean(spec):16.3f} | {oracle_specificity - np.mean(spec):+.3f}")
    print(f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
