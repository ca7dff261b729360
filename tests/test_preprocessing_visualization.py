"""TensorBoard images of augmented training examples with their boxes and class names."""

import io

import numpy as np
import tensorflow as tf
from PIL import Image

from preprocessing import visualization
from preprocessing.ssd_vgg_preprocessing import RGB_MEANS
from tf_compat import tf1

MEANS = np.array(RGB_MEANS, np.float32)


def _batch():
    """A batch of 4 grey images (as the towers see them: mean-subtracted) with padded boxes."""
    images = np.full((4, 60, 80, 3), 50.0, np.float32) - MEANS
    boxes = np.zeros((4, 3, 4), np.float32)
    labels = np.zeros((4, 3), np.int64)
    boxes[0, 0], labels[0, 0] = [0.5, 0.25, 0.9, 0.75], 1
    boxes[0, 1], labels[0, 1] = [0.1, 0.1, 0.3, 0.3], 2
    boxes[1, 0], labels[1, 0] = [0.2, 0.2, 0.8, 0.8], 3
    return images, boxes, labels


def test_restore_means_inverts_mean_subtraction():
    pixels = np.array([[[0, 128, 255], [123, 117, 104]]], np.uint8)
    with tf.Graph().as_default(), tf1.Session() as session:
        restored = session.run(visualization.restore_means(pixels.astype(np.float32) - MEANS))
    np.testing.assert_array_equal(restored, pixels)


def test_draw_boxes_numpy_draws_box_outlines_in_the_class_colour():
    images, boxes, labels = _batch()
    display = np.full((4, 60, 80, 3), 50, np.uint8)
    drawn = visualization.draw_boxes_numpy(display, boxes, labels, {1: "RBC", 2: "WBC", 3: "Platelets"})
    colour = visualization.BOX_COLOURS[1]
    np.testing.assert_array_equal(drawn[0, 54, 40], colour)  # bottom edge of box 1 at y = 0.9 * 60
    np.testing.assert_array_equal(drawn[0, 42, 40], [50, 50, 50])  # inside the box stays untouched
    # the name label is a filled strip in the class colour above the box, with dark text in it
    label_strip = drawn[0, 18:30, 20:40]
    assert np.any(np.all(label_strip == colour, axis=-1)) and np.any(np.all(label_strip < 40, axis=-1))
    np.testing.assert_array_equal(drawn[2], display[2])  # only padding: nothing drawn
    np.testing.assert_array_equal(display[0, 54, 40], [50, 50, 50])  # input not modified


def test_image_summary_op_runs_and_serialises_images():
    images, boxes, labels = _batch()
    with tf.Graph().as_default():
        images_t = tf1.placeholder_with_default(images, [None, 60, 80, 3])
        summary_op = visualization.ground_truth_image_summary(
            images_t, tf.constant(boxes), tf.constant(labels), {1: "RBC", 2: "WBC", 3: "Platelets"}, max_images=2)
        assert summary_op in tf1.get_collection(tf1.GraphKeys.SUMMARIES)
        with tf1.Session() as session:
            serialized = session.run(summary_op)
    summary = tf1.Summary.FromString(serialized)
    assert len(summary.value) == 2
    assert all("ground_truth" in value.tag for value in summary.value)
    first = np.asarray(Image.open(io.BytesIO(summary.value[0].image.encoded_image_string)))
    assert first.shape == (60, 80, 3)
    assert summary.value[0].image.height == 60 and summary.value[0].image.width == 80
    np.testing.assert_array_equal(first[54, 40], visualization.BOX_COLOURS[1])
    np.testing.assert_array_equal(first[42, 40], [50, 50, 50])
