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

Incomplete JPEG scans: a file cut short and closed with an end-of-image marker (or with such a
marker in the middle of its scan) decodes without an error: libjpeg fills the missing blocks with
grey and only warns, and neither Pillow nor TensorFlow report that warning. So the bytes before
the end-of-image marker are decoded twice, followed by two different random paddings: a complete
scan never reads past its last block, and both decodes are identical; an incomplete one decodes
the padding as image data, and they differ. A progressive JPEG must also have a complete scan script
(every coefficient of every component refined to full precision). An incomplete image is skipped,
or kept with a warning (``keep_incomplete=True``).
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


_SEQUENTIAL_SOF = (0xC0, 0xC1)
_PROGRESSIVE_SOF = (0xC2,)
_STANDALONE_MARKERS = {0x01, 0xD8} | set(range(0xD0, 0xD8))


def _jpeg_structure(data):
    """(end-of-image offset or None, frame marker, components, [(component ids, Ss, Se, Ah, Al)] per scan)
    of a JPEG's marker stream; raises ValueError if the markers cannot be followed."""
    position, frame, components, scans = 2, None, 0, []
    while position + 2 <= len(data):
        if data[position] != 0xFF:
            raise ValueError(f"no marker at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xD9:
            return position, frame, components, scans
        if marker in _STANDALONE_MARKERS:
            position += 2
            continue
        if position + 4 > len(data):
            break
        length = int.from_bytes(data[position + 2:position + 4], "big")
        segment = data[position + 4:position + 2 + length]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            frame, components = marker, segment[5] if len(segment) > 5 else 0
        position += 2 + length
        if marker == 0xDA:
            count = segment[0]
            ids = tuple(segment[1 + 2 * i] for i in range(count))
            spectral = segment[1 + 2 * count:4 + 2 * count]
            if len(spectral) == 3:
                scans.append((ids, spectral[0], spectral[1], spectral[2] >> 4, spectral[2] & 0x0F))
            # Entropy-coded data runs to the next marker that is neither a stuffed 0xFF00 nor a restart.
            while True:
                position = data.find(b"\xff", position)
                if position < 0 or position + 1 >= len(data):
                    return None, frame, components, scans
                following = data[position + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:
                    position += 2
                    continue
                break
    return None, frame, components, scans


def _progressive_scans_complete(components, scans):
    """Whether the scans refine every coefficient (0..63) of every component down to Al = 0."""
    finished = {}
    for ids, start, end, _, low_bit in scans:
        if low_bit == 0:
            for component in ids:
                finished.setdefault(component, set()).update(range(start, end + 1))
    return len(finished) == components and all(coefficients == set(range(64)) for coefficients in finished.values())


# Decoded after the bytes before the end-of-image marker: a complete scan never reads them. Random
# bytes (no 0xFF, which would start a marker) decode as image data where a scan is cut; a constant
# padding can decode exactly like libjpeg's grey fill (zeros do), hiding the cut.
_PADDINGS = tuple(bytes(np.random.default_rng(seed).integers(0, 255, 256, dtype=np.uint8)) for seed in (1, 2))


def _decode_padded(data, end, padding):
    # At full scale: a reduced-size (DC-only) decode can miss a difference confined to one block's AC terms.
    image = Image.open(io.BytesIO(data[:end] + padding + b"\xff\xd9"))
    image.load()
    return image.tobytes()


def check_jpeg_scans(data):
    """``(why the JPEG's scan data is incomplete or None, whether its whole scan was decoded here)``;
    see the module docstring."""
    try:
        end, frame, components, scans = _jpeg_structure(data)
    except (ValueError, IndexError):
        return None, False  # markers Pillow itself will judge
    if end is None or frame not in _SEQUENTIAL_SOF + _PROGRESSIVE_SOF:
        return None, False  # no end-of-image marker (a cut file: the full decode refuses it), or a rare coding
    if frame in _PROGRESSIVE_SOF and not _progressive_scans_complete(components, scans):
        return f"its progressive scans end early (end-of-image marker at byte {end} of {len(data)})", False
    try:
        complete = _decode_padded(data, end, _PADDINGS[0]) == _decode_padded(data, end, _PADDINGS[1])
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        complete = False
    if not complete:
        return (f"its scan data ends early (end-of-image marker at byte {end} of {len(data)}); "
                "the rest would be grey"), False
    return None, True


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


def check_image_bytes(data, path, annotated_size=None, keep_incomplete=False):
    """Checks image bytes read from `path`; `annotated_size` is the annotation's (width, height) or None.
    An incomplete JPEG is refused, or kept with a note in ``image/incomplete`` with ``keep_incomplete``."""
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
        scan_decoded = False
        if fmt == "JPEG":
            incomplete, scan_decoded = check_jpeg_scans(data)
            if incomplete and not keep_incomplete:
                raise ImageError(f"{path}: incomplete JPEG: {incomplete} (re-export the image, or convert with "
                                 "--keep_incomplete_images to keep it as decoded)")
            if incomplete:
                notes.append(("image/incomplete", f"incomplete JPEG kept as decoded: {incomplete}"))
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
            if not scan_decoded:
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


def read_and_check_image(path, annotated_size=None, keep_incomplete=False):
    """Reads and checks an image file; raises ImageError if it is missing, unreadable or truncated."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ImageError(f"{path}: cannot read file ({err.strerror or err})") from None
    return check_image_bytes(data, path, annotated_size, keep_incomplete)
