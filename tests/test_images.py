import numpy as np
import pytest
from PIL import Image

from pipeline.images import BACKGROUND, UnusableImage, inspect_image, load_rgb
from tests.conftest import ROOT, noise_image

LIMIT = 40_000_000


def test_zero_byte_file(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(UnusableImage, match="empty file"):
        inspect_image(tmp_path / "a.png", LIMIT)


def test_non_image_with_image_extension(tmp_path):
    (tmp_path / "a.jpg").write_text("patient notes")
    with pytest.raises(UnusableImage, match="not a readable image"):
        inspect_image(tmp_path / "a.jpg", LIMIT)


def test_truncated_image(tmp_path):
    noise_image(1, (200, 200)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnusableImage, match="truncated or corrupt"):
        inspect_image(tmp_path / "cut.jpg", LIMIT)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    Image.new("L", (3000, 3000)).save(tmp_path / "bomb.png")
    with pytest.raises(UnusableImage, match="decompression bomb"):
        inspect_image(tmp_path / "bomb.png", max_pixels=1_000_000)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "LA"])
def test_odd_modes_become_rgb(tmp_path, mode):
    path = tmp_path / ("a.jpg" if mode == "CMYK" else "a.png")
    noise_image(2).convert(mode).save(path)
    assert inspect_image(path, LIMIT).mode == mode
    rgb = load_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == (96, 96)


def test_sixteen_bit_greyscale_is_rescaled_not_clipped(tmp_path):
    ramp = (np.linspace(0, 65535, 96 * 96).reshape(96, 96)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "a.png")
    array = np.asarray(load_rgb(tmp_path / "a.png"))
    assert array.min() == 0 and array.max() == 255  # clipping would give all-255


@pytest.mark.parametrize("suffix", ["png", "tif"])
@pytest.mark.parametrize("low, high", [(30000, 30000), (1000, 2000)])
def test_sixteen_bit_is_scaled_by_bit_depth_not_stretched(tmp_path, suffix, low, high):
    """A flat 16-bit image must not turn black; a narrow range must not be blown up to 0..255."""
    values = np.linspace(low, high, 96 * 96).reshape(96, 96).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / f"a.{suffix}")
    array = np.asarray(load_rgb(tmp_path / f"a.{suffix}")).astype(int)
    assert array.min() == round(low / 257) and array.max() == round(high / 257)


def test_transparent_pixels_are_flattened_on_white(tmp_path):
    Image.new("RGBA", (80, 80), (10, 20, 30, 0)).save(tmp_path / "a.png")
    assert np.asarray(load_rgb(tmp_path / "a.png"))[0, 0].tolist() == [255, 255, 255]
    assert BACKGROUND == (255, 255, 255)


@pytest.mark.parametrize("mode, key", [("L", 7), ("RGB", (1, 2, 3)), ("P", 0)])
def test_transparent_colour_is_flattened(tmp_path, mode, key):
    """PNG tRNS on L/RGB and a palette's transparent index are transparency too."""
    image = Image.new(mode, (80, 80), key)
    image.paste(200 if mode != "RGB" else (200, 90, 40), (0, 0, 40, 80))
    if mode == "P":
        image.putpalette([1, 2, 3] + [200, 90, 40] * 255)
    image.save(tmp_path / "a.png", transparency=key)
    pixels = np.asarray(load_rgb(tmp_path / "a.png"))
    assert pixels[10, 60].tolist() == list(BACKGROUND)
    assert pixels[10, 10].tolist() != list(BACKGROUND)


def colour_card() -> Image.Image:
    """Two flat colours side by side: survives any lossy codec within a few grey levels."""
    image = Image.new("RGB", (128, 96), (200, 40, 40))
    image.paste((30, 60, 220), (64, 0, 128, 96))
    return image


@pytest.mark.parametrize("fmt, suffix", [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"),
                                         ("TIFF", "tif"), ("BMP", "bmp"), ("HEIF", "heic")])
def test_every_phone_and_camera_format_is_read(tmp_path, fmt, suffix):
    path = tmp_path / f"a.{suffix}"
    colour_card().save(path, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP", "HEIF") else {}))
    assert inspect_image(path, LIMIT).format == fmt
    pixels = np.asarray(load_rgb(path)).astype(int)
    assert np.abs(pixels[48, 20] - [200, 40, 40]).max() <= 12
    assert np.abs(pixels[48, 100] - [30, 60, 220]).max() <= 12


def test_mpo_uses_the_primary_frame(tmp_path):
    """Phone JPEGs with a second frame (depth or gain map) open as MPO: the photo is frame 0."""
    second = Image.new("RGB", (64, 48), (0, 255, 0))
    colour_card().save(tmp_path / "a.jpg", format="MPO", save_all=True, append_images=[second], quality=95)
    info = inspect_image(tmp_path / "a.jpg", LIMIT)
    assert info.format == "MPO" and (info.width, info.height) == (128, 96)
    pixels = np.asarray(load_rgb(tmp_path / "a.jpg")).astype(int)
    assert np.abs(pixels[48, 20] - [200, 40, 40]).max() <= 12


def test_every_read_format_is_allowed_by_the_real_params():
    from pipeline.params import load_params
    allowed = load_params(ROOT / "params.yaml").validate.formats
    assert {"JPEG", "MPO", "HEIF", "PNG", "WEBP", "TIFF", "BMP"} <= set(allowed)


def test_unconvertible_colour_mode_is_a_reason_not_a_crash(tmp_path, monkeypatch):
    import pipeline.images as images

    def refuse(image):
        raise ValueError("conversion not supported")
    monkeypatch.setattr(images, "to_rgb", refuse)
    noise_image(3).convert("CMYK").save(tmp_path / "a.jpg")
    with pytest.raises(UnusableImage, match="colour mode CMYK"):
        inspect_image(tmp_path / "a.jpg", LIMIT)


def test_exif_rotation_is_applied(tmp_path):
    upright = Image.new("RGB", (120, 80), "white")
    upright.paste((255, 0, 0), (0, 0, 10, 10))  # red marker at the top-left of the upright photo
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "a.jpg", exif=exif, quality=100)
    info = inspect_image(tmp_path / "a.jpg", LIMIT)
    assert (info.width, info.height) == (120, 80)
    pixels = np.asarray(load_rgb(tmp_path / "a.jpg"))
    assert pixels[2, 2, 0] > 200 and pixels[2, 2, 1] < 80


@pytest.mark.parametrize("orientation", range(1, 9))
def test_inspected_size_is_the_oriented_size(tmp_path, orientation):
    """validate decodes JPEGs at reduced scale and reads the orientation from EXIF: its width and
    height must still be those of the image every stage sees."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    noise_image(5, (1600, 900)).save(tmp_path / "a.jpg", exif=exif, quality=90)
    info = inspect_image(tmp_path / "a.jpg", LIMIT)
    assert (info.width, info.height) == load_rgb(tmp_path / "a.jpg").size


def test_truncated_large_jpeg_is_caught_at_reduced_scale(tmp_path):
    noise_image(6, (3000, 2000)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 9 // 10])
    with pytest.raises(UnusableImage, match="truncated or corrupt"):
        inspect_image(tmp_path / "cut.jpg", LIMIT)


def test_reduced_decode_keeps_the_shorter_side_at_least_min_side(tmp_path):
    noise_image(7, (3000, 2000)).save(tmp_path / "a.jpg", quality=90)
    noise_image(7, (3000, 2000)).save(tmp_path / "a.png")
    small = load_rgb(tmp_path / "a.jpg", min_side=256)
    assert small.size == (750, 500)  # 1/4 scale in the DCT: 1/8 would leave 250 < 256
    assert load_rgb(tmp_path / "a.png", min_side=256).size == (3000, 2000)  # only JPEG has a DCT
    assert load_rgb(tmp_path / "a.jpg", min_side=250).size == (375, 250)  # 2000 // 8 = 250: 1/8 is enough
    assert load_rgb(tmp_path / "a.jpg", min_side=1001).size == (3000, 2000)  # 2000 // 2 < 1001: full size
    odd = noise_image(8, (4001, 3001))
    odd.save(tmp_path / "odd.jpg", quality=90)
    assert load_rgb(tmp_path / "odd.jpg", min_side=375).size == (501, 376)  # 3001 // 8 = 375: 1/8, sizes round up

