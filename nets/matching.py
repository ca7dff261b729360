"""SSD anchor matching and explicit training targets (the paper's rule, as Caffe SSD implements it).

For every image, with the IoU of every anchor and every ground-truth box computed in one op:

1. Boxes with label <= 0 (padding) or without positive area never match.
2. Bipartite stage (Caffe's ``MatchBBox``, first part): repeatedly, the (box, anchor) pair
   with the highest IoU among unmatched boxes and untaken anchors is matched, until every box
   is matched or no unmatched box overlaps an untaken anchor. Every box therefore gets its
   own anchor, even when several boxes want the same best anchor (near-duplicates, crowds).
   Ties: the lower box index, then the lower anchor index.
3. Threshold stage: every anchor the bipartite stage did not take is matched to its best box
   when that IoU is >= ``match_threshold``.
4. Optional ignore band: unmatched anchors whose best IoU is >= ``negative_threshold`` are
   ignored (neither positive nor negative in the loss).

The bipartite stage runs in rounds (a bounded ``tf.while_loop``, at most one round per box):
each round matches, at once, every pair that is both the best untaken anchor of its box and
the best unmatched box of its anchor. Such a pair has the highest IoU of all pairs touching
its box or its anchor, so the one-pair-at-a-time greedy rule would match it too, whatever
order the rest comes in; the global best pair always qualifies, so each round makes progress.
Round 1 settles most boxes; the later rounds (one or two on typical images, a few in crowds)
work only on the columns of the boxes still open.

:func:`bboxes_encode` returns :class:`Targets`, explicit per-anchor class targets, box targets
and weights: the loss reads which anchors are positives and which may be negatives from the
weights, and re-derives nothing from a threshold.
"""

import collections

import tensorflow as tf

from nets import box_coding

Targets = collections.namedtuple("Targets", ["classes", "boxes", "positive_weights", "negative_weights", "ious"])
Targets.__doc__ = """Per-anchor training targets, [(B,) A] (``boxes`` [(B,) A, 4]).

- ``classes`` int64: the assigned box's label for positives, 0 (background) otherwise.
- ``boxes`` float32: the assigned box encoded against the anchor (:mod:`nets.box_coding`) for
  positives, zeros otherwise.
- ``positive_weights`` float32: 1 for positives (classification and localisation), else 0.
- ``negative_weights`` float32: 1 for negative candidates (unmatched, below the ignore band),
  from which hard negative mining picks; 0 for positives and ignored anchors.
- ``ious`` float32: IoU with the assigned box for positives, the best IoU with any valid box
  otherwise (0 without boxes). For reports and summaries, not for the loss.

An anchor with both weights 0 is ignored."""

TARGET_KEYS = tuple(f"target_{field}" for field in Targets._fields)


def targets_to_dict(targets):
    """{``target_classes``: ..., ...}: how targets travel through the input pipeline."""
    return dict(zip(TARGET_KEYS, targets))


def targets_from_dict(values):
    return Targets(*(values[key] for key in TARGET_KEYS))


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


def _bipartite_round(available, open_boxes, taken, box_anchor):
    """One round of the bipartite stage: every open box whose best untaken anchor would also pick
    it (highest IoU among open boxes; ties to the lower anchor, then the lower box) takes it.

    ``available`` [B, A, M]: IoU, -1 where the anchor is taken or the box closed (round 1 may pass
    the raw IoU: nothing is taken yet, and invalid boxes, all zeros, can neither win nor beat).
    Returns the new ``(open_boxes [B, M], taken [B, A], box_anchor [B, M])``.
    """
    num_boxes = tf.shape(available)[2]
    box_ids = tf.range(num_boxes)
    lower_box = box_ids[tf.newaxis, :] < box_ids[:, tf.newaxis]  # [n, m]: m < n
    best_anchor = tf.argmax(available, axis=1, output_type=tf.int32)  # [B, M], first anchor on ties
    best_iou = tf.reduce_max(available, axis=1)
    rival = tf.gather(available, best_anchor, axis=1, batch_dims=1)  # [b, n, m]: box m's IoU with n's best anchor
    best = best_iou[:, :, tf.newaxis]
    beaten = tf.reduce_any((rival > best) | (tf.equal(rival, best) & lower_box[tf.newaxis]), axis=2)
    wins = open_boxes & (best_iou > 0.0) & tf.logical_not(beaten)
    box_anchor = tf.where(wins, best_anchor, box_anchor)
    batch_ids = tf.broadcast_to(tf.range(tf.shape(available)[0])[:, tf.newaxis], tf.shape(best_anchor))
    # float32 scatters have kernels on every device; the input's zeros keep the static shape.
    won = tf.tensor_scatter_nd_max(tf.zeros_like(taken, tf.float32), tf.stack([batch_ids, best_anchor], -1),
                                   tf.cast(wins, tf.float32))
    return open_boxes & tf.logical_not(wins) & (best_iou > 0.0), taken | (won > 0.0), box_anchor


def bipartite_match(iou, valid):
    """The bipartite stage (module docstring, rule 2) on an IoU matrix.

    Args:
      iou: [B, A, N] float32, anchors by boxes.
      valid: [B, N] bool, the boxes that may be matched.

    Returns:
      ``box_anchor`` [B, N] int32: the anchor each box took, -1 when it took none (invalid, or
      no overlap left with any untaken anchor).
    """
    with tf.name_scope("bipartite_match"):
        batch, num_anchors, num_boxes = tf.shape(iou)[0], tf.shape(iou)[1], tf.shape(iou)[2]
        open_boxes, taken, box_anchor = _bipartite_round(
            iou, valid, tf.zeros([batch, num_anchors], tf.bool), tf.fill([batch, num_boxes], -1))

        # Most boxes are matched by round 1. Closed boxes can neither win nor beat any more, so the
        # later rounds work on the columns of the boxes still open (in their order, which keeps the
        # lower-box tie rule), usually a handful.
        num_open = tf.reduce_max(tf.reduce_sum(tf.cast(open_boxes, tf.int32), axis=1))
        order = tf.argsort(tf.cast(tf.logical_not(open_boxes), tf.int32), axis=1, stable=True)[:, :num_open]
        open_iou = tf.gather(iou, order, axis=2, batch_dims=1)

        def next_round(round_index, still_open, taken, open_anchor):
            closed = taken[:, :, tf.newaxis] | tf.logical_not(still_open)[:, tf.newaxis, :]
            return (round_index + 1,) + _bipartite_round(tf.where(closed, -1.0, open_iou), still_open, taken,
                                                          open_anchor)

        def any_open(round_index, still_open, unused_taken, unused_open_anchor):
            return (round_index < num_boxes) & tf.reduce_any(still_open)

        _, _, _, open_anchor = tf.while_loop(
            any_open, next_round,
            (tf.constant(1), tf.gather(open_boxes, order, batch_dims=1), taken, tf.fill(tf.shape(order), -1)),
            name="rounds")
        batch_ids = tf.broadcast_to(tf.range(batch)[:, tf.newaxis], tf.shape(order))
        # Positions past an image's open boxes hold closed ones: they keep their round-1 anchor.
        updates = tf.where(open_anchor >= 0, open_anchor, tf.gather(box_anchor, order, batch_dims=1))
        return tf.tensor_scatter_nd_update(box_anchor, tf.stack([batch_ids, order], -1), updates)


def match_anchors(labels, boxes, anchors, match_threshold=0.5, negative_threshold=None):
    """Batched matching. labels [B, N], boxes [B, N, 4], anchors [A, 4] centre form.

    Returns ``(assigned [B, A] int32, positive [B, A] bool, ignored [B, A] bool, ious [B, A])``:
    the box index each anchor is matched to (meaningful where positive), and the IoU with it
    (positives) or the best IoU with any valid box (the others).
    """
    if not 0.0 < match_threshold <= 1.0:
        raise ValueError(f"match_threshold must lie in (0, 1], got {match_threshold}")
    if negative_threshold is not None and not 0.0 <= negative_threshold <= match_threshold:
        raise ValueError(
            f"negative_threshold must lie in [0, match_threshold={match_threshold}], got {negative_threshold}"
        )
    anchor_corners = anchors_to_corners(anchors)
    num_anchors = anchor_corners.shape[0]
    ymin, xmin, ymax, xmax = tf.unstack(boxes, 4, axis=-1)
    valid = (labels > 0) & (ymax > ymin) & (xmax > xmin)
    # Invalid boxes become empty, so their IoU is 0 with every anchor and they never reach the threshold.
    boxes = tf.where(valid[..., tf.newaxis], boxes, 0.0)
    iou = iou_anchors_boxes(anchor_corners, boxes)

    box_anchor = bipartite_match(iou, valid)
    batch, num_boxes = tf.shape(labels)[0], tf.shape(labels)[1]
    matched = box_anchor >= 0
    batch_ids = tf.broadcast_to(tf.range(batch)[:, tf.newaxis], [batch, num_boxes])
    scatter_at = tf.stack([batch_ids, tf.maximum(box_anchor, 0)], axis=-1)
    # Each anchor is taken by at most one box: (box index + 1) scatters exactly, 0 = none (float32:
    # exact below 2**24 boxes, with kernels on every device).
    box_ids = tf.cast(tf.range(1, num_boxes + 1)[tf.newaxis], tf.float32)
    taken_by = tf.tensor_scatter_nd_max(tf.zeros(tf.stack([batch, num_anchors])), scatter_at,
                                        tf.where(matched, box_ids, 0.0))
    taken_by = tf.cast(taken_by, tf.int32)
    anchor_taken = taken_by > 0

    best_box = tf.argmax(iou, axis=2, output_type=tf.int32)
    best_iou = tf.reduce_max(iou, axis=2)
    assigned = tf.where(anchor_taken, taken_by - 1, best_box)
    assigned_iou = tf.where(anchor_taken, tf.gather(iou, tf.maximum(taken_by - 1, 0), axis=2, batch_dims=2), best_iou)
    positive = anchor_taken | (best_iou >= match_threshold)
    if negative_threshold is None:
        ignored = tf.zeros_like(positive)
    else:
        ignored = tf.logical_not(positive) & (best_iou >= negative_threshold)
    return assigned, positive, ignored, assigned_iou


def bboxes_encode(
    labels, boxes, anchors, match_threshold=0.5, negative_threshold=None, prior_scaling=box_coding.PRIOR_SCALING
):
    """:class:`Targets` for one image (labels [N], boxes [N, 4]) or a padded batch ([B, N], [B, N, 4]).

    Boxes are ``(ymin, xmin, ymax, xmax)`` relative; anchors [A, 4] are centre form.
    """
    with tf.name_scope("bboxes_encode"):
        single, labels, boxes = _batched_inputs(labels, boxes)
        assigned, positive, ignored, ious = match_anchors(labels, boxes, anchors, match_threshold, negative_threshold)
        assigned_labels = tf.gather(labels, assigned, batch_dims=1)
        classes = tf.where(positive, assigned_labels, tf.zeros_like(assigned_labels))
        matched_boxes = tf.gather(boxes, assigned, batch_dims=1)
        offsets = box_coding.encode(matched_boxes, anchors, prior_scaling)
        box_targets = tf.where(positive[..., tf.newaxis], offsets, tf.zeros_like(offsets))
        positive_weights = tf.cast(positive, tf.float32)
        negative_weights = tf.cast(tf.logical_not(positive | ignored), tf.float32)
        targets = Targets(classes, box_targets, positive_weights, negative_weights, ious)
        if single:
            return Targets(*(t[0] for t in targets))
        return targets
