"""SSD post-processing: decode, per-class threshold, top-k, per-class NMS, keep-top-k.

One batched path serves evaluation and export: fixed-size padded outputs plus a count.

Per image and per class c >= 1 (background is never reported):
1. decode every anchor's offsets, clip to [0, 1] when ``clip`` (before NMS, as SSD-Tensorflow);
2. keep the ``top_k`` anchors with the highest score of class c (Caffe's pre-NMS ``top_k``);
3. drop scores <= ``select_threshold``; greedy NMS at IoU > ``nms_threshold``;
4. over all classes keep the ``keep_top_k`` highest scores, sorted descending.
Steps 3-4 are ``tf.image.combined_non_max_suppression`` (one batched op).
"""

import collections

import tensorflow as tf

from nets import box_coding
from nets.layer_outputs import flatten_layers

Detections = collections.namedtuple("Detections", ["boxes", "scores", "classes", "num_detections"])
Detections.__doc__ = """boxes [B, K, 4] (ymin, xmin, ymax, xmax relative), scores [B, K], classes [B, K] int64
(0 in padding), num_detections [B] int32; rows past num_detections are zeros."""


def detected_bboxes(
    predictions,
    localisations,
    anchors,
    select_threshold=0.01,
    nms_threshold=0.45,
    top_k=400,
    keep_top_k=200,
    clip=True,
    prior_scaling=box_coding.PRIOR_SCALING,
    scope=None,
):
    """Detections from class probabilities [B, A, C] and offsets [B, A, 4] (or per-layer lists)."""
    with tf.name_scope(scope or "detected_bboxes"):
        probabilities = flatten_layers(predictions, 1)
        offsets = flatten_layers(localisations, 1)
        boxes = box_coding.decode(offsets, anchors, prior_scaling)
        if clip:
            boxes = tf.clip_by_value(boxes, 0.0, 1.0)
        num_anchors = probabilities.shape[1]
        if num_anchors is None:
            num_anchors = int(anchors.shape[0])
        per_class = min(int(top_k), int(num_anchors))
        class_scores = tf.transpose(probabilities[:, :, 1:], [0, 2, 1])
        top_scores, top_indices = tf.math.top_k(class_scores, k=per_class, sorted=True)
        candidate_boxes = tf.gather(boxes, top_indices, batch_dims=1)
        nms = tf.image.combined_non_max_suppression(
            boxes=tf.transpose(candidate_boxes, [0, 2, 1, 3]),
            scores=tf.transpose(top_scores, [0, 2, 1]),
            max_output_size_per_class=per_class,
            max_total_size=int(keep_top_k),
            iou_threshold=float(nms_threshold),
            score_threshold=float(select_threshold),
            pad_per_class=False,
            clip_boxes=False,
        )
        num_detections = tf.cast(nms.valid_detections, tf.int32)
        valid = tf.sequence_mask(num_detections, int(keep_top_k))
        classes = tf.where(valid, tf.cast(nms.nmsed_classes, tf.int64) + 1, tf.zeros_like(valid, tf.int64))
        return Detections(nms.nmsed_boxes, nms.nmsed_scores, classes, num_detections)
