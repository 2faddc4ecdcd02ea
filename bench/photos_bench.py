"""Phone-sized photos through the image loader: images/s of validate's check, dedup's hash and
the model input, on generated 12 MP photos (JPEG, some HEIC and MPO), one process.

Run: `python bench/photos_bench.py [--images 30]`. A smooth random photo-like picture per file
(perceptual hashes of pure noise are unstable), 4000x3000, quality 90.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.dedup import compute_hash  # noqa: E402
from pipeline.images import _register_formats, inspect_image, model_input  # noqa: E402

SIZE = (4000, 3000)


def photo(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(SIZE, Image.Resampling.BICUBIC)
    grain = rng.integers(-8, 9, (SIZE[1], SIZE[0], 3))
    return Image.fromarray(np.clip(np.asarray(image).astype(int) + grain, 0, 255).astype(np.uint8))


def write_photos(folder: Path, n: int) -> list[Path]:
    """Mostly JPEG; every 5th HEIC, every 7th MPO (a JPEG with a second, depth-map-like frame)."""
    _register_formats()
    paths = []
    for i in range(n):
        image = photo(i)
        if i % 5 == 4:
            path = folder / f"{i}.heic"
            image.save(path, format="HEIF", quality=90)
        elif i % 7 == 6:
            path = folder / f"{i}.jpg"
            image.save(path, format="MPO", save_all=True, quality=90,
                       append_images=[image.convert("L").resize((640, 480))])
        else:
            path = folder / f"{i}.jpg"
            image.save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def rate(fn, paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        fn(path)
    return len(paths) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_photos(Path(tmp), args.images)
        kinds = {"JPEG + MPO": [p for p in paths if p.suffix == ".jpg"], "HEIC": [p for p in paths if p.suffix == ".heic"]}
        print(f"{args.images} photos {SIZE[0]}x{SIZE[1]} (JPEG, HEIC every 5th, MPO every 7th), one process\n")
        print("| step | " + " | ".join(f"{k} images/s" for k in kinds) + " |\n|---|---|---|")
        steps = {"validate: inspect_image": lambda p: inspect_image(p, 40_000_000),
                 "dedup: compute_hash (phash 8)": lambda p: compute_hash(p, "phash", 8),
                 "model_input 224 px": lambda p: model_input(p, 224)}
        for name, fn in steps.items():
            print(f"| {name} | " + " | ".join(f"{rate(fn, group):.1f}" for group in kinds.values()) + " |")


if __name__ == "__main__":
    main()
