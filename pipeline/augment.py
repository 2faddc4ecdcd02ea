"""augment: class-balancing offline augmentation of the train split only, seeded.

Each class is topped up to `augment.target_per_class` train images (or to the largest
class when it is null) with random rotation, shifts, shear, zoom, horizontal flip and
brightness. Val and test are never augmented. Variants are made from the preview validate kept
(pipeline/pixels.py), so the output is at most 320 px on its shorter side. Every augmented image is listed with the
source image and group it came from, so it can never leak across splits.
"""
from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

from pipeline.console import progress, quiet
from pipeline.pixels import cache_dir, preview, shas_of
from pipeline.images import save_png
from pipeline.privacy import image_id
from pipeline.params import Augment, Params, load_params
from pipeline.stage import one_line_errors, parser, paths
from pipeline.tables import read_split


@dataclass(frozen=True)
class Inputs:
    raw: Path
    split: Path


@dataclass(frozen=True)
class Outputs:
    out: Path           # the augmented images, <class>/<name>.png
    listing: Path       # each augmented image with its source image and duplicate group


def affine_matrix(size, rotation, shift, shear, zoom, flip) -> tuple:
    """Inverse affine coefficients (output -> input pixel), about the image centre, for PIL."""
    w, h = size
    cx, cy = w / 2, h / 2
    a, s = math.radians(rotation), math.radians(shear)
    # forward: flip, shear, rotate, zoom, then shift; PIL wants the inverse mapping
    flip_m = np.array([[-1 if flip else 1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
    shear_m = np.array([[1, -math.sin(s), 0], [0, math.cos(s), 0], [0, 0, 1]])
    rot_m = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    zoom_m = np.diag([zoom, zoom, 1.0])
    move = np.array([[1, 0, shift[0] * w], [0, 1, shift[1] * h], [0, 0, 1]])
    centre, back = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]]), np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]])
    forward = back @ move @ zoom_m @ rot_m @ shear_m @ flip_m @ centre
    return tuple(np.linalg.inv(forward)[:2].ravel())


def augment_image(image: Image.Image, params: Augment, rng: np.random.Generator) -> Image.Image:
    """One random variant. Borders are filled by reflection, as clinical photos have no black edges."""
    w, h = image.size
    pad = max(w, h) // 2
    padded = Image.fromarray(np.pad(np.asarray(image), ((pad, pad), (pad, pad), (0, 0)), mode="reflect"))
    coeffs = affine_matrix(
        padded.size,
        rotation=rng.uniform(-params.rotation, params.rotation),
        shift=(rng.uniform(-params.width_shift, params.width_shift), rng.uniform(-params.height_shift, params.height_shift)),
        shear=rng.uniform(-params.shear, params.shear),
        zoom=rng.uniform(1 - params.zoom, 1 + params.zoom),
        flip=params.horizontal_flip and rng.random() < 0.5)
    moved = padded.transform(padded.size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
    out = moved.crop((pad, pad, pad + w, pad + h))
    return ImageEnhance.Brightness(out).enhance(rng.uniform(*params.brightness))


def plan(train: pd.DataFrame, target: int | None, seed: int) -> pd.DataFrame:
    """Which train images to vary, and how often: sources cycle in a seeded order until each class reaches target."""
    counts = train.label.value_counts()
    goal = target if target is not None else int(counts.max())
    rows = []
    for label, have in sorted(counts.items()):
        sources = train[train.label == label].sample(frac=1, random_state=seed)
        for k in range(max(0, goal - have)):
            src = sources.iloc[k % have]
            rows.append({"label": label, "source_path": src.path, "group_id": src.group_id, "variant": k // have})
    return pd.DataFrame(rows, columns=["label", "source_path", "group_id", "variant"])


def run(params: Params, inputs: Inputs, outputs: Outputs) -> dict:
    base, raw_dir, out_dir = params.base, inputs.raw, outputs.out
    train = read_split(inputs.split, "train", base.classes)
    todo = plan(train, params.augment.target_per_class, base.seed)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)  # the stage's output, even when every class is already at its target
    rng = np.random.default_rng(base.seed)
    # variants of the preview (shorter side 320, >= every model size), not of the 12 MP original:
    # a variant is resized to the model's size anyway, and validate already decoded the original once
    pixel_cache, sha_of, written = cache_dir(raw_dir), dict(zip(train.path, shas_of(train))), []
    for row in progress(todo.itertuples(), "augment", len(todo)):
        sha = sha_of[row.source_path]  # named by its source's content ID, never by the original's name
        target = out_dir / row.label / f"{image_id(sha) if sha else 'image'}__aug{row.variant}_{len(written)}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        save_png(augment_image(preview(pixel_cache, sha, raw_dir / row.source_path), params.augment, rng), target)
        written.append(target.relative_to(out_dir).as_posix())
    todo.insert(0, "path", written)
    outputs.listing.parent.mkdir(parents=True, exist_ok=True)
    todo.drop(columns="variant").to_csv(outputs.listing, index=False)
    return {"train_images": int(len(train)), "augmented": int(len(todo)),
            "per_class_after": train.label.value_counts().add(todo.label.value_counts(), fill_value=0).astype(int).to_dict()}


def main(argv: list[str] | None = None) -> None:
    quiet()
    args = parser(__doc__, Inputs, Outputs).parse_args(argv)
    with one_line_errors("augment"):
        summary = run(load_params(args.params), paths(Inputs, args), paths(Outputs, args))
    print(f"augment: {summary['augmented']} new train images; per class after: {summary['per_class_after']}")


if __name__ == "__main__":
    main()
