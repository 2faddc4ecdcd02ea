"""Phone-sized photos through the pipeline: generated 12 MP photos (JPEG, some HEIC and MPO).

Three tables:
1. images/s of each per-image step, one process: validate's decode-once (`pixels.store`: the full
   decode, every configured model input, the preview), the reduced-scale check it replaced
   (`inspect_image`), dedup's hash of the preview, and a model input from the original;
2. the validate and dedup stages on all photos (validate over every core), first sight and a
   rerun on the same content (a new data version that changed nothing);
3. with `--repro`, the wall time and peak RSS of `dvc repro evaluate` (validate through evaluate,
   MobileNetV2 + SmallCNN, short training) on the same photos for this checkout and for
   `--baseline` (a commit before the pixel cache), each in its own git worktree.
Run: `KERAS_HOME=... python bench/photos_bench.py [--images 120] [--repro --baseline c4a82cb]`.
A smooth random photo-like picture per file (perceptual hashes of pure noise are unstable),
4000x3000, quality 90.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline import pixels  # noqa: E402
from pipeline.dedup import hash_image  # noqa: E402
from pipeline.images import (_register_formats, inspect_image, load_rgb, model_input, resize_rgb,  # noqa: E402
                             sha256_file)

SIZE = (4000, 3000)
CLASSES = ("normal", "precancer", "cancer")


def photo(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(SIZE, Image.Resampling.BICUBIC)
    grain = rng.integers(-8, 9, (SIZE[1], SIZE[0], 3), dtype=np.int16)
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + grain, 0, 255).astype(np.uint8))


def write_photo(args) -> Path:
    """Mostly JPEG; every 5th HEIC, every 7th MPO (a JPEG with a second, depth-map-like frame)."""
    folder, i = args
    _register_formats()
    image, target = photo(i), folder / CLASSES[i % 3]
    target.mkdir(parents=True, exist_ok=True)
    if i % 5 == 4:
        path = target / f"{i}.heic"
        # x265's ultrafast preset: 3.8 s to write instead of 30 s; decoding takes the same (1.4 vs 1.7 s)
        image.save(path, format="HEIF", quality=90, enc_params={"preset": "ultrafast"})
    elif i % 7 == 6:
        path = target / f"{i}.jpg"
        image.save(path, format="MPO", save_all=True, quality=90, append_images=[image.convert("L").resize((640, 480))])
    else:
        path = target / f"{i}.jpg"
        image.save(path, format="JPEG", quality=90)
    return path


def write_photos(folder: Path, n: int) -> list[Path]:
    with ProcessPoolExecutor(pixels.workers()) as pool:
        return list(pool.map(write_photo, [(folder, i) for i in range(n)]))


def rate(fn, paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        fn(path)
    return len(paths) / (time.perf_counter() - start)


def steps_table(paths: list[Path], tmp: Path) -> None:
    kinds = {"JPEG + MPO": [p for p in paths if p.suffix == ".jpg"], "HEIC": [p for p in paths if p.suffix == ".heic"]}
    root = tmp / "steps-cache"
    steps = {"validate before: inspect_image (1/8 DCT scale check)": lambda p: inspect_image(p, 40_000_000),
             "validate now: pixels.store (one decode at DCT scale, inputs 128 + 224, preview)":
                 lambda p: pixels.store(root, sha256_file(p), p, (128, 224), 40_000_000),
             "dedup now: phash of the kept preview": lambda p: hash_image(
                 pixels.preview(root, sha256_file(p), p), "phash", 8),
             "a model input 224 px from a full-size decode (each stage, before)":
                 lambda p: resize_rgb(load_rgb(p), 224),
             "a model input 224 px now (images.model_input, DCT-scaled decode)": lambda p: model_input(p, 224)}
    print("| step (one process) | " + " | ".join(f"{k} images/s" for k in kinds) + " |\n|---|---|---|")
    for name, fn in steps.items():
        print(f"| {name} | " + " | ".join(f"{rate(fn, group):.1f}" for group in kinds.values()) + " |", flush=True)


def jpeg_only(raw: Path, tmp: Path) -> Path:
    """The same photos without the HEIC ones (hard links): what an Android or camera clinic has."""
    out = tmp / "raw-jpeg"
    for path in raw.rglob("*.jpg"):
        (out / path.parent.name).mkdir(parents=True, exist_ok=True)
        os.link(path, out / path.parent.name / path.name)
    return out


def stages_table(raw: Path, tmp: Path) -> None:
    from pipeline import dedup, validate
    from pipeline.params import load_params

    values = yaml.safe_load((ROOT / "params.yaml").read_text())
    values["validate"]["min_images_per_class"] = 1
    (tmp / "params.yaml").write_text(yaml.safe_dump(values))
    params = load_params(tmp / "params.yaml")
    out, n = tmp / f"out-{raw.name}", len(list(raw.rglob("*.*")))
    os.environ["PIXEL_CACHE"] = str(tmp / f"pixels-{raw.name}")  # first sight: a cache of its own
    outputs = dedup.Outputs(groups=out / "g.csv", cache=out / "c.json", quarantine=out / "q", report=out / "d.json",
                            sheet=out / "s.png")
    heic = len(list(raw.rglob("*.heic")))
    print(f"\n| stage, {n} photos ({heic} HEIC), {pixels.workers()} cores | first sight images/s | same content again images/s |"
          "\n|---|---|---|")
    for name, fn in (("validate", lambda: validate.run(params, validate.Inputs(raw),
                                                       validate.Outputs(out / "m.csv", out / "docs", out / "v.json"))),
                     ("dedup", lambda: dedup.run(params, dedup.Inputs(raw, out / "m.csv"), outputs))):
        times = []
        for _ in range(2):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
            if name == "dedup":
                outputs.cache.unlink()  # the rerun reads previews again (its hash cache would skip them)
        print(f"| {name} | {n / times[0]:.1f} | {n / times[1]:.1f} |", flush=True)


# runs a command and prints the peak RSS of its largest process (stages are dvc's children: waited for)
PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=sys.stderr); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")


def repro(commit: str, raw: Path, tmp: Path) -> dict:
    """`dvc repro evaluate` of `commit` on a copy of the photos, in a git worktree; wall time and peak RSS."""
    work = tmp / f"wt-{commit[:8]}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-f", "--detach", str(work), commit],
                   check=True, capture_output=True)
    try:
        shutil.copytree(raw, work / "data" / "raw")
        values = yaml.safe_load((work / "params.yaml").read_text())
        values["validate"]["min_images_per_class"] = 2
        values["augment"]["target_per_class"] = 40  # above every class: both commits augment
        values["train"].update(head_epochs=3, finetune_epochs=2)
        values["evaluate"]["bootstrap"] = 200
        (work / "params.yaml").write_text(yaml.safe_dump(values))
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db", "PIXEL_CACHE": str(work / "data" / "pixels"),
               "DATADOCS_ASSETS": os.environ.get("DATADOCS_ASSETS", str(ROOT / ".vendor" / "datadocs"))}
        subprocess.run(["dvc", "add", "-q", "data/raw"], cwd=work, env=env, check=True)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", PEAK, "dvc", "repro", "evaluate"], cwd=work, env=env,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"dvc repro at {commit} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        peak = int(done.stdout.strip().splitlines()[-1])
        return {"commit": commit, "seconds": round(seconds), "peak_rss_mb": round(peak / 1024)}
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work)], capture_output=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--repro", action="store_true")
    parser.add_argument("--baseline", default="c4a82cb", help="the commit to compare with (before the pixel cache); '' for none")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        paths = write_photos(tmp / "raw", args.images)
        print(f"{args.images} photos {SIZE[0]}x{SIZE[1]} (JPEG, HEIC every 5th, MPO every 7th), "
              f"written in {time.perf_counter() - start:.0f}s\n", flush=True)
        steps_table(paths[: min(len(paths), 30)], tmp)
        stages_table(tmp / "raw", tmp)
        stages_table(jpeg_only(tmp / "raw", tmp), tmp)
        if args.repro:
            head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
            rows = [repro(c, tmp / "raw", tmp) for c in (args.baseline, head.strip()) if c]
            print("\n| `dvc repro evaluate` | wall s | peak RSS MB |\n|---|---|---|")
            for r in rows:
                print(f"| {r['commit'][:8]} | {r['seconds']} | {r['peak_rss_mb']} |")
            if len(rows) == 2:
                print(f"\nspeed-up: {rows[0]['seconds'] / rows[1]['seconds']:.1f}x")


if __name__ == "__main__":
    main()
