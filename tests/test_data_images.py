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


def _stored_rgb(data, name):
    checked = image_checks.check_image_bytes(data, name)
    return np.asarray(_decode(checked).convert("RGB")).astype(np.int64), checked


GRAY = np.arange(48, dtype=np.int64).reshape(6, 8) * 5  # 0..235


def _gray3(values):
    return np.repeat(np.asarray(values, np.int64)[..., None], 3, axis=-1)


def _reference_cases():
    """(name, encoded file, expected RGB pixels as numpy computes them from the documented rules)."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (6, 8, 3))
    alpha = rng.integers(0, 256, (6, 8))
    sixteen = rng.integers(0, 65536, (6, 8))
    cmyk = rng.integers(0, 256, (6, 8, 4))
    bits = rng.integers(0, 2, (6, 8)).astype(bool)
    palette = rng.integers(0, 256, (16, 3))
    indices = rng.integers(0, 16, (6, 8))
    palette_image = Image.fromarray(indices.astype(np.uint8), "P")
    palette_image.putpalette(palette.astype(np.uint8).ravel().tolist())
    transparent = palette_image.copy()
    transparent.info["transparency"] = 3
    return [
        ("1", _encode(Image.fromarray(bits), "PNG"), _gray3(bits * 255)),
        ("L", _encode(Image.fromarray(GRAY.astype(np.uint8)), "PNG"), _gray3(GRAY)),
        ("LA", _encode(Image.fromarray(np.stack([GRAY, alpha], -1).astype(np.uint8), "LA"), "PNG"), _gray3(GRAY)),
        ("P", _encode(palette_image, "PNG"), palette[indices]),
        ("P+transparency", _encode(transparent, "PNG", transparency=3), palette[indices]),
        ("RGB", _encode(Image.fromarray(rgb.astype(np.uint8)), "PNG"), rgb),
        ("RGBA", _encode(Image.fromarray(np.concatenate([rgb, alpha[..., None]], -1).astype(np.uint8)), "PNG"), rgb),
        ("CMYK", _encode(Image.fromarray(cmyk.astype(np.uint8), "CMYK"), "TIFF"),
         np.round((255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255.0).astype(np.int64)),
        ("I;16", _encode(Image.fromarray(sixteen.astype(np.uint16)), "PNG"),
         _gray3(np.round(sixteen * 255 / 65535.0))),
        ("I", _encode(Image.fromarray(sixteen.astype(np.int32), "I"), "TIFF"), _gray3(np.round(sixteen * 255 / 65535.0))),
    ]


@pytest.mark.parametrize("case", _reference_cases(), ids=lambda case: case[0])
def test_every_accepted_mode_matches_its_numpy_reference(case):
    name, data, expected = case
    stored, checked = _stored_rgb(data, f"{name}.img")
    assert stored.shape == expected.shape
    # CMYK goes through Pillow's integer arithmetic: one level of rounding either way.
    np.testing.assert_allclose(stored, expected, atol=1 if name == "CMYK" else 0)


def test_sixteen_bit_grayscale_is_scaled_not_clipped_to_white():
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024)
    stored, checked = _stored_rgb(_encode(Image.fromarray(ramp), "PNG"), "depth.png")
    assert stored.max() < 255 and stored.min() == 0 and len(np.unique(stored)) == 64
    assert "16-bit grayscale (mode I;16) scaled to 8 bits" in checked.notes[0][1]


@pytest.mark.parametrize("mode, values", [("F", np.full((4, 4), 0.5, np.float32)),
                                          ("I", np.full((4, 4), 70000, np.int32))])
def test_images_without_a_defined_8_bit_range_are_refused(mode, values):
    with pytest.raises(image_checks.ImageError, match="no defined 8-bit range") as error:
        image_checks.check_image_bytes(_encode(Image.fromarray(values, mode), "TIFF"), "odd.tif")
    assert "odd.tif" in str(error.value)


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


def _jpeg(progressive=False, seed=0):
    return _encode(Image.fromarray(_pixels(64, 48, seed)), "JPEG", quality=90, progressive=progressive)


def _cut_with_end_marker(data, fraction=0.6):
    """A JPEG cut inside its scan data and closed with an end-of-image marker: it decodes, grey below."""
    return data[: int(len(data) * fraction)] + b"\xff\xd9"


@pytest.mark.parametrize("progressive", [False, True])
def test_complete_jpegs_pass_the_scan_check(progressive):
    data = _jpeg(progressive)
    assert image_checks.check_jpeg_scans(data)[0] is None
    assert image_checks.check_image_bytes(data, "ok.jpg").encoded is data


@pytest.mark.parametrize("progressive", [False, True])
def test_every_cut_inside_the_scan_data_is_found(progressive):
    data = _jpeg(progressive, seed=7)
    end = len(data) - 2  # the encoder's own end-of-image marker
    for cut in np.linspace(0.2 * len(data), end - 1, 25).astype(int):
        damaged = data[:cut] + b"\xff\xd9"
        # Cut inside scan data: "incomplete JPEG"; inside a table between scans: "cannot be decoded".
        with pytest.raises(image_checks.ImageError, match="incomplete JPEG|cannot be decoded"):
            image_checks.check_image_bytes(damaged, f"cut at byte {cut} of {len(data)}")


@pytest.mark.parametrize("progressive, fraction", [(False, 0.6), (False, 0.995), (True, 0.3), (True, 0.97)])
def test_a_scan_that_ends_early_is_refused_or_kept_with_a_warning(progressive, fraction):
    data = _cut_with_end_marker(_jpeg(progressive), fraction)
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # Pillow itself decodes it silently
    assert decoded.shape == (48, 64, 3)
    with pytest.raises(image_checks.ImageError, match="incomplete JPEG") as error:
        image_checks.check_image_bytes(data, "cut.jpg")
    assert "cut.jpg" in str(error.value) and "--keep_incomplete_images" in str(error.value)
    kept = image_checks.check_image_bytes(data, "cut.jpg", keep_incomplete=True)
    assert kept.notes[0][0] == "image/incomplete" and "early" in kept.notes[0][1]


def test_bytes_after_the_end_marker_and_restart_markers_are_fine():
    with_restarts = _encode(Image.fromarray(_pixels(64, 48)), "JPEG", quality=90, restart_marker_blocks=2)
    assert b"\xff\xd0" in with_restarts
    assert image_checks.check_jpeg_scans(with_restarts) == (None, True)
    assert image_checks.check_jpeg_scans(_jpeg() + b"trailing bytes") == (None, True)
