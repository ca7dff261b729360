"""Box coding: numpy formulas, SSD-Tensorflow's (cx, cy, w, h) order, encode/decode round trip."""

import numpy as np
import tensorflow as tf

from nets import box_coding
from tf_compat import tf1


def _random_boxes(rng, shape):
    centre = rng.uniform(0.05, 0.95, shape + (2,))
    size = rng.uniform(0.01, 0.6, shape + (2,))
    return np.concatenate([centre - size / 2, centre + size / 2], axis=-1).astype(np.float32)


def _random_anchors(rng, count):
    return np.concatenate([rng.uniform(0, 1, (count, 2)), rng.uniform(0.02, 0.9, (count, 2))], axis=-1).astype(
        np.float32
    )


def _numpy_encode(boxes, anchors, scaling):
    a_cy, a_cx, a_h, a_w = anchors.T.astype(np.float64)
    ymin, xmin, ymax, xmax = np.moveaxis(boxes.astype(np.float64), -1, 0)
    return np.stack(
        [
            ((xmin + xmax) / 2 - a_cx) / a_w / scaling[0],
            ((ymin + ymax) / 2 - a_cy) / a_h / scaling[1],
            np.log((xmax - xmin) / a_w) / scaling[2],
            np.log((ymax - ymin) / a_h) / scaling[3],
        ],
        axis=-1,
    )


def test_encode_matches_numpy_and_decode_inverts_it():
    rng = np.random.default_rng(0)
    anchors = _random_anchors(rng, 50)
    boxes = _random_boxes(rng, (3, 50))
    with tf.Graph().as_default():
        encoded = box_coding.encode(tf.constant(boxes), anchors)
        decoded = box_coding.decode(encoded, anchors)
        with tf1.Session() as sess:
            encoded_np, decoded_np = sess.run([encoded, decoded])
    expected = _numpy_encode(boxes, anchors, box_coding.PRIOR_SCALING)
    np.testing.assert_allclose(encoded_np, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(decoded_np, boxes, atol=1e-5)


def test_box_equal_to_its_anchor_encodes_to_zero():
    anchors = np.array([[0.5, 0.4, 0.2, 0.1]], np.float32)
    box = np.array([[0.4, 0.35, 0.6, 0.45]], np.float32)
    with tf.Graph().as_default(), tf1.Session() as sess:
        np.testing.assert_allclose(sess.run(box_coding.encode(box, anchors)), [[0, 0, 0, 0]], atol=1e-5)


def test_prior_scaling_and_order():
    anchors = np.array([[0.5, 0.5, 0.2, 0.4]], np.float32)
    # Shifted right by 0.04 (= 0.1 * width 0.4 -> t_cx 1), twice as tall (t_h = log 2 / 0.2).
    box = np.array([[0.3, 0.34, 0.7, 0.74]], np.float32)
    with tf.Graph().as_default(), tf1.Session() as sess:
        t_cx, t_cy, t_w, t_h = sess.run(box_coding.encode(box, anchors))[0]
    assert abs(t_cx - 1.0) < 1e-5
    assert abs(t_cy) < 1e-6 and abs(t_w) < 1e-6
    assert abs(t_h - np.log(2.0) / 0.2) < 1e-5


def test_degenerate_box_encodes_finite():
    anchors = np.array([[0.5, 0.5, 0.2, 0.2]], np.float32)
    with tf.Graph().as_default(), tf1.Session() as sess:
        assert np.isfinite(sess.run(box_coding.encode(np.zeros([1, 4], np.float32), anchors))).all()
