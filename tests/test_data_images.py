"""Image checks: which bytes are stored as they are, what is converted, what is refused."""

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from datasets import image_checks


def _pixels(width, height, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _jpeg_with_orientation(width, height, orientation):
    exif = Image.Exif()
    exif[image_checks.EXIF_ORIENTATION_TAG] = orientation
    # A left half black, right half white image shows which way it was turned.
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, width // 2:] = 255
    return _encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())


def _decode(checked):
    image = Image.open(io.BytesIO(checked.encoded))
    assert image.format == checked.format
    assert image.size == (checked.width, checked.height)
    return image


def test_rgb_jpeg_is_stored_as_its_original_bytes():
    data = _encode(Image.fromarray(_pixels(30, 20)), "JPEG")
    checked = image_checks.check_image_bytes(data, "a.jpg", (30, 20))
    assert checked.encoded is data and (checked.format, checked.width, checked.height, checked.notes) == ("JPEG", 30, 20, [])


def test_grayscale_jpeg_and_png_keep_their_bytes_the_reader_decodes_them_to_rgb():
    gray = Image.fromarray(_pixels(16, 12)[..., 0])
    for fmt in ("JPEG", "PNG"):
        data = _encode(gray, fmt)
        checked = image_checks.check_image_bytes(data, f"g.{fmt}")
        assert checked.encoded is data and checked.format == fmt


def test_cmyk_jpeg_is_converted_to_rgb_jpeg():
    data = _encode(Image.fromarray(_pixels(24, 16)).convert("CMYK"), "JPEG", quality=95)
    checked = image_checks.check_image_bytes(data, "cmyk.jpg")
    image = _decode(checked)
    assert checked.format == "JPEG" and image.mode == "RGB"
    assert "mode CMYK converted to RGB" in checked.notes[0][1]


def test_palette_png_is_converted_to_lossless_rgb_png():
    palette_image = Image.fromarray(_pixels(20, 10)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    data = _encode(palette_image, "PNG")
    checked = image_checks.check_image_bytes(data, "p.png")
    image = _decode(checked)
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), np.asarray(palette_image.convert("RGB")))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "I;16"])
def test_alpha_and_16_bit_pngs_are_converted_to_rgb(mode):
    source = Image.fromarray(_pixels(8, 6)).convert("RGBA")
    if mode == "LA":
        source = source.convert("LA")
    elif mode == "I;16":
        source = Image.fromarray((np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000))
    checked = image_checks.check_image_bytes(_encode(source, "PNG"), f"{mode}.png")
    assert _decode(checked).mode == "RGB" and checked.format == "PNG"


def test_other_formats_are_re_encoded_as_png():
    pixels = _pixels(12, 9)
    checked = image_checks.check_image_bytes(_encode(Image.fromarray(pixels), "BMP"), "a.bmp")
    assert checked.format == "PNG"
    np.testing.assert_array_equal(np.asarray(_decode(checked)), pixels)


def test_exif_rotation_is_applied_when_the_annotation_size_is_the_rotated_one():
    data = _jpeg_with_orientation(40, 20, orientation=6)  # stored 40x20, displayed 20x40
    checked = image_checks.check_image_bytes(data, "r.jpg", annotated_size=(20, 40))
    image = _decode(checked)
    assert (checked.width, checked.height) == (20, 40)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert np.abs(np.asarray(image, np.float32) - np.asarray(expected, np.float32)).mean() < 3
    assert image.getexif().get(image_checks.EXIF_ORIENTATION_TAG) is None


def test_exif_rotation_is_ignored_when_the_annotation_size_is_the_stored_one():
    data = _jpeg_with_orientation(40, 20, orientation=6)
    checked = image_checks.check_image_bytes(data, "r.jpg", annotated_size=(40, 20))
    assert checked.encoded is data and (checked.width, checked.height) == (40, 20)
    assert checked.notes[0][0] == "exif/orientation" and "ignored" in checked.notes[0][1]


@pytest.mark.parametrize("orientation, annotated_size", [(6, None), (3, (40, 20)), (8, (33, 33))])
def test_exif_rotation_is_applied_when_the_size_cannot_tell(orientation, annotated_size):
    data = _jpeg_with_orientation(40, 20, orientation)
    checked = image_checks.check_image_bytes(data, "r.jpg", annotated_size)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert (checked.width, checked.height) == expected.size
    assert np.abs(np.asarray(_decode(checked), np.float32) - np.asarray(expected, np.float32)).mean() < 3


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_images_are_refused(fmt):
    data = _encode(Image.fromarray(_pixels(64, 48)), fmt)
    with pytest.raises(image_checks.ImageError, match="cannot be decoded") as err:
        image_checks.check_image_bytes(data[: len(data) // 2], f"t.{fmt}")
    assert f"t.{fmt}" in str(err.value)


def test_empty_missing_and_non_image_files_are_refused(tmp_path):
    with pytest.raises(image_checks.ImageError, match="empty"):
        image_checks.check_image_bytes(b"", "e.jpg")
    with pytest.raises(image_checks.ImageError, match="not a readable image"):
        image_checks.check_image_bytes(b"this is text, not pixels", "t.jpg")
    with pytest.raises(image_checks.ImageError, match="cannot read file"):
        image_checks.read_and_check_image(str(tmp_path / "missing.jpg"))
