"""One way to open an image, shared by every stage.

`inspect_image` says whether a file is usable and, if not, why in plain words;
`load_rgb` gives the pixels the model sees: EXIF-oriented, 8-bit RGB.

Formats: whatever Pillow reads (JPEG, PNG, WEBP, TIFF, BMP, ...), phone JPEGs that carry a
second frame (MPO: the primary frame is used) and HEIC/HEIF through `pillow-heif` (libheif
applies the HEIF rotation and resets the EXIF orientation, so it is not applied twice).
Which of them a project accepts is `validate.formats` in params.yaml.
"""
from __future__ import annotations

import functools
import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError



@dataclass(frozen=True)
class ImageInfo:
    format: str
    mode: str
    width: int   # after EXIF orientation
    height: int


# Transparent pixels are laid on white, in every stage and in serving (one background for all).
BACKGROUND = (255, 255, 255)


@functools.cache
def _register_formats() -> None:
    """Teach Pillow HEIC/HEIF once, on first use (nothing runs at import time)."""
    import pillow_heif
    pillow_heif.register_heif_opener()


class UnusableImage(Exception):
    """The file cannot be used; the message says why in words a person understands."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def dct_scale(image_format: str, width: int, height: int, min_side: int | None) -> int:
    """How much smaller a JPEG is decoded: the largest of 8, 4, 2 whose shorter side // s is still
    >= min_side (libjpeg's scale_denom: an 8x8 block becomes 1, 2 or 4 pixels), else 1. Other
    formats have no DCT: 1."""
    if not min_side or image_format not in ("JPEG", "MPO"):
        return 1
    return next((s for s in (8, 4, 2) if min(width, height) // s >= min_side), 1)


def _open(source: Path | bytes, max_pixels: int, min_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Open and decode a file or bytes, turning every library failure into a readable reason.
    Returns the image and its stored size. `min_side`: a JPEG is decoded at the DCT scale
    `dct_scale` gives (PIL's draft mode); the whole stream is still read and checked."""
    size = len(source) if isinstance(source, bytes) else source.stat().st_size
    if size == 0:
        raise UnusableImage("empty file (0 bytes)")
    _register_formats()
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            if image.width * image.height > max_pixels:
                raise UnusableImage(
                    f"image is {image.width}x{image.height} = {image.width * image.height:,} pixels, "
                    f"over the {max_pixels:,} limit (possible decompression bomb)")
            stored = image.size
            scale = dct_scale(image.format, image.width, image.height, min_side)
            if scale > 1:  # PIL picks the largest scale s with width // request >= s: exactly this one
                image.draft(image.mode, (image.width // scale, image.height // scale))
            image.load()
    except UnusableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UnusableImage(f"refused as a possible decompression bomb: {err}") from None
    except UnidentifiedImageError:
        raise UnusableImage("not a readable image (the content is not a known image format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UnusableImage(f"truncated or corrupt image data ({err})") from None
    return image, stored


def decode(source: Path | bytes, max_pixels: int, min_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """The whole file decoded (a large JPEG at `dct_scale`) and its stored size; UnusableImage with a reason."""
    return _open(source, max_pixels, min_side)


def describe(image: Image.Image, stored: tuple[int, int] | None = None) -> tuple[ImageInfo, Image.Image]:
    """Format, mode and oriented size of a decoded image, and its EXIF-oriented 8-bit RGB pixels;
    UnusableImage if it can't become RGB. `stored`: the size in the file when decoded smaller."""
    width, height = stored or image.size
    try:
        turned = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        oriented = ImageOps.exif_transpose(image)
    except Exception as err:  # a broken EXIF block must not hide a good image
        raise UnusableImage(f"unreadable EXIF orientation ({err})") from None
    try:
        rgb = to_rgb(oriented)
    except ValueError as err:  # e.g. a colour mode Pillow cannot turn into RGB
        raise UnusableImage(f"colour mode {image.mode} cannot be shown as RGB ({err})") from None
    return ImageInfo(format=image.format or "", mode=image.mode,
                     width=height if turned else width, height=width if turned else height), rgb


CAMERA_TAGS = (0x010F, 0x0110)  # EXIF Make and Model; nothing else (no serial numbers, dates or places)


def _plain(value) -> str:
    """An EXIF text value as plain printable text (bytes decoded, NULs and control characters dropped)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else " " for ch in str(value or "").replace("\x00", ""))
    return " ".join(text.split())


def camera(path: Path) -> str:
    """'Make Model' from a file's EXIF ('' when absent or unreadable), read from the header alone (no decode).
    The model usually repeats the make ('Canon', 'Canon EOS 5D'): then the model alone."""
    _register_formats()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                exif = image.getexif()
                make, model = (_plain(exif.get(tag)) for tag in CAMERA_TAGS)
    except Exception:  # an unreadable header: the camera is unknown, the image may still be fine
        return ""
    if make and model.lower().startswith(make.lower()):
        make = ""
    return " ".join(p for p in (make, model) if p)[:64]


def inspect_image(path: Path, max_pixels: int) -> ImageInfo:
    """Decode the whole file once (a JPEG at 1/8 scale: the whole stream is still read, so a
    truncated file is still caught); raise UnusableImage with a reason if it can't be used.
    Width and height are the stored ones, swapped when EXIF says the photo is turned.
    validate itself decodes in pixels.store, keeping the model inputs of that decode."""
    image, stored = _open(path, max_pixels, min_side=1)
    return describe(image, stored)[0]


def to_8bit(image: Image.Image) -> Image.Image:
    """Deeper-than-8-bit greyscale scaled by its bit depth, never by the image's own min..max
    (a flat 16-bit image stays flat, a narrow range is not blown up to 0..255).
    16-bit modes ("I;16*", and "I", which Pillow uses for 16-bit data) map 0..65535 to 0..255;
    float ("F") is taken as 0..1. Values outside the range are clipped."""
    if image.mode.startswith("I;16") or image.mode == "I":
        scale = 255.0 / 65535.0
    elif image.mode == "F":
        scale = 255.0
    else:
        return image
    array = np.asarray(image, dtype=np.float64) * scale
    return Image.fromarray(np.clip(array.round(), 0, 255).astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: deeper images scaled by bit depth, transparency (alpha channel,
    palette or PNG tRNS colour on L/RGB) flattened on BACKGROUND."""
    image = to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_rgb(source: Path | bytes, max_pixels: int = 40_000_000, min_side: int | None = None) -> Image.Image:
    """The pixels every stage and the model see: EXIF-oriented 8-bit RGB (from a file or bytes).
    `min_side`: a large JPEG is decoded smaller in the DCT, its shorter side still >= min_side."""
    image, _ = _open(source, max_pixels, min_side)
    return to_rgb(ImageOps.exif_transpose(image))


# The input every stage and serving make, described for an app in export/metadata.json.
# Decode: a JPEG at least 2x the model size is decoded smaller inside libjpeg (`dct_scale`: 8x8
# DCT blocks become 1, 2 or 4 pixels), as a phone app decodes a large photo anyway (Android
# BitmapFactory inSampleSize, tf.io.decode_jpeg(ratio=...)); bit-identical to
# `tf.io.decode_jpeg(ratio=s, dct_method="INTEGER_ACCURATE")`, and 2-3x faster than a full decode
# of 12 MP (the whole stream is still read: truncation is still caught), with everything after it
# on 1/64 of the pixels. Then the resize: bilinear with antialiasing (a triangle filter with half-pixel centres, widened by the scale factor when
# shrinking, so a 12 MP photo is area-averaged, not sampled), computed in float per channel,
# then rounded. PIL's own 8-bit BILINEAR works in fixed point (off by 1 grey level from any float
# implementation, enough to move probabilities by 0.02); in float it matches
# `tf.image.resize(x, (s, s), method="bilinear", antialias=True)` within 0.005 grey levels, so
# after rounding the two differ only where a value sits on a .5 tie. Plain bilinear without
# antialiasing (Android's createScaledBitmap, OpenCV INTER_LINEAR) is far off when shrinking.
RESIZE_CONTRACT = {
    "decode": "JPEG (incl. MPO) at DCT scale 1/s, s the largest of 8, 4, 2 with shorter_side // s >= size "
              "(libjpeg scale_denom, accurate integer IDCT, fancy chroma upsampling); otherwise, and other "
              "formats, at full size",
    "decode_reference": 'tf.io.decode_jpeg(data, channels=3, ratio=s, dct_method="INTEGER_ACCURATE")',
    "method": "bilinear", "antialias": True, "half_pixel_centers": True,
    "aspect": "whole image squashed to size x size, no crop, no padding",
    "applied_to": "the EXIF-oriented 8-bit RGB image (transparency on white, 16-bit scaled by bit depth)",
    "precision": "float32, each channel",
    "rounding": "to the nearest integer 0..255 (ties to even) after resizing",
    "reference": 'numpy.round(tf.image.resize(image, (size, size), method="bilinear", antialias=True))',
    "max_pixel_difference": 1,  # only on .5 ties
}


def float_bands(image: Image.Image) -> list[Image.Image]:
    return [band.convert("F") for band in image.split()]


def resize_rgb(image: Image.Image | list, size: int) -> np.ndarray:
    """uint8 (size, size, 3) as RESIZE_CONTRACT says (from an RGB image or its float_bands)."""
    bands = float_bands(image) if isinstance(image, Image.Image) else image
    out = [np.asarray(band.resize((size, size), Image.Resampling.BILINEAR)) for band in bands]
    return np.clip(np.round(np.stack(out, axis=-1)), 0, 255).astype(np.uint8)


def model_input(source: Path | bytes, size: int) -> np.ndarray:
    """One image as the model takes it: RGB, 0..255, resized as RESIZE_CONTRACT says."""
    return model_input_and_image(source, size)[0]


def model_input_and_image(source: Path | bytes, size: int, max_pixels: int = 40_000_000) -> tuple[np.ndarray, Image.Image]:
    """The model input and the decoded RGB image it was made from (a large JPEG at its DCT scale), from one decode."""
    rgb = load_rgb(source, max_pixels, min_side=size)
    return resize_rgb(rgb, size), rgb


def save_png(image: Image.Image, target) -> None:
    """An image's pixels as PNG and nothing else: no EXIF, XMP, text, ICC profile or date (Pillow copies
    some of them from `image.info` when asked, and 11.0 wrote XMP unasked)."""
    Image.fromarray(np.asarray(image)).save(target, format="PNG", compress_level=1)
