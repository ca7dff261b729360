"""Reads an image file, checks that it decodes, and decides whether its bytes can be stored as they are.

Stored as the original bytes: JPEG and PNG files whose pixels are RGB or grayscale (TensorFlow's
decoders read them and give 3 channels). Everything else is decoded, converted to RGB and re-encoded:
CMYK/YCCK JPEGs and JPEGs whose EXIF orientation is applied (as JPEG, quality 95), palette,
alpha and 16-bit PNGs and any other format Pillow reads (as PNG, lossless).

Conversions to RGB, per Pillow mode: ``1`` (0 -> 0, 1 -> 255), ``L``, ``LA`` and ``PA``/``P`` (the
palette colour; alpha dropped, as TensorFlow's 3-channel decoders drop it), ``RGBA``/``RGBX`` (alpha
dropped), ``CMYK`` ((255 - C) * (255 - K) / 255, likewise for M and Y), ``YCbCr`` (JPEG's
conversion), and 16-bit grayscale (``I;16``, ``I;16B``, ``I;16L``, and ``I`` with values in
0..65535) scaled to 8 bits as ``round(v * 255 / 65535)``: converting it as Pillow does would clip
every value above 255 to white. Floating-point (``F``) and 32-bit integer images beyond 16 bits
have no defined 8-bit range and are refused with a message.

EXIF orientation rule (boxes follow the image as the annotator saw it). TensorFlow's decoders
ignore the EXIF orientation tag, so the stored pixels must already be in the orientation the
boxes refer to. Which orientation the annotator saw is decided by the annotation's own <size>:
- if <size> equals the stored pixel size and the tag swaps width and height (orientations 5-8),
  the annotation tool showed the raw pixels (labelImg does: Qt does not auto-rotate), so the
  original bytes are kept and the tag is ignored;
- otherwise (the size matches the rotated image, is missing or wrong, or the tag does not swap
  the dimensions so the size cannot tell) the annotator is taken to have seen the image as
  EXIF-aware viewers, phones, browsers and most annotation tools (CVAT, LabelMe) display it:
  the orientation is applied to the pixels and the image is re-encoded without the tag.
"""

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, not decode to grey

EXIF_ORIENTATION_TAG = 0x0112
ORIENTATIONS_SWAPPING_AXES = (5, 6, 7, 8)
STORED_FORMATS = ("JPEG", "PNG")
STORED_MODES = ("RGB", "L")
JPEG_QUALITY = 95
SIXTEEN_BIT_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
REFUSED_MODES = ("F",)


class ImageError(ValueError):
    """The image cannot be used (missing, unreadable, truncated, not an image)."""


@dataclasses.dataclass
class CheckedImage:
    encoded: bytes
    format: str  # 'JPEG' or 'PNG', the format of `encoded`
    width: int
    height: int
    notes: list  # (field, message) pairs describing fixes applied to the image


def _orientation(image):
    try:
        value = image.getexif().get(EXIF_ORIENTATION_TAG)
    except Exception:  # a broken EXIF block is not a reason to lose the image
        return None
    return value if value in range(2, 9) else None


def _annotator_saw_raw_pixels(orientation, raw_size, annotated_size):
    return orientation in ORIENTATIONS_SWAPPING_AXES and annotated_size == raw_size and raw_size[0] != raw_size[1]


def _decode_fully(image, path):
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageError(f"{path}: image data cannot be decoded ({err})") from None


def _verify_stored(image, path):
    """Decodes the whole compressed stream; JPEG at 1/8 scale, which still reads every byte."""
    if image.format == "JPEG":
        image.draft(None, (max(1, image.width // 8), max(1, image.height // 8)))
    _decode_fully(image, path)


def _sixteen_bit_gray_to_8_bit(image, path):
    values = np.asarray(image).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ImageError(f"{path}: mode {image.mode} pixels outside 0..65535 (from {values.min()} to "
                         f"{values.max()}) have no defined 8-bit range; save the image with 8 or 16 bits per channel")
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L")


def _encode(image, fmt):
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()


def check_image_bytes(data, path, annotated_size=None):
    """Checks image bytes read from `path`; `annotated_size` is the annotation's (width, height) or None."""
    if not data:
        raise ImageError(f"{path}: file is empty")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about palette transparency; we convert anyway
        try:
            image = Image.open(io.BytesIO(data))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
            raise ImageError(f"{path}: not a readable image ({err})") from None
        fmt = image.format
        raw_size = image.size
        if image.mode in REFUSED_MODES:
            raise ImageError(f"{path}: floating-point pixels (mode {image.mode}) have no defined 8-bit range; "
                             "save the image with 8 or 16 bits per channel")
        orientation = _orientation(image)
        notes = []
        reasons = []
        if fmt not in STORED_FORMATS:
            reasons.append(f"format {fmt} is not JPEG or PNG")
        if image.mode in SIXTEEN_BIT_GRAY_MODES:
            reasons.append(f"16-bit grayscale (mode {image.mode}) scaled to 8 bits and converted to RGB")
        elif image.mode not in STORED_MODES:
            reasons.append(f"mode {image.mode} converted to RGB")
        apply_orientation = False
        if orientation is not None:
            if _annotator_saw_raw_pixels(orientation, raw_size, annotated_size):
                notes.append(
                    ("exif/orientation", f"orientation {orientation} ignored: annotation size {annotated_size} "
                     "matches the stored pixels, so the annotator saw them unrotated")
                )
            else:
                apply_orientation = True
                reasons.append(f"EXIF orientation {orientation} applied to the pixels")
        if not reasons:
            _verify_stored(image, path)
            return CheckedImage(data, fmt, raw_size[0], raw_size[1], notes)
        _decode_fully(image, path)
        if apply_orientation:
            image = ImageOps.exif_transpose(image)
        if image.mode in SIXTEEN_BIT_GRAY_MODES:
            image = _sixteen_bit_gray_to_8_bit(image, path)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA").convert("RGB")  # alpha dropped, as TensorFlow's decoders do with 3 channels
        elif image.mode != "RGB":
            image = image.convert("RGB")
        out_format = "JPEG" if fmt == "JPEG" else "PNG"
        notes.append(("image", f"re-encoded as {out_format}: " + "; ".join(reasons)))
        return CheckedImage(_encode(image, out_format), out_format, image.width, image.height, notes)


def read_and_check_image(path, annotated_size=None):
    """Reads and checks an image file; raises ImageError if it is missing, unreadable or truncated."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ImageError(f"{path}: cannot read file ({err.strerror or err})") from None
    return check_image_bytes(data, path, annotated_size)
