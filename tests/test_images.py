import numpy as np
import pytest
from PIL import Image

from pipeline.images import UnusableImage, inspect_image, load_rgb
from tests.conftest import noise_image

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


def test_transparent_pixels_are_flattened_on_white(tmp_path):
    Image.new("RGBA", (80, 80), (10, 20, 30, 0)).save(tmp_path / "a.png")
    assert np.asarray(load_rgb(tmp_path / "a.png"))[0, 0].tolist() == [255, 255, 255]


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
