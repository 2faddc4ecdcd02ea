"""Decode once: the model-ready pixels of every image, cached by content (sha256).

A 12 MP phone JPEG took ~60 ms to decode and ~60 ms per model size to resize, and every stage
did that again: augment, train and evaluate per architecture, export, register, label_review,
Grad-CAM. `validate` now decodes each new content once, in parallel over the machine's cores
(a large JPEG at a DCT scale, as the input contract in `images.RESIZE_CONTRACT` says), and keeps:
- the model input at every configured size (`train.architectures`, `label_review.image_size`),
  exactly as `images.model_input` makes it from the original: what serving and the mobile app
  compute. (One intermediate size for all architectures would be simpler, but a 4000x3000 ->
  S -> 224 resize is not the 4000x3000 -> 224 one serving does: models would train on other
  pixels than they are served.) A size nobody cached yet is made on first use.
- a preview (aspect kept, shorter side PREVIEW_SIDE, from the file decoded with its shorter side
  >= PREVIEW_SIDE) for what needs no exact pixels: dedup's perceptual hash, augmentation,
  contact sheets and Grad-CAM overlays;
- what validate learnt of the file (format, mode, oriented size), so an unchanged image is never
  decoded again in a later data version.
The sizes the preview's decode serves are resized from it (on a 12 MP photo all of them: 1/8
scale keeps 375 px); a size that needs a finer DCT scale gets its own decode.
Files are keyed by content and by a digest of the input contract, written atomically (a
crashed or parallel writer never leaves half a file), and never need invalidating: a new
contract writes beside the old. The folder is a cache like Keras': not versioned by DVC; it
lives beside `data/raw` (`data/pixels/`) unless PIXEL_CACHE names another (e.g. a shared disk).
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.console import progress
from pipeline.images import (BACKGROUND, RESIZE_CONTRACT, ImageInfo, UnusableImage, dct_scale, decode, save_png,
                             describe, float_bands, load_rgb, model_input, resize_rgb)

PREVIEW_SIDE = 320  # >= every model size, so augmented images are never upsampled
VERSION = "v1-" + hashlib.sha256(json.dumps([RESIZE_CONTRACT, BACKGROUND, PREVIEW_SIDE],
                                            sort_keys=True).encode()).hexdigest()[:8]


def cache_dir(raw_dir: Path) -> Path:
    return Path(os.environ.get("PIXEL_CACHE") or Path(raw_dir).parent / "pixels") / VERSION


def _file(root: Path, kind: str, sha: str, suffix: str) -> Path:
    return root / kind / sha[:2] / f"{sha}{suffix}"


def _write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        write(handle)
    os.replace(tmp, path)


def make_preview(rgb: Image.Image) -> Image.Image:
    """Aspect kept, shorter side PREVIEW_SIDE (never enlarged); 8-bit bilinear is enough here."""
    k = PREVIEW_SIDE / min(rgb.size)
    if k >= 1:
        return rgb
    size = (max(1, round(rgb.width * k)), max(1, round(rgb.height * k)))
    return rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)


def preview_of(source: Path) -> Image.Image:
    """The preview made from the original (decoded with its shorter side >= PREVIEW_SIDE)."""
    return make_preview(load_rgb(source, min_side=PREVIEW_SIDE))


def store(root: Path, sha: str, source: Path, sizes: tuple[int, ...], max_pixels: int) -> ImageInfo:
    """Decode `source` once; write its info, preview and the model inputs it lacks. Raises UnusableImage."""
    image, stored = decode(source, max_pixels, min_side=PREVIEW_SIDE)
    info, rgb = describe(image, stored)
    bands = {}  # DCT scale -> float bands of that decode; the preview's decode is reused
    for size in sizes:
        target = _file(root, str(size), sha, ".npy")
        if target.is_file():
            continue
        scale = dct_scale(info.format, *stored, size)
        if scale not in bands:
            same = scale == dct_scale(info.format, *stored, PREVIEW_SIDE)
            bands[scale] = float_bands(rgb if same else describe(*decode(source, max_pixels, min_side=size))[1])
        _write(target, lambda f, a=resize_rgb(bands[scale], size): np.save(f, a))
    _write(_file(root, "preview", sha, ".png"), lambda f: save_png(make_preview(rgb), f))
    _write(_file(root, "info", sha, ".json"), lambda f: f.write(json.dumps(asdict(info)).encode()))
    return info


def known(root: Path, sha: str, sizes: tuple[int, ...]) -> ImageInfo | None:
    """What an earlier decode learnt of this content, if it left everything `sizes` needs."""
    info = _file(root, "info", sha, ".json")
    if not info.is_file() or not all(_file(root, str(s), sha, ".npy").is_file() for s in sizes):
        return None
    return ImageInfo(**json.loads(info.read_text()))


def inspect_cached(root: Path, sha: str, source: Path, sizes: tuple[int, ...], max_pixels: int) -> ImageInfo:
    """validate's check of one file: from the cache when this content was seen, else one decode."""
    info = known(root, sha, sizes)
    if info is not None:
        if info.width * info.height > max_pixels:  # the limit may have been lowered since
            raise UnusableImage(f"image is {info.width}x{info.height} = {info.width * info.height:,} pixels, "
                                f"over the {max_pixels:,} limit (possible decompression bomb)")
        return info
    return store(root, sha, source, sizes, max_pixels)


def model_array(root: Path, sha: str, source: Path, size: int) -> np.ndarray:
    """The model input of one content: from the cache, else made (and kept) from the original."""
    if not sha:  # content unknown (an augmented image): nothing to key the cache by
        return model_input(source, size)
    target = _file(root, str(size), sha, ".npy")
    try:
        return np.load(target)
    except (FileNotFoundError, ValueError, OSError):
        array = model_input(source, size)
        _write(target, lambda f: np.save(f, array))
        return array


def preview(root: Path, sha: str, source: Path) -> Image.Image:
    """The preview of one content (RGB), made from the original when missing."""
    if not sha:
        return preview_of(source)
    target = _file(root, "preview", sha, ".png")
    try:
        with Image.open(target) as image:
            return image.convert("RGB")
    except (FileNotFoundError, OSError):
        image = preview_of(source)
        _write(target, lambda f: save_png(image, f))
        return image


def load_batch(root: Path, shas, sources, size: int) -> np.ndarray:
    """uint8 (n, size, size, 3) of cached model inputs."""
    out = np.empty((len(shas), size, size, 3), dtype=np.uint8)
    for i, (sha, source) in enumerate(zip(shas, sources)):
        out[i] = model_array(root, sha, source, size)
    return out


def shas_of(rows) -> list[str]:
    """The sha256 column of some table rows ("" for each row when a table has none: not cached)."""
    return list(rows.sha256) if "sha256" in rows else [""] * len(rows)


def workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parallel_map(fn, items: list, desc: str, serial_below: int = 16):
    """fn over items in order, over all cores (separate processes: decoding holds the GIL), with a
    progress bar. Small jobs run here: starting processes costs more than they save."""
    if len(items) < serial_below or workers() == 1:
        return [fn(item) for item in progress(items, desc)]
    # fork: the workers start in milliseconds with this process' imports (nothing here has started threads)
    with ProcessPoolExecutor(workers(), mp_context=get_context("fork")) as pool:
        return list(progress(pool.map(fn, items, chunksize=4), desc, len(items)))
