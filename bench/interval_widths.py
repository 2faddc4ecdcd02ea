"""Interval widths by image vs by duplicate group, on the real ISIC set (run: `python bench/interval_widths.py`).

Predictions: out-of-fold probabilities of a linear head on frozen MobileNetV2 features (the
label_review stage's functions, folds by duplicate group), over the set's 3-way labels and the
project's own dedup groups. Test splits of the sizes this project sees are drawn by group,
stratified by class, and `pipeline.intervals.interval` is computed twice on each: with the dedup
groups (what evaluate reports) and with every image as its own group (what an image bootstrap
assumes). Prints a markdown table of mean widths.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("KERAS_HOME", str(ROOT.parent / "shared" / "weights" / "keras"))

from label_review_isic import SHARED, build_split  # noqa: E402

from pipeline.intervals import interval  # noqa: E402
from pipeline.label_review import extract_features, feature_extractor, grouped_folds, out_of_fold_probabilities  # noqa: E402
from pipeline.metrics import scores  # noqa: E402
from pipeline.params import load_params  # noqa: E402

CLASSES = ["benign", "precancer", "cancer"]


def draw_test(groups: np.ndarray, y: np.ndarray, share: float, rng) -> np.ndarray:
    """Image indices of a test split: a `share` of each class's groups, whole groups only."""
    picked = []
    for c in np.unique(y):
        ids = np.unique(groups[y == c])
        chosen = rng.choice(ids, max(1, round(share * len(ids))), replace=False)
        picked.append(np.flatnonzero(np.isin(groups, chosen) & (y == c)))
    return np.concatenate(picked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", type=int, default=50, help="test splits drawn per size")
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    table = build_split(SHARED, "3way", "dedup")
    table = table[~table.conflict & (table.duplicate_of == "")].reset_index(drop=True)  # what split.csv holds
    y, groups = np.array([CLASSES.index(c) for c in table.label]), table.group_id.to_numpy()
    start = time.perf_counter()
    params = load_params(ROOT / "params.yaml").label_review
    features, _ = extract_features(feature_extractor(params), [SHARED / p for p in table.path], params.image_size)
    probs, _ = out_of_fold_probabilities(features, y, grouped_folds(y, groups, 5, 0), len(CLASSES), 0)
    print(f"{len(table)} images in {len(set(groups))} dedup groups; features + out-of-fold head in "
          f"{time.perf_counter() - start:.0f} s; balanced accuracy {scores(y, probs, CLASSES, ['cancer'], 10)['balanced_accuracy']:.3f}")
    print("| test share | images (mean) | groups (mean) | metric | width by group | width by image | ratio |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for share in (0.02, 0.15):
        for metric in ("balanced_accuracy", "roc_auc"):
            rows = []
            for _ in range(args.splits):
                idx = draw_test(groups, y, share, rng)
                g = interval(metric, y[idx], probs[idx], groups[idx], CLASSES, args.resamples, 0)
                i = interval(metric, y[idx], probs[idx], np.arange(len(idx)), CLASSES, args.resamples, 0)
                rows.append((len(idx), len(set(groups[idx])), g["high"] - g["low"], i["high"] - i["low"]))
            n, k, wg, wi = np.mean(rows, axis=0)
            print(f"| {share:.0%} | {n:.0f} | {k:.0f} | {metric} | {wg:.3f} | {wi:.3f} | {wg / wi:.2f} |")


if __name__ == "__main__":
    main()
