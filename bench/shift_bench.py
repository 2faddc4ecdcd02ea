"""The shift check on real images (run: `python bench/shift_bench.py`).

ISIC dermoscopy (`../shared/datasets/isic-skin-9class-180px`, 2,359 images, 180 px), one content per
sha256, duplicate groups from the project's own dedup (phash, `dedup.max_distance`). Whole groups are
split once, seeded, into a reference (what a champion was trained and checked on) and a pool of
images the reference never saw. Embeddings: MobileNetV2 (alpha 0.35, ImageNet weights from
KERAS_HOME, default ../shared/weights/keras), globally pooled, 1,280 dims: the penultimate layer of
the project's MobileNetV2 before fine-tuning. Images go through `pipeline.images.model_input`,
as the pixel cache makes them.

Each trial draws `--new` images from the pool and runs the stage's test
(`pipeline.two_sample.compare`, the params.yaml permutations) against the reference:
- unchanged batches: the false-alarm rate at `shift.alpha` (target <= 5%);
- a synthetic camera change applied to the batch (colour cast, JPEG quality, blur, a lower
  resolution, each clear and mild, and all four together): the detection rate at `shift.alpha`
  (p < 0.01).
Then the test alone on synthetic embeddings, 1,000 new vs 5,000 reference, 1,280 dims (target < 30 s
on 2 cores). Figures are printed and written to `--out` as JSON.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("KERAS_HOME", str(ROOT.parent / "shared" / "weights" / "keras"))  # offline ImageNet weights
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from pipeline.images import model_input, sha256_file  # noqa: E402
from pipeline.params import LabelReview, load_params  # noqa: E402
from pipeline.two_sample import compare  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets" / "isic-skin-9class-180px"
SIZE = 224
CAMERAS = {  # a phone that is not the reference's: each change alone, clear and mild, then all of them
    "colour cast 12%": {"cast": (1.12, 1.0, 0.88)},       # warmer white balance (red +12%, blue -12%)
    "colour cast 4%": {"cast": (1.04, 1.0, 0.96)},
    "JPEG quality 20": {"quality": 20},
    "JPEG quality 60": {"quality": 60},
    "blur radius 1.5": {"blur": 1.5},
    "blur radius 0.7": {"blur": 0.7},
    "half resolution": {"scale": 0.5},                    # 90 px photos, upsampled by the input contract
    "3/4 resolution": {"scale": 0.75},
    "all four, clear": {"cast": (1.12, 1.0, 0.88), "quality": 20, "blur": 1.5, "scale": 0.5},
}


def contents(dataset: Path, work: Path) -> tuple[list[Path], np.ndarray]:
    """One path per distinct content and its duplicate group (phash within dedup.max_distance)."""
    from pipeline.dedup import group_contents, hash_contents

    by_sha = {}
    for path in sorted(dataset.glob("*/*/*.jpg")):
        by_sha.setdefault(sha256_file(path), path)
    dedup = load_params(ROOT / "params.yaml").dedup
    hashes, _ = hash_contents(by_sha, dedup, {}, work / "pixels")
    group_of, _ = group_contents(hashes, dedup.max_distance, dedup.hash_size ** 2)
    shas = sorted(by_sha)
    return [by_sha[s] for s in shas], np.array([group_of[s] for s in shas])


def camera(path: Path, change: dict) -> bytes:
    """The photo as the other camera would have delivered it (JPEG bytes)."""
    image = Image.open(path).convert("RGB")
    if "scale" in change:
        image = image.resize((round(image.width * change["scale"]), round(image.height * change["scale"])),
                             Image.Resampling.BICUBIC)
    if "blur" in change:
        image = image.filter(ImageFilter.GaussianBlur(change["blur"]))
    if "cast" in change:
        image = Image.fromarray(np.clip(np.asarray(image) * np.array(change["cast"]), 0, 255).astype(np.uint8))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=change.get("quality", 95))
    return out.getvalue()


def embed(model, sources: list) -> np.ndarray:
    rows = []
    for start in range(0, len(sources), 64):
        batch = np.stack([model_input(s, SIZE) for s in sources[start:start + 64]]).astype(np.float32)
        rows.append(np.asarray(model.predict_on_batch(batch)))
    return np.concatenate(rows)


def split_groups(groups: np.ndarray, pool_share: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the reference and of the pool; a duplicate group lies wholly in one."""
    unique = rng.permutation(np.unique(groups))
    pooled = set(unique[:round(len(unique) * pool_share)])
    in_pool = np.array([g in pooled for g in groups])
    return np.flatnonzero(~in_pool), np.flatnonzero(in_pool)


def trials(ref_x, ref_groups, pool_x, pool_groups, n_new, runs, permutations, rng) -> list[float]:
    p = []
    for _ in range(runs):
        pick = rng.choice(len(pool_x), n_new, replace=False)
        groups = np.concatenate([ref_groups, pool_groups[pick]])
        p.append(compare(ref_x, pool_x[pick], groups, permutations, rng)[0]["p_value"])
    return p


def timing(permutations: int, rng) -> dict:
    ref, new = rng.normal(size=(5000, 1280)).astype(np.float32), rng.normal(size=(1000, 1280)).astype(np.float32)
    start = time.perf_counter()
    result, _ = compare(ref, new, np.arange(6000), permutations, rng)
    return {"seconds": round(time.perf_counter() - start, 1), "new": 1000, "reference": 5000, "dims": 1280,
            "permutations": permutations, "p_value": result["p_value"], "cores": len(os.sched_getaffinity(0)),
            "load_average_1min": round(os.getloadavg()[0], 1)}


def rate(p: list[float], alpha: float) -> dict:
    from scipy.stats import binomtest

    hits = int(np.sum(np.array(p) < alpha))
    low, high = binomtest(hits, len(p)).proportion_ci(0.95, method="exact")
    return {"rate": round(hits / len(p), 3), "hits": hits, "runs": len(p), "ci95": [round(low, 3), round(high, 3)],
            "median_p": round(float(np.median(p)), 4)}


def main() -> None:
    from pipeline.label_review import feature_extractor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=SHARED)
    parser.add_argument("--work", type=Path, default=Path("/tmp/shift_bench"))
    parser.add_argument("--new", type=int, default=100, help="new images per batch")
    parser.add_argument("--pool-share", type=float, default=0.35,
                        help="share of duplicate groups never in the reference")
    parser.add_argument("--null-runs", type=int, default=100, help="unchanged batches")
    parser.add_argument("--shift-runs", type=int, default=10, help="batches per camera change")
    parser.add_argument("--permutations", type=int, default=None, help="default: shift.permutations in params.yaml")
    parser.add_argument("--out", type=Path, default=Path("/tmp/shift_bench.json"))
    args = parser.parse_args()
    settings = load_params(ROOT / "params.yaml").shift
    permutations, rng = args.permutations or settings.permutations, np.random.default_rng(0)
    started = time.perf_counter()
    paths, groups = contents(args.dataset, args.work)
    ref, pool = split_groups(groups, args.pool_share, rng)
    model = feature_extractor(LabelReview("MobileNetV2", "imagenet", 0.35, SIZE, 5, 0))
    ref_x, pool_x = embed(model, [paths[i] for i in ref]), embed(model, [paths[i] for i in pool])
    print(f"{len(paths)} contents in {len(np.unique(groups))} duplicate groups: reference {len(ref)}, "
          f"pool {len(pool)}; embedded in {time.perf_counter() - started:.0f} s", flush=True)
    report = {"dataset": str(args.dataset), "contents": len(paths), "reference": int(len(ref)), "pool": int(len(pool)),
              "new_per_batch": args.new, "alpha": settings.alpha, "permutations": permutations, "cameras": {}}
    p = trials(ref_x, groups[ref], pool_x, groups[pool], args.new, args.null_runs, permutations, rng)
    report["unchanged"] = rate(p, settings.alpha)
    print(f"unchanged batches: false alarms {report['unchanged']}", flush=True)
    for name, change in CAMERAS.items():
        shifted = embed(model, [camera(paths[i], change) for i in pool])
        report["cameras"][name] = {**rate(trials(ref_x, groups[ref], shifted, groups[pool], args.new, args.shift_runs,
                                                 permutations, rng), settings.alpha), "change": change}
        print(f"{name}: detected {report['cameras'][name]}", flush=True)
    report["timing"] = timing(permutations, rng)
    print(f"test alone, 1,000 new vs 5,000 reference embeddings: {report['timing']}")
    report["total_seconds"] = round(time.perf_counter() - started)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out} ({report['total_seconds']} s in all)")


if __name__ == "__main__":
    main()
