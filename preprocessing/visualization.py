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


def _font(image_height):
    try:
        return ImageFont.load_default(size=max(10, image_height // 30))
    except TypeError:  # Pillow < 10.1 has a fixed-size bitmap default font only
        return ImageFont.load_default()


def draw_boxes_numpy(images, boxes, labels, labels_to_names):
    """Draws relative ``boxes [B, N, 4]`` with class names on uint8 ``images [B, H, W, 3]``.

    Boxes whose label is 0 are padding and not drawn. Returns a new uint8 array.
    """
    images = np.asarray(images, np.uint8)
    drawn = np.empty_like(images)
    height, width = images.shape[1:3]
    font = _font(height)
    for index, (image, image_boxes, image_labels) in enumerate(zip(images, boxes, labels)):
        canvas = Image.fromarray(image)
        draw = ImageDraw.Draw(canvas)
        for (ymin, xmin, ymax, xmax), label in zip(image_boxes, image_labels):
            label = int(label)
            if label == 0:
                continue
            colour = BOX_COLOURS[label % len(BOX_COLOURS)]
            corners = (xmin * width, ymin * height, xmax * width, ymax * height)
            draw.rectangle(corners, outline=colour, width=2)
            name = labels_to_names.get(label, str(label))
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            left, top, right, bottom = draw.textbbox((0, 0), name, font=font)
            text_x = corners[0]
            text_y = max(corners[1] - (bottom - top) - 2, 0)
            draw.rectangle((text_x, text_y, text_x + right - left + 2, text_y + bottom - top + 2), fill=colour)
            draw.text((text_x + 1 - left, text_y + 1 - top), name, fill=(0, 0, 0), font=font)
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
