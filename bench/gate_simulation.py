"""How often the promotion gate promotes, by simulation (run: `python bench/gate_simulation.py --decisions 2000`).

Simulated paired test splits (3 classes; duplicate groups of 1-3 images that are mostly right or
wrong together; two models that agree on most images) are scored by a champion and a challenger
with a known true difference in balanced accuracy, and `pipeline.paired.paired_comparison`
decides. Reported: the false-promotion rate (equal skill under superiority; worse by exactly the
margin under non-inferiority; both must stay <= 1 - confidence) and the power at +0.05 and +0.10.
A plain percentile group bootstrap is run on the same splits for comparison. tests/test_paired.py
draws from this generator too; bench/gate_power.py measures the gate on an independent one.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import binom
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.intervals import group_resample_weights  # noqa: E402
from pipeline.metrics import metric_values  # noqa: E402
from pipeline.paired import paired_comparison  # noqa: E402

CLASSES = ["normal", "precancer", "cancer"]
OLD = np.array([0.80, 0.70, 0.75])  # champion's per-class recall: balanced accuracy 0.75
# (name, rule, true difference in balanced accuracy, challenger's per-class recall)
SETTINGS = [("equal skill", "superiority", 0.0, OLD),
            ("equal, traded between classes", "superiority", 0.0, np.array([0.70, 0.75, 0.80])),
            ("worse by the margin", "non_inferiority", -0.05, OLD - 0.05),
            ("worse by the margin, traded", "non_inferiority", -0.05, np.array([0.65, 0.70, 0.75])),
            ("better", "superiority", 0.05, OLD + 0.05),
            ("better", "superiority", 0.10, OLD + 0.10),
            ("better", "non_inferiority", 0.05, OLD + 0.05)]
# (label, groups per class, probabilities of groups of 1, 2, 3 images)
SIZES = [("tiny: 15 images, 5 groups/class", 5, (1.0, 0.0, 0.0)),
         ("demo: ~45 images, ~33 groups", 11, (0.7, 0.2, 0.1)),
         ("ISIC-sized: ~350 images, ~250 groups", 83, (0.7, 0.2, 0.1))]


def latents(rng, groups: np.ndarray, n_groups: int, cohesion: float) -> np.ndarray:
    """Uniforms per image: the group's own value, or (for an atypical image) the image's own."""
    typical = rng.random(len(groups)) < cohesion
    return np.where(typical, rng.random(n_groups)[groups], rng.random(len(groups)))


def outputs(rng, y: np.ndarray, u: np.ndarray, recall: np.ndarray, k: int) -> np.ndarray:
    """Probabilities whose top class is right exactly when u < recall[y]; a wrong answer's class comes from u too,
    so two models sharing u also share their mistakes."""
    wrong = np.minimum(((u - recall[y]) / (1 - recall[y] + 1e-12) * (k - 1)).astype(int), k - 2)
    pred = np.where(u < recall[y], y, (y + 1 + np.maximum(wrong, 0)) % k)
    logits = rng.normal(0, 1, (len(y), k))
    logits[np.arange(len(y)), pred] = logits.max(1) + rng.exponential(1, len(y))
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def simulate_pair(rng, groups_per_class: int, old_recall, new_recall, sizes=(0.7, 0.2, 0.1),
                  agreement: float = 0.7, cohesion: float = 0.85):
    """One test split scored by two models: (y, probs_new, probs_old, groups).

    A model is right on an image when the image's latent uniform falls below its recall for the class, so
    each model's true per-class recall is exact. Duplicates share their group's latent with probability
    `cohesion`; with probability `agreement` a group's latents are the same for both models (they fail on
    the same lesions), otherwise the new model gets an independent copy. At equal recalls the two models
    are exchangeable, as the null hypothesis of a paired test says.
    """
    k = len(old_recall)
    gclass = np.repeat(np.arange(k), groups_per_class)
    groups = np.repeat(np.arange(len(gclass)), rng.choice([1, 2, 3], len(gclass), p=sizes))
    y = gclass[groups]
    u_old = latents(rng, groups, len(gclass), cohesion)
    shared = (rng.random(len(gclass)) < agreement)[groups]
    u_new = np.where(shared, u_old, latents(rng, groups, len(gclass), cohesion))
    return (y, outputs(rng, y, u_new, np.asarray(new_recall), k),
            outputs(rng, y, u_old, np.asarray(old_recall), k), groups)


def bootstrap_lower(y, new, old, groups, n_resamples: int, seed: int, confidence: float) -> float:
    """The plain paired percentile group bootstrap's one-sided lower bound (for comparison only)."""
    weights = group_resample_weights(y, groups, n_resamples, seed)
    diffs = (metric_values("balanced_accuracy", y, new, weights, CLASSES)
             - metric_values("balanced_accuracy", y, old, weights, CLASSES))
    return float(np.quantile(diffs, 1 - confidence))


def promotion_rates(size, setting, decisions: int, n_resamples: int, margin: float, confidence: float, seed: int):
    """(rate of the sign-flip gate, rate of the percentile bootstrap) over `decisions` simulated splits."""
    _, per_class, sizes = size
    _, rule, _, new_recall = setting
    rng, promoted = np.random.default_rng(seed), np.zeros(2)
    threshold = 0.0 if rule == "superiority" else -margin
    for d in range(decisions):
        y, new, old, groups = simulate_pair(rng, per_class, OLD, new_recall, sizes)
        c = paired_comparison("balanced_accuracy", y, new, old, groups, CLASSES, n_resamples, seed + d,
                              confidence, rule, margin)
        promoted += [c["verdict"] != "not_shown",
                     bootstrap_lower(y, new, old, groups, n_resamples, seed + d, confidence) > threshold]
    return promoted / decisions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decisions", type=int, default=2000, help="simulated test splits per row")
    parser.add_argument("--resamples", type=int, default=500)
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start, alpha = time.perf_counter(), 1 - args.confidence
    limit = binom.ppf(0.99, args.decisions, alpha) / args.decisions
    print(f"`python bench/gate_simulation.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n")
    print(f"balanced accuracy; champion's recalls {OLD.tolist()}; margin {args.margin}; one-sided confidence "
          f"{args.confidence}; {args.resamples} swaps or resamples per decision; {args.decisions} decisions per row. "
          f"A false-promotion rate is within Monte-Carlo error of {alpha:.2f} up to {limit:.3f} (binomial 99%).\n")
    print("| test split | rule | true difference | challenger | promoted by the gate "
          "| by a percentile bootstrap |\n|---|---|---|---|---|---|")
    for i, size in enumerate(SIZES):
        for j, setting in enumerate(SETTINGS):
            with threadpool_limits(1):  # one core; small products are slower with BLAS threads anyway
                gate, boot = promotion_rates(size, setting, args.decisions, args.resamples, args.margin,
                                             args.confidence, args.seed + 1000 * (10 * i + j))
            print(f"| {size[0]} | {setting[1]} | {setting[2]:+.2f} | {setting[0]} | {gate:.3f} | {boot:.3f} |",
                  flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
