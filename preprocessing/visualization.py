"""TensorBoard images of what the towers are trained on: augmented images with their boxes and class names.

Built on the batched tensors the towers consume (no extra dequeue): the images are
mean-subtracted, so :func:`restore_means` turns them back into displayable uint8; the
boxes and names are drawn with Pillow inside ``tf.numpy_function``.
"""

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from preprocessing.ssd_vgg_preprocessing import RGB_MEANS
from tf_compat import tf1

# One colour per class id (cycled), bright enough to read on blood smears and VOC photos.
BOX_COLOURS = (
    (255, 56, 56), (72, 249, 10), (0, 194, 255), (255, 178, 29), (207, 210, 49), (146, 204, 23),
    (61, 219, 134), (26, 147, 52), (0, 212, 187), (44, 153, 168), (52, 69, 147), (100, 115, 255),
    (0, 24, 236), (132, 56, 255), (82, 0, 133), (203, 56, 255), (255, 149, 200), (255, 55, 199),
)


def restore_means(images, rgb_means=RGB_MEANS):
    """Inverse of mean subtraction for display: float ``[..., 3]`` -> uint8 RGB."""
    restored = tf.cast(images, tf.float32) + tf.constant(rgb_means, tf.float32)
    return tf.cast(tf.clip_by_value(tf.round(restored), 0.0, 255.0), tf.uint8)


def class_colour(label):
    """The stable colour of class ``label`` (an RGB tuple from :data:`BOX_COLOURS`, cycled)."""
    return BOX_COLOURS[int(label) % len(BOX_COLOURS)]


def class_name(labels_to_names, label):
    """The name of class ``label`` in ``labels_to_names`` (bytes decoded), else the id as text."""
    name = (labels_to_names or {}).get(int(label), str(int(label)))
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def label_font(image_height):
    """Pillow's default font at a size that grows with the image (10 px at least)."""
    try:
        return ImageFont.load_default(size=max(10, image_height // 30))
    except TypeError:  # Pillow < 10.1 has a fixed-size bitmap default font only
        return ImageFont.load_default()


def _text_colour(fill):
    """Black on light fills, white on dark ones (a few of :data:`BOX_COLOURS` are dark blues)."""
    red, green, blue = fill[:3]
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue >= 110 else (255, 255, 255)


def _dashed_rectangle(draw, corners, colour, line_width, dash):
    x0, y0, x1, y1 = corners
    for start in range(x0, x1 + 1, 2 * dash):
        end = min(start + dash - 1, x1)
        draw.rectangle((start, y0, end, min(y0 + line_width - 1, y1)), fill=colour)
        draw.rectangle((start, max(y1 - line_width + 1, y0), end, y1), fill=colour)
    for start in range(y0, y1 + 1, 2 * dash):
        end = min(start + dash - 1, y1)
        draw.rectangle((x0, start, min(x0 + line_width - 1, x1), end), fill=colour)
        draw.rectangle((max(x1 - line_width + 1, x0), start, x1, end), fill=colour)


def draw_labelled_box(draw, image_size, corners, colour, text, font, line_width=2, dashed=False):
    """Draws one box outline and a text tag in ``colour`` with ``draw`` (a Pillow ``ImageDraw``).

    ``corners`` are pixel ``(xmin, ymin, xmax, ymax)`` (rounded, clipped to ``image_size``
    ``(width, height)``: a box partly outside is drawn along the image border); the outline
    lies inside them, ``line_width`` pixels wide, in dashes when ``dashed``. The tag sits
    above the box, or inside its top when there is no room, and is shifted to stay inside
    the image. Returns False (nothing drawn) for a box wholly outside the image.
    """
    width, height = image_size
    x0, y0, x1, y1 = (int(np.floor(float(v) + 0.5)) for v in corners)
    if x1 < 0 or y1 < 0 or x0 > width - 1 or y0 > height - 1 or x1 < x0 or y1 < y0:
        return False
    x0, x1 = max(x0, 0), min(x1, width - 1)
    y0, y1 = max(y0, 0), min(y1, height - 1)
    if dashed:
        _dashed_rectangle(draw, (x0, y0, x1, y1), colour, line_width, dash=max(3, 2 * line_width))
    else:
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=line_width)
    if text:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tag_width, tag_height = right - left + 2, bottom - top + 2
        tag_x = max(min(x0, width - tag_width), 0)
        tag_y = max(min(y0 - tag_height if y0 >= tag_height else y0, height - tag_height), 0)
        draw.rectangle((tag_x, tag_y, tag_x + tag_width - 1, tag_y + tag_height - 1), fill=colour)
        draw.text((tag_x + 1 - left, tag_y + 1 - top), text, fill=_text_colour(colour), font=font)
    return True


def draw_boxes_numpy(images, boxes, labels, labels_to_names):
    """Draws relative ``boxes [B, N, 4]`` with class names on uint8 ``images [B, H, W, 3]``.

    Boxes whose label is 0 are padding and not drawn. Returns a new uint8 array.
    """
    images = np.asarray(images, np.uint8)
    drawn = np.empty_like(images)
    height, width = images.shape[1:3]
    font = label_font(height)
    for index, (image, image_boxes, image_labels) in enumerate(zip(images, boxes, labels)):
        canvas = Image.fromarray(image)
        draw = ImageDraw.Draw(canvas)
        for (ymin, xmin, ymax, xmax), label in zip(image_boxes, image_labels):
            if int(label) == 0:
                continue
            corners = (xmin * width, ymin * height, xmax * width, ymax * height)
            draw_labelled_box(draw, (width, height), corners, class_colour(label),
                              class_name(labels_to_names, label), font)
        drawn[index] = np.asarray(canvas)
    return drawn


def draw_ground_truth(images, boxes, labels, labels_to_names, max_images=3, rgb_means=RGB_MEANS):
    """Graph op: the first ``max_images`` of the batch as uint8 ``[k, h, w, 3]`` with boxes and names.

    Args:
      images: float32 ``[B, h, w, 3]`` mean-subtracted RGB (what the towers consume).
      boxes: float32 ``[B, N, 4]`` relative ``[ymin, xmin, ymax, xmax]``, padded.
      labels: int ``[B, N]``, 0 for padding.
      labels_to_names: dict class id -> name.
    """
    count = tf.minimum(tf.shape(images)[0], max_images)
    display = restore_means(images[:count], rgb_means)
    names = dict(labels_to_names or {})

    def draw(display_np, boxes_np, labels_np):
        return draw_boxes_numpy(display_np, boxes_np, labels_np, names)

    drawn = tf.numpy_function(
        draw, [display, tf.cast(boxes[:count], tf.float32), tf.cast(labels[:count], tf.int64)], tf.uint8,
        stateful=False,
    )
    return tf.ensure_shape(drawn, [None, images.shape[1], images.shape[2], 3])


def ground_truth_image_summary(
    images, boxes, labels, labels_to_names, max_images=3, name="ground_truth", collections=None,
    rgb_means=RGB_MEANS,
):
    """A ``tf.compat.v1.summary.image`` op of the first ``max_images`` training images with
    their ground-truth boxes and class names (see :func:`draw_ground_truth`)."""
    with tf.name_scope("ground_truth_images"):
        drawn = draw_ground_truth(images, boxes, labels, labels_to_names, max_images, rgb_means)
        return tf1.summary.image(name, drawn, max_outputs=max_images, collections=collections)
