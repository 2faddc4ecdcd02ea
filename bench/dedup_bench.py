"""Dedup throughput and scaling (run: `make bench`, or `python bench/dedup_bench.py`).

1. Hashing: images per second for sha256 + perceptual hash on a real image set.
2. Near-duplicate search: `pipeline.hamming.near_pairs` against the naive all-pairs loop on
   10k / 100k / 1M 64-bit hashes (random, with 10% planted near copies), same answers checked.
3. cleanvision's exact and near-duplicate checks on the same real images, for comparison.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.dedup import compute_hash, group_contents  # noqa: E402
from pipeline.hamming import choose_plan, naive_pairs, near_pairs  # noqa: E402
from pipeline.images import sha256_file  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "isic-skin-9class-180px"


def planted_hashes(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**64, n - n // 10, dtype=np.uint64, endpoint=False)
    src = rng.integers(0, len(base), n // 10)
    noise = np.zeros(len(src), dtype=np.uint64)
    for _ in range(3):
        noise |= np.uint64(1) << rng.integers(0, 64, len(src)).astype(np.uint64)
    return np.concatenate([base, base[src] ^ noise])


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def bench_search(sizes, naive_limit, d):
    print(f"\n## Near-duplicate search, d={d} (seconds)\n\n"
          "| hashes | plan (chunk bits/radius) | near_pairs | all-pairs | pairs | same answer |\n|---|---|---|---|---|---|")
    for n in sizes:
        hashes = planted_hashes(n)
        plan = " ".join(f"{w}/{t}" for w, t in choose_plan(n, 64, d))
        fast, t_fast = timed(near_pairs, hashes, d)
        if n <= naive_limit:
            slow, t_slow = timed(naive_pairs, hashes, d, 256)
            same = np.array_equal(fast, np.unique(slow, axis=0))
            print(f"| {n:,} | {plan} | {t_fast:.2f} | {t_slow:.2f} | {len(fast):,} | {same} |")
        else:
            print(f"| {n:,} | {plan} | {t_fast:.2f} | not run (O(n^2)) | {len(fast):,} | - |")


def bench_hashing(images: list[Path]):
    shas, t_sha = timed(lambda: [sha256_file(p) for p in images])
    hashes, t_ph = timed(lambda: {sha256_file(p): compute_hash(p, "phash", 8) for p in images})
    print(f"\n## Hashing {len(images):,} real images (one process)\n")
    print(f"- sha256: {len(images) / t_sha:,.0f} images/s")
    print(f"- sha256 + phash (decode, orient, RGB, hash): {len(images) / t_ph:,.0f} images/s")
    return shas, hashes, t_ph


def bench_cleanvision(images: list[Path], shas: list[str], hashes: dict[str, int], t_hash: float, d: int):
    try:
        from cleanvision import Imagelab
    except ImportError:
        print("\ncleanvision not installed: `pip install -e '.[bench]'`")
        return
    with tempfile.TemporaryDirectory() as tmp:  # cleanvision wants one folder of images
        for i, p in enumerate(images):
            shutil.copyfile(p, Path(tmp) / f"{i:05d}_{p.name}")
        lab, t_cv = timed(lambda: _run_cleanvision(Imagelab, tmp))
    (groups, _), t_ours = timed(group_contents, hashes, d, 64)
    exact = lab.info["exact_duplicates"]["sets"]
    near = lab.info["near_duplicates"]["sets"]
    ours = {}
    for sha, gid in groups.items():
        ours.setdefault(gid, []).append(sha)
    copies = {}
    for sha in shas:
        copies[sha] = copies.get(sha, 0) + 1
    print(f"\n## Against cleanvision on the same {len(images):,} images (read + hash + search)\n")
    print(f"- cleanvision exact + near duplicates: {t_cv:.1f} s; {len(exact)} exact sets, {len(near)} near sets")
    print(f"- ours (sha256 + phash, then grouping at d={d}): {t_hash + t_ours:.1f} s "
          f"({t_ours:.3f} s of it the search); {sum(c > 1 for c in copies.values())} exact sets, "
          f"{sum(len(v) > 1 for v in ours.values())} near groups of distinct contents")


def _run_cleanvision(Imagelab, folder):
    lab = Imagelab(data_path=folder)
    lab.find_issues({"exact_duplicates": {}, "near_duplicates": {}}, verbose=False)
    return lab


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--naive-limit", type=int, default=100_000)
    parser.add_argument("--distance", type=int, default=6)
    parser.add_argument("--search-only", action="store_true", help="skip hashing and cleanvision")
    args = parser.parse_args()
    if args.sizes:
        bench_search(args.sizes, args.naive_limit, args.distance)
    if args.search_only:
        return
    if not SHARED.is_dir():
        print(f"\n{SHARED} not found: hashing and cleanvision benchmarks skipped")
        return
    images = sorted(SHARED.glob("*/*/*.jpg"))
    shas, hashes, t_hash = bench_hashing(images)
    bench_cleanvision(images, shas, hashes, t_hash, args.distance)


if __name__ == "__main__":
    main()
