"""Post-processing against numpy: decode, clip, per-class top-k and greedy NMS, keep-top-k."""

import numpy as np
import pytest
import tensorflow as tf

from nets import nets_factory, post_processing
from tf_compat import tf1


def _np_decode(offsets, anchors, scaling=(0.1, 0.1, 0.2, 0.2)):
    cy, cx, h, w = anchors.T
    cx = offsets[..., 0] * w * scaling[0] + cx
    cy = offsets[..., 1] * h * scaling[1] + cy
    width = w * np.exp(offsets[..., 2] * scaling[2])
    height = h * np.exp(offsets[..., 3] * scaling[3])
    return np.stack([cy - height / 2, cx - width / 2, cy + height / 2, cx + width / 2], axis=-1)


def _np_iou(a, b):
    inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def greedy_nms(boxes, scores, threshold):
    keep = []
    for index in np.argsort(-scores, kind="stable"):
        if all(_np_iou(boxes[index], boxes[kept]) <= threshold for kept in keep):
            keep.append(index)
    return keep


def reference_detections(probabilities, offsets, anchors, select_threshold, nms_threshold, top_k, keep_top_k, clip):
    results = []
    for b in range(probabilities.shape[0]):
        boxes = _np_decode(offsets[b].astype(np.float64), anchors.astype(np.float64))
        if clip:
            boxes = np.clip(boxes, 0, 1)
        found = []
        for c in range(1, probabilities.shape[2]):
            scores = probabilities[b, :, c]
            candidates = np.argsort(-scores, kind="stable")[:top_k]
            candidates = candidates[scores[candidates] > select_threshold]
            for kept in greedy_nms(boxes[candidates], scores[candidates], nms_threshold):
                anchor = candidates[kept]
                found.append((scores[anchor], c, boxes[anchor]))
        found.sort(key=lambda item: -item[0])
        results.append(found[:keep_top_k])
    return results


def _random_outputs(rng, batch, anchors, classes):
    logits = rng.normal(0, 3, (batch, anchors, classes))
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    offsets = rng.normal(0, 1, (batch, anchors, 4))
    return probabilities.astype(np.float32), offsets.astype(np.float32)


def _run(probabilities, offsets, anchors, **kwargs):
    with tf.Graph().as_default():
        detections = post_processing.detected_bboxes(
            tf.constant(probabilities), tf.constant(offsets), anchors, **kwargs
        )
        with tf1.Session() as sess:
            return sess.run(detections)


def _compare(detections, expected, keep_top_k):
    assert detections.boxes.shape[1:] == (keep_top_k, 4)
    for b, found in enumerate(expected):
        count = detections.num_detections[b]
        assert count == len(found)
        np.testing.assert_allclose(detections.scores[b, :count], [f[0] for f in found], rtol=1e-6)
        np.testing.assert_array_equal(detections.classes[b, :count], [f[1] for f in found])
        if count:
            np.testing.assert_allclose(detections.boxes[b, :count], np.stack([f[2] for f in found]), atol=1e-5)
        assert not detections.scores[b, count:].any() and not detections.classes[b, count:].any()
        assert not detections.boxes[b, count:].any()


@pytest.mark.parametrize(
    "select_threshold,nms_threshold,top_k,keep_top_k,clip",
    [(0.05, 0.45, 400, 200, True), (0.3, 0.3, 20, 15, False), (0.01, 0.6, 50, 8, True), (0.99, 0.45, 400, 200, True)],
)
def test_matches_numpy_greedy_nms(select_threshold, nms_threshold, top_k, keep_top_k, clip):
    net = nets_factory.get_network("ssd_300_vgg", img_shape=(96, 96), num_classes=4)
    anchors = net.flat_anchors()
    probabilities, offsets = _random_outputs(np.random.default_rng(int(nms_threshold * 100)), 2, len(anchors), 4)
    kwargs = dict(select_threshold=select_threshold, nms_threshold=nms_threshold, top_k=top_k, keep_top_k=keep_top_k,
                  clip=clip)
    detections = _run(probabilities, offsets, anchors, **kwargs)
    _compare(detections, reference_detections(probabilities, offsets, anchors, **kwargs), keep_top_k)
    assert detections.classes.dtype == np.int64 and detections.num_detections.dtype == np.int32


def test_overlapping_boxes_of_one_class_are_suppressed_other_classes_kept():
    anchors = np.array([[0.5, 0.5, 0.4, 0.4], [0.52, 0.5, 0.4, 0.4], [0.2, 0.2, 0.1, 0.1]], np.float32)
    probabilities = np.array([[[0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.3, 0.6, 0.1]]], np.float32)
    # Anchor 1 overlaps anchor 0: its class-1 score (0.25) is suppressed, its class-2 score (0.7) survives.
    # Class-2 scores of exactly select_threshold (0.1) are dropped: only scores above it count.
    probabilities[0, 1] = [0.05, 0.25, 0.7]
    detections = _run(probabilities, np.zeros([1, 3, 4], np.float32), anchors, select_threshold=0.1,
                      nms_threshold=0.45, top_k=10, keep_top_k=5)
    assert detections.num_detections[0] == 3
    np.testing.assert_allclose(detections.scores[0, :3], [0.8, 0.7, 0.6], atol=1e-6)
    np.testing.assert_array_equal(detections.classes[0, :3], [1, 2, 1])


def test_ssdnet_detected_bboxes_accepts_per_layer_lists():
    net = nets_factory.get_network("ssd_300_vgg", img_shape=(64, 64), num_classes=3)
    rng = np.random.default_rng(0)
    probabilities, offsets = _random_outputs(rng, 2, net.num_anchors, 3)
    layers_p, layers_l, start = [], [], 0
    for (h, w), sizes, ratios in zip(net.params.feat_shapes, net.params.anchor_sizes, net.params.anchor_ratios):
        k = len(sizes) + len(ratios)
        layers_p.append(probabilities[:, start : start + h * w * k].reshape(2, h, w, k, 3))
        layers_l.append(offsets[:, start : start + h * w * k].reshape(2, h, w, k, 4))
        start += h * w * k
    with tf.Graph().as_default():
        listed = net.detected_bboxes([tf.constant(p) for p in layers_p], [tf.constant(l) for l in layers_l],
                                     select_threshold=0.2, nms_threshold=0.45, top_k=100, keep_top_k=30)
        flat = net.detected_bboxes(tf.constant(probabilities), tf.constant(offsets), select_threshold=0.2,
                                   nms_threshold=0.45, top_k=100, keep_top_k=30)
        with tf1.Session() as sess:
            listed_np, flat_np = sess.run([listed, flat])
    for a, b in zip(listed_np, flat_np):
        np.testing.assert_array_equal(a, b)
    assert listed_np.boxes.min() >= 0 and listed_np.boxes.max() <= 1
