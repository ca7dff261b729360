"""SSD box coding: ground-truth boxes relative to anchors, scaled by the prior variances.

Encoded offsets are ordered ``(cx, cy, w, h)`` as in SSD-Tensorflow (and Caffe), so the
``conv_loc`` channels of a published checkpoint keep their meaning::

    t_cx = (cx - a_cx) / a_w / scaling[0]     t_w = log(w / a_w) / scaling[2]
    t_cy = (cy - a_cy) / a_h / scaling[1]     t_h = log(h / a_h) / scaling[3]

Boxes are ``(ymin, xmin, ymax, xmax)``; anchors are centre form ``(cy, cx, h, w)``, shape
[A, 4] (broadcast against the leading dimensions of the boxes / offsets).
"""

import tensorflow as tf

PRIOR_SCALING = (0.1, 0.1, 0.2, 0.2)

# Smallest side used inside log(): keeps encoding finite for degenerate boxes, which the
# matcher never assigns to a positive anchor anyway.
_MIN_SIDE = 1e-8


def _anchor_parts(anchors, dtype):
    anchors = tf.convert_to_tensor(anchors, dtype=dtype)
    return tf.unstack(anchors, num=4, axis=-1)


def encode(boxes, anchors, prior_scaling=PRIOR_SCALING):
    """Offsets [..., A, 4] of ``boxes`` [..., A, 4] from ``anchors`` [A, 4]."""
    boxes = tf.convert_to_tensor(boxes)
    a_cy, a_cx, a_h, a_w = _anchor_parts(anchors, boxes.dtype)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, num=4, axis=-1)
    height = tf.maximum(ymax - ymin, _MIN_SIDE)
    width = tf.maximum(xmax - xmin, _MIN_SIDE)
    cy = (ymin + ymax) / 2.0
    cx = (xmin + xmax) / 2.0
    t_cx = (cx - a_cx) / a_w / prior_scaling[0]
    t_cy = (cy - a_cy) / a_h / prior_scaling[1]
    t_w = tf.math.log(width / a_w) / prior_scaling[2]
    t_h = tf.math.log(height / a_h) / prior_scaling[3]
    return tf.stack([t_cx, t_cy, t_w, t_h], axis=-1)


def decode(offsets, anchors, prior_scaling=PRIOR_SCALING):
    """Boxes ``(ymin, xmin, ymax, xmax)`` [..., A, 4] from ``offsets`` [..., A, 4]."""
    offsets = tf.convert_to_tensor(offsets)
    a_cy, a_cx, a_h, a_w = _anchor_parts(anchors, offsets.dtype)
    t_cx, t_cy, t_w, t_h = tf.unstack(offsets, num=4, axis=-1)
    cx = t_cx * a_w * prior_scaling[0] + a_cx
    cy = t_cy * a_h * prior_scaling[1] + a_cy
    width = a_w * tf.exp(t_w * prior_scaling[2])
    height = a_h * tf.exp(t_h * prior_scaling[3])
    return tf.stack([cy - height / 2.0, cx - width / 2.0, cy + height / 2.0, cx + width / 2.0], axis=-1)
