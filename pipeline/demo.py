"""Write a small demo dataset into data/raw/<class>/: synthetic oral photos plus real-world mess.

The classes differ the way the clinical ones do: normal mucosa is smooth and pink,
pre-cancer shows white patches (leukoplakia-like), cancer a dark red ulcerated mass.
The mess: exact and near duplicates, one image filed under two classes, unreadable,
empty, truncated and tiny files, a decompression bomb, odd colour modes, an EXIF-rotated
photo, hidden files, an unexpected folder and names with spaces and non-ASCII characters.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

CLASSES = ("normal", "precancer", "cancer")


def blob_mask(rng: np.random.Generator, size: int, centre, radius: float, lobes: int = 5) -> np.ndarray:
    """An irregular soft-edged blob: the sum of a few Gaussians around a centre, thresholded."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    field = np.zeros((size, size), np.float32)
    for _ in range(lobes):
        cy, cx = np.asarray(centre) + rng.normal(0, radius * 0.5, 2)
        r = radius * rng.uniform(0.4, 0.9)
        field += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return np.clip((field - 0.5) * 3, 0, 1)


def mucosa(rng: np.random.Generator, size: int) -> np.ndarray:
    """Pink background with uneven lighting, fine texture and a few vessels."""
    base = np.array([205, 120, 130], np.float32) * rng.uniform(0.85, 1.1)
    coarse = Image.fromarray(rng.normal(0, 1, (size // 16 + 2,) * 2).astype(np.float32), "F")
    low = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC))
    image = base + 18 * low[..., None] + rng.normal(0, 5, (size, size, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(rng.integers(2, 5)):  # thin darker vessels
        a, b, c = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0, size)
        dist = np.abs(a * xx + b * yy - c * (abs(a) + abs(b))) / np.hypot(a, b)
        image -= (dist < 1.2)[..., None] * np.array([40, 60, 50])
    return image


def draw(label: str, rng: np.random.Generator, size: int = 160) -> Image.Image:
    image = mucosa(rng, size)
    centre = rng.uniform(size * 0.3, size * 0.7, 2)
    if label == "precancer":  # one to three white, slightly rough plaques
        for _ in range(rng.integers(1, 4)):
            mask = blob_mask(rng, size, rng.uniform(size * 0.2, size * 0.8, 2), size * rng.uniform(0.08, 0.14))
            image = image * (1 - mask[..., None]) + mask[..., None] * (235 + rng.normal(0, 8, (size, size, 3)))
    elif label == "cancer":  # a dark red ulcer with a yellowish necrotic centre
        mask = blob_mask(rng, size, centre, size * rng.uniform(0.15, 0.22), lobes=7)
        core = blob_mask(rng, size, centre, size * 0.07, lobes=3)
        image = image * (1 - mask[..., None]) + mask[..., None] * np.array([120, 25, 35])
        image = image * (1 - core[..., None]) + core[..., None] * np.array([200, 180, 90])
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def write_clean(out: Path, per_class: int, rng: np.random.Generator) -> dict[str, list[Path]]:
    written = {}
    for label in CLASSES:
        written[label] = []
        for i in range(per_class):
            image = draw(label, rng, size=int(rng.integers(150, 200)))
            kind = "png" if i % 5 == 0 else "jpg"
            written[label].append(save(image, out / label / f"{label}_{i:03d}.{kind}", quality=92))
    return written


def write_mess(out: Path, clean: dict[str, list[Path]], rng: np.random.Generator) -> None:
    """Everything a real hospital folder holds besides clean images."""
    for label in CLASSES:  # exact duplicates (same bytes, new name) and near duplicates (re-encoded)
        shutil.copyfile(clean[label][1], out / label / f"copy of {clean[label][1].name}")
        near = ImageEnhance.Brightness(Image.open(clean[label][2]).convert("RGB")).enhance(1.04)
        save(near, out / label / f"{clean[label][2].stem}_rescan.jpg", quality=80)
    shutil.copyfile(clean["normal"][3], out / "cancer" / "referral 2023-114.jpg")  # filed under two classes
    (out / "normal" / "scan_broken.jpg").write_bytes(rng.bytes(2048))              # not an image
    (out / "normal" / "empty.png").write_bytes(b"")                                # zero bytes
    (out / "precancer" / "notes.jpg").write_text("biopsy pending, see chart\n")    # text with an image name
    data = clean["cancer"][4].read_bytes()
    (out / "cancer" / "truncated.jpg").write_bytes(data[: len(data) // 2])         # cut-off transfer
    save(draw("normal", rng, 32), out / "normal" / "thumbnail.jpg")                # too small
    save(Image.new("L", (7000, 6000)), out / "precancer" / "bomb.png")             # 42 Mpx, a few kB
    (out / "cancer" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")                    # hidden file
    for i in range(2):                                                             # unexpected folder
        save(draw("normal", rng), out / "unsorted" / f"unsorted_{i}.jpg")
    odd = {  # odd colour modes: kept and converted to RGB for the model
        "normal/lésion buccale grey.png": draw("normal", rng).convert("L"),
        "normal/口腔 palette.png": draw("normal", rng).convert("P", palette=Image.Palette.ADAPTIVE),
        "precancer/plaque rgba.png": draw("precancer", rng).convert("RGBA"),
        "cancer/ulcer cmyk.jpg": draw("cancer", rng).convert("CMYK"),
    }
    for rel, image in odd.items():
        save(image, out / rel)
    sixteen = (np.asarray(draw("precancer", rng).convert("L"), np.uint16) * 257)
    save(Image.fromarray(sixteen), out / "precancer" / "plaque 16bit.png")
    upright = draw("cancer", rng, 200).crop((0, 0, 200, 150))  # stored rotated, with EXIF saying how to turn it upright
    exif = Image.Exif()
    exif[0x0112] = 6
    save(upright.transpose(Image.Transpose.ROTATE_90), out / "cancer" / "phone photo.jpg", exif=exif)


def generate(out: Path, per_class: int = 100, seed: int = 0) -> int:
    if per_class < 5:
        raise ValueError("per_class must be at least 5 (the mess is made from the first five images)")
    rng = np.random.default_rng(seed)
    clean = write_clean(out, per_class, rng)
    write_mess(out, clean, rng)
    return sum(1 for p in out.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("data/raw"))
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"demo: {args.out} is not empty; the demo never writes over real data")
    print(f"demo: wrote {generate(args.out, args.per_class, args.seed)} files to {args.out}")
    write_marker(args.out)


def write_marker(out: Path) -> Path:
    """data/demo-images.json beside the folder: every file the demo wrote, by sha256, so that
    `pipeline.fresh_start --demo-images` deletes exactly these and never an image someone added."""
    files = {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(out.rglob("*")) if p.is_file()}
    marker = out.parent / "demo-images.json"
    marker.write_text(json.dumps({"folder": out.name, "files": files}, indent=1, ensure_ascii=False) + "\n")
    return marker


if __name__ == "__main__":
    main()
