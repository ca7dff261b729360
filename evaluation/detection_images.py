"""Pictures of the detector getting better: detections beside ground truth, as the TF Object Detection API
shows them in TensorBoard (its side-by-side evaluation images).

Host-side (numpy and Pillow, no graph ops): the evaluator and the in-run validation hand in the
original images with what the detector found and the annotations, and write the result with
``FileWriter.add_summary(image_summary(tag, comparison_images(...)), step)``.

Drawing is :func:`preprocessing.visualization.draw_labelled_box`, the same as the training-image
summaries: a class has the same colour (:func:`preprocessing.visualization.class_colour`) in both
panels, in every call and in the training images; a box partly outside the image is clipped and drawn
along its border, one wholly outside is left out; box tags and captions stay inside the image.

Small images are enlarged rather than drawn over with unreadable text: a panel whose shorter side is
below :data:`MIN_PANEL_SIDE` pixels is scaled up by the smallest whole factor that reaches it (at
most :data:`MAX_SCALE`, nearest neighbour, so each original pixel becomes a ``scale x scale`` block and
the boxes are scaled with it); the font grows with the panel (10 px at least). A 64x64 image becomes a
128x128 panel; VOC and BCCD images (375 px and more) are drawn at their own size.
"""

import io

import numpy as np
from PIL import Image, ImageDraw

from preprocessing.visualization import class_colour, class_name, draw_labelled_box, label_font
from tf_compat import tf1

MIN_PANEL_SIDE = 128
MAX_SCALE = 16
GAP = 8  # pixels between the two panels
GAP_COLOUR = (255, 255, 255)
CAPTION_OPACITY = 0.6  # the caption strip darkens the image under it by this much
GROUND_TRUTH_CAPTION = "ground truth"


def detections_caption(score_threshold):
    return f"detections (score >= {score_threshold:g})"


def panel_scale(height, width):
    """The whole factor a ``height x width`` image is enlarged by in a panel (1 unless it is small)."""
    side = max(1, min(int(height), int(width)))
    if side >= MIN_PANEL_SIDE:
        return 1
    return min(MAX_SCALE, -(-MIN_PANEL_SIDE // side))


def _rgb(image):
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (original pixels), not {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"an image must be [H, W, 3] (or [H, W], [H, W, 1], [H, W, 4]), not {image.shape}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[:, :, :3]


def _boxes(values):
    return np.asarray(values if values is not None else [], np.float64).reshape(-1, 4)


def _flat(values, dtype):
    return np.asarray(values if values is not None else [], dtype).reshape(-1)


def _canvas(image, scale):
    canvas = Image.fromarray(np.ascontiguousarray(image))
    if scale > 1:
        canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST)
    return canvas


def _draw_boxes(canvas, scale, rows):
    """Draws ``(box, label, text, dashed)`` rows (boxes in original pixels) on the PIL ``canvas``."""
    draw = ImageDraw.Draw(canvas)
    font = label_font(canvas.height)
    line_width = max(2, round(min(canvas.size) / 200))
    for (ymin, xmin, ymax, xmax), label, text, dashed in rows:
        corners = (xmin * scale, ymin * scale, xmax * scale, ymax * scale)
        draw_labelled_box(draw, canvas.size, corners, class_colour(label), text, font, line_width, dashed)


def _caption(canvas, text):
    """A dark strip along the bottom of the PIL ``canvas`` with ``text`` in white (cut at the right edge)."""
    font = label_font(canvas.height)
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    strip_height = min(bottom - top + 4, canvas.height)
    pixels = np.asarray(canvas).copy()
    strip = pixels[-strip_height:].astype(np.float32) * (1.0 - CAPTION_OPACITY)
    pixels[-strip_height:] = np.round(strip).astype(np.uint8)
    canvas.paste(Image.fromarray(pixels))
    draw.text((2 - left, canvas.height - strip_height + 2 - top), text, fill=(255, 255, 255), font=font)


def detection_rows(detections, labels, score_threshold=0.5):
    """The detections to draw as ``(box, class, "name: score", dashed=False)`` rows, lowest score first
    (so the best is drawn on top): rows past ``num_detections``, with class 0 or a score below
    ``score_threshold`` are left out."""
    boxes = _boxes(detections.get("boxes"))
    scores = _flat(detections.get("scores"), np.float64)
    classes = _flat(detections.get("classes"), np.float64).astype(np.int64)
    count = min(len(boxes), len(scores), len(classes))
    if detections.get("num_detections") is not None:
        count = min(count, int(np.asarray(detections["num_detections"]).reshape(-1)[0]))
    keep = [k for k in range(count) if classes[k] > 0 and scores[k] >= score_threshold]
    keep.sort(key=lambda k: scores[k])
    return [(boxes[k], classes[k], f"{class_name(labels, classes[k])}: {scores[k]:.2f}", False) for k in keep]


def ground_truth_rows(ground_truth, labels):
    """The ground-truth boxes to draw as ``(box, class, name, dashed)`` rows: label 0 (padding) left out,
    difficult boxes dashed and named ``"name (difficult)"``."""
    boxes = _boxes(ground_truth.get("boxes"))
    classes = _flat(ground_truth.get("labels"), np.float64).astype(np.int64)
    difficult = _flat(ground_truth.get("difficult"), bool)
    if not len(difficult):
        difficult = np.zeros(len(classes), bool)
    rows = []
    for box, label, hard in zip(boxes, classes, difficult):
        if label > 0:
            name = class_name(labels, label)
            rows.append((box, label, f"{name} (difficult)" if hard else name, bool(hard)))
    return rows


def detections_panel(image, detections, labels, score_threshold=0.5, caption=True):
    """One image with its detections drawn (see :func:`comparison_images`), uint8 ``[s*H, s*W, 3]``."""
    image = _rgb(image)
    scale = panel_scale(*image.shape[:2])
    canvas = _canvas(image, scale)
    _draw_boxes(canvas, scale, detection_rows(detections, labels, score_threshold))
    if caption:
        _caption(canvas, detections_caption(score_threshold))
    return np.asarray(canvas)


def ground_truth_panel(image, ground_truth, labels, caption=True):
    """One image with its ground-truth boxes drawn (see :func:`comparison_images`), uint8 ``[s*H, s*W, 3]``."""
    image = _rgb(image)
    scale = panel_scale(*image.shape[:2])
    canvas = _canvas(image, scale)
    _draw_boxes(canvas, scale, ground_truth_rows(ground_truth, labels))
    if caption:
        _caption(canvas, GROUND_TRUTH_CAPTION)
    return np.asarray(canvas)


def comparison_images(images, detections, ground_truth, labels, score_threshold=0.5, max_images=None):
    """Each image with its detections (left) beside the same image with its ground truth (right).

    Args:
      images: uint8 ``[H, W, 3]`` arrays, the original pixels (sizes may differ between images).
      detections: per image a dict: ``boxes`` ``[K, 4]`` float ``(ymin, xmin, ymax, xmax)`` in original
        pixels, ``scores`` ``[K]``, ``classes`` ``[K]`` int, optional ``num_detections``. Rows with class 0
        or past ``num_detections`` are padding and not drawn; neither are scores below ``score_threshold``.
      ground_truth: per image a dict: ``boxes`` ``[N, 4]`` (the same convention), ``labels`` ``[N]`` int
        (0 is padding), optional ``difficult`` ``[N]`` bool.
      labels: ``{label id: name}``; an id missing from it is shown as the number.
      score_threshold: the least score of a detection that is drawn.
      max_images: at most this many pictures (the first ones); None for all.

    Returns:
      A list of uint8 arrays ``[s*H, 2*s*W + GAP, 3]``: ``s`` is 1 unless the image is small (its shorter
      side below :data:`MIN_PANEL_SIDE`, see :func:`panel_scale`), ``GAP`` white columns between the
      panels. Detections are labelled ``"name: score"`` (two decimals), ground-truth boxes by name;
      difficult ground-truth boxes are drawn *dashed* and labelled ``"name (difficult)"``. Each box has
      its class's colour, the same in both panels and across calls. A dark caption strip over the
      bottom of each panel says ``"detections (score >= 0.5)"`` / ``"ground truth"``.
    """
    if not len(images) == len(detections) == len(ground_truth):
        raise ValueError(f"{len(images)} images, {len(detections)} detections and {len(ground_truth)} "
                         "ground truths: one of each per image")
    count = len(images) if max_images is None else min(len(images), max(0, int(max_images)))
    pictures = []
    for image, image_detections, image_ground_truth in zip(images[:count], detections[:count], ground_truth[:count]):
        left = detections_panel(image, image_detections, labels, score_threshold)
        right = ground_truth_panel(image, image_ground_truth, labels)
        gap = np.empty((left.shape[0], GAP, 3), np.uint8)
        gap[:] = GAP_COLOUR
        pictures.append(np.concatenate([left, gap, right], axis=1))
    return pictures


def encode_png(image):
    """PNG bytes of a uint8 ``[H, W, 3]`` (or ``[H, W]``) array."""
    stream = io.BytesIO()
    Image.fromarray(_rgb(image)).save(stream, format="PNG")
    return stream.getvalue()


def image_summary(tag, images):
    """A ``tf.compat.v1.Summary`` with one PNG image value per picture, tagged ``<tag>/0``, ``<tag>/1``, ...

    Write it with a FileWriter's ``add_summary(summary, step)``; TensorBoard's image dashboard shows the
    pictures of a tag with a step slider.
    """
    values = []
    for index, image in enumerate(images):
        image = _rgb(image)
        encoded = tf1.Summary.Image(height=image.shape[0], width=image.shape[1], colorspace=3,
                                    encoded_image_string=encode_png(image))
        values.append(tf1.Summary.Value(tag=f"{tag}/{index}", image=encoded))
    return tf1.Summary(value=values)
