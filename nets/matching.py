"""Vectorised SSD anchor matching and target encoding (the paper's rule, no loop over boxes).

For every image, with IoU computed between every anchor and every ground-truth box in one op:

1. Boxes with label <= 0 (padding) or zero area never match.
2. Every ground-truth box takes its best anchor (highest IoU, first anchor on ties), provided that
   IoU is > 0. When several boxes pick the same anchor, the box with the highest IoU with that
   anchor keeps it (lowest box index on ties); the others keep only their threshold matches.
3. Every other anchor takes its best box when that IoU is >= ``match_threshold``.
4. Optional ignore band: unmatched anchors whose best IoU is >= ``negative_threshold`` get
   class -1 and are neither positives nor negatives in the loss.

Outputs per anchor: ``gclasses`` (label, 0 background, -1 ignored), ``glocalisations``
(encoded offsets of the assigned box, zeros when not positive) and ``gscores`` (IoU with the
assigned box for positives, the best IoU with any valid box otherwise, 0 without boxes).
"""

import tensorflow as tf

from nets import box_coding


def anchors_to_corners(anchors):
    """Tensor ``(cy, cx, h, w)`` [A, 4] -> ``(ymin, xmin, ymax, xmax)``."""
    cy, cx, h, w = tf.unstack(tf.convert_to_tensor(anchors, tf.float32), num=4, axis=-1)
    return tf.stack([cy - h / 2.0, cx - w / 2.0, cy + h / 2.0, cx + w / 2.0], axis=-1)


def iou_anchors_boxes(anchor_corners, boxes):
    """IoU [B, A, N] of anchors [A, 4] against boxes [B, N, 4] (all corner form)."""
    a_ymin, a_xmin, a_ymax, a_xmax = [t[tf.newaxis, :, tf.newaxis] for t in tf.unstack(anchor_corners, 4, axis=-1)]
    b_ymin, b_xmin, b_ymax, b_xmax = [t[:, tf.newaxis, :] for t in tf.unstack(boxes, 4, axis=-1)]
    inter_h = tf.maximum(tf.minimum(a_ymax, b_ymax) - tf.maximum(a_ymin, b_ymin), 0.0)
    inter_w = tf.maximum(tf.minimum(a_xmax, b_xmax) - tf.maximum(a_xmin, b_xmin), 0.0)
    intersection = inter_h * inter_w
    area_a = (a_ymax - a_ymin) * (a_xmax - a_xmin)
    area_b = tf.maximum(b_ymax - b_ymin, 0.0) * tf.maximum(b_xmax - b_xmin, 0.0)
    union = area_a + area_b - intersection
    return tf.where(union > 0.0, intersection / tf.maximum(union, 1e-12), tf.zeros_like(union))


def _batched_inputs(labels, boxes):
    labels = tf.cast(tf.convert_to_tensor(labels), tf.int64)
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    if labels.shape.rank not in (1, 2) or boxes.shape.rank != labels.shape.rank + 1:
        raise ValueError(
            f"bboxes_encode expects labels [N] with boxes [N, 4], or labels [B, N] with boxes [B, N, 4]; "
            f"got labels {labels.shape} and boxes {boxes.shape}"
        )
    single = labels.shape.rank == 1
    if single:
        labels, boxes = labels[tf.newaxis], boxes[tf.newaxis]
    # One always-invalid box keeps the box axis non-empty, so images without boxes need no branch.
    batch = tf.shape(labels)[0]
    labels = tf.concat([labels, tf.zeros([batch, 1], tf.int64)], axis=1)
    boxes = tf.concat([boxes, tf.zeros([batch, 1, 4], tf.float32)], axis=1)
    return single, labels, boxes


def match_anchors(labels, boxes, anchors, match_threshold=0.5, negative_threshold=None):
    """Batched matching. labels [B, N], boxes [B, N, 4], anchors [A, 4] centre form.

    Returns ``(assigned [B, A] int, positive [B, A] bool, ignored [B, A] bool, gscores [B, A])``.
    """
    if negative_threshold is not None and not 0.0 <= negative_threshold <= match_threshold:
        raise ValueError(
            f"negative_threshold must lie in [0, match_threshold={match_threshold}], got {negative_threshold}"
        )
    anchor_corners = anchors_to_corners(anchors)
    num_anchors = anchor_corners.shape[0]
    iou = iou_anchors_boxes(anchor_corners, boxes)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, 4, axis=-1)
    valid = (labels > 0) & (ymax > ymin) & (xmax > xmin)
    iou = tf.where(valid[:, tf.newaxis, :], iou, -tf.ones_like(iou))

    # Rule 2: every box's best anchor, conflicts resolved by the IoU at that anchor.
    best_anchor_per_box = tf.argmax(iou, axis=1)
    can_force = valid & (tf.reduce_max(iou, axis=1) > 0.0)
    forced_pairs = tf.cast(tf.one_hot(best_anchor_per_box, num_anchors, axis=1, dtype=tf.int32), tf.bool)
    forced_pairs &= can_force[:, tf.newaxis, :]
    anchor_forced = tf.reduce_any(forced_pairs, axis=2)
    forced_box = tf.argmax(tf.where(forced_pairs, iou, -tf.ones_like(iou)), axis=2)

    # Rule 3: threshold matches.
    best_box = tf.argmax(iou, axis=2)
    best_iou = tf.maximum(tf.reduce_max(iou, axis=2), 0.0)
    assigned = tf.where(anchor_forced, forced_box, best_box)
    assigned_iou = tf.maximum(tf.gather(iou, assigned, axis=2, batch_dims=2), 0.0)
    positive = anchor_forced | (best_iou >= match_threshold)
    if negative_threshold is None:
        ignored = tf.zeros_like(positive)
    else:
        ignored = tf.logical_not(positive) & (best_iou >= negative_threshold)
    return assigned, positive, ignored, assigned_iou


def bboxes_encode(
    labels, boxes, anchors, match_threshold=0.5, negative_threshold=None, prior_scaling=box_coding.PRIOR_SCALING
):
    """Targets for one image (labels [N], boxes [N, 4]) or a padded batch ([B, N], [B, N, 4]).

    Boxes are ``(ymin, xmin, ymax, xmax)`` relative; anchors [A, 4] are centre form.
    Returns ``gclasses`` [(B,) A] int64, ``glocalisations`` [(B,) A, 4] float32 and
    ``gscores`` [(B,) A] float32.
    """
    with tf.name_scope("bboxes_encode"):
        single, labels, boxes = _batched_inputs(labels, boxes)
        assigned, positive, ignored, gscores = match_anchors(
            labels, boxes, anchors, match_threshold, negative_threshold
        )
        assigned_labels = tf.gather(labels, assigned, batch_dims=1)
        gclasses = tf.where(
            positive, assigned_labels, tf.where(ignored, -tf.ones_like(assigned_labels), tf.zeros_like(assigned_labels))
        )
        matched_boxes = tf.gather(boxes, assigned, batch_dims=1)
        offsets = box_coding.encode(matched_boxes, anchors, prior_scaling)
        glocalisations = tf.where(positive[..., tf.newaxis], offsets, tf.zeros_like(offsets))
        if single:
            return gclasses[0], glocalisations[0], gscores[0]
        return gclasses, glocalisations, gscores
