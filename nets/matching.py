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
    """IoU [B, A, N] of anchors [A, 4] (positive area) against boxes [B, N, 4] (all corner form).

    Zero-area boxes get IoU 0 with every anchor.
    """
    a_ymin, a_xmin, a_ymax, a_xmax = [t[tf.newaxis, :, tf.newaxis] for t in tf.unstack(anchor_corners, 4, axis=-1)]
    b_ymin, b_xmin, b_ymax, b_xmax = [t[:, tf.newaxis, :] for t in tf.unstack(boxes, 4, axis=-1)]
    inter_h = tf.nn.relu(tf.minimum(a_ymax, b_ymax) - tf.maximum(a_ymin, b_ymin))
    inter_w = tf.nn.relu(tf.minimum(a_xmax, b_xmax) - tf.maximum(a_xmin, b_xmin))
    intersection = inter_h * inter_w
    area_a = (a_ymax - a_ymin) * (a_xmax - a_xmin)
    area_b = tf.nn.relu(b_ymax - b_ymin) * tf.nn.relu(b_xmax - b_xmin)
    return intersection / ((area_a + area_b) - intersection)


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

    Returns ``(assigned [B, A] int32, positive [B, A] bool, ignored [B, A] bool, gscores [B, A])``.
    The [B, A, N] work is the IoU and three reductions; the best-anchor rule works on [B, N].
    """
    if negative_threshold is not None and not 0.0 <= negative_threshold <= match_threshold:
        raise ValueError(
            f"negative_threshold must lie in [0, match_threshold={match_threshold}], got {negative_threshold}"
        )
    anchor_corners = anchors_to_corners(anchors)
    num_anchors = anchor_corners.shape[0]
    ymin, xmin, ymax, xmax = tf.unstack(boxes, 4, axis=-1)
    valid = (labels > 0) & (ymax > ymin) & (xmax > xmin)
    # Invalid boxes become empty, so their IoU is 0 with every anchor: they can neither reach the
    # threshold nor be a box's best anchor (rule 2 skips them explicitly too).
    boxes = tf.where(valid[..., tf.newaxis], boxes, 0.0)
    iou = iou_anchors_boxes(anchor_corners, boxes)

    # Rule 2: every box's best anchor; where boxes share one, the highest IoU (then lowest index) wins.
    best_anchor_per_box = tf.argmax(iou, axis=1, output_type=tf.int32)
    best_iou_per_box = tf.reduce_max(iou, axis=1)
    can_force = valid & (best_iou_per_box > 0.0)
    num_boxes = tf.shape(labels)[1]
    box_ids = tf.range(num_boxes)
    same_anchor = tf.equal(best_anchor_per_box[:, :, tf.newaxis], best_anchor_per_box[:, tf.newaxis, :])
    iou_n = best_iou_per_box[:, :, tf.newaxis]
    iou_m = best_iou_per_box[:, tf.newaxis, :]
    lower_index = box_ids[tf.newaxis, tf.newaxis, :] < box_ids[tf.newaxis, :, tf.newaxis]
    beaten = (iou_m > iou_n) | ((iou_m == iou_n) & lower_index)
    winner = can_force & tf.logical_not(tf.reduce_any(same_anchor & beaten & can_force[:, tf.newaxis, :], axis=2))
    batch_ids = tf.broadcast_to(tf.range(tf.shape(labels)[0])[:, tf.newaxis], tf.shape(best_anchor_per_box))
    scatter_at = tf.stack([batch_ids, best_anchor_per_box], axis=-1)
    forced_shape = tf.stack([tf.shape(labels)[0], num_anchors])
    # float32 scatters (exact for box indices below 2**24) have kernels on every device.
    winner_ids = tf.where(winner, tf.cast(box_ids[tf.newaxis, :] + 1, tf.float32), 0.0)
    forced_box_plus_one = tf.cast(tf.tensor_scatter_nd_max(tf.zeros(forced_shape), scatter_at, winner_ids), tf.int32)
    forced_iou = tf.tensor_scatter_nd_max(tf.zeros(forced_shape), scatter_at, tf.where(winner, best_iou_per_box, 0.0))
    anchor_forced = forced_box_plus_one > 0

    # Rule 3: threshold matches.
    best_box = tf.argmax(iou, axis=2, output_type=tf.int32)
    best_iou = tf.reduce_max(iou, axis=2)
    assigned = tf.where(anchor_forced, forced_box_plus_one - 1, best_box)
    assigned_iou = tf.where(anchor_forced, forced_iou, best_iou)
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
