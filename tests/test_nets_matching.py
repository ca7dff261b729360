"""Vectorised matching and target encoding against a straightforward numpy implementation."""

import numpy as np
import pytest
import tensorflow as tf

from nets import anchors as anchors_lib
from nets import matching, nets_factory
from tf_compat import tf1

SCALING = (0.1, 0.1, 0.2, 0.2)


# ----------------------------------------------------------------------------- numpy reference
def _np_iou(corners, box):
    inter_h = np.maximum(np.minimum(corners[:, 2], box[2]) - np.maximum(corners[:, 0], box[0]), 0)
    inter_w = np.maximum(np.minimum(corners[:, 3], box[3]) - np.maximum(corners[:, 1], box[1]), 0)
    inter = inter_h * inter_w
    union = (corners[:, 2] - corners[:, 0]) * (corners[:, 3] - corners[:, 1]) + (box[2] - box[0]) * (box[3] - box[1])
    union = union - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0).astype(np.float32)


def _np_encode(box, anchor):
    cy, cx, h, w = anchor.astype(np.float64)
    ymin, xmin, ymax, xmax = box.astype(np.float64)
    return np.array(
        [
            ((xmin + xmax) / 2 - cx) / w / SCALING[0],
            ((ymin + ymax) / 2 - cy) / h / SCALING[1],
            np.log((xmax - xmin) / w) / SCALING[2],
            np.log((ymax - ymin) / h) / SCALING[3],
        ]
    )


def reference_targets(labels, boxes, anchors, match_threshold=0.5, negative_threshold=None):
    """The paper's rule, written plainly: best anchor per box first, then thresholded best box per anchor."""
    corners = anchors_lib.centers_to_corners(anchors).astype(np.float32)
    num_anchors, num_boxes = len(anchors), len(labels)
    iou = np.full((num_anchors, num_boxes), -1.0, np.float32)
    for n in range(num_boxes):
        ymin, xmin, ymax, xmax = boxes[n]
        if labels[n] > 0 and ymax > ymin and xmax > xmin:
            iou[:, n] = _np_iou(corners, boxes[n])
    claims = {}
    for n in range(num_boxes):
        if iou[:, n].max() <= 0:
            continue
        a = int(np.argmax(iou[:, n]))
        if a not in claims or iou[a, n] > iou[a, claims[a]]:
            claims[a] = n
    gclasses = np.zeros(num_anchors, np.int64)
    glocalisations = np.zeros((num_anchors, 4))
    gscores = np.zeros(num_anchors, np.float32)
    for a in range(num_anchors):
        best = int(np.argmax(iou[a])) if num_boxes else -1
        best_iou = max(float(iou[a, best]), 0.0) if num_boxes else 0.0
        if a in claims:
            n = claims[a]
        elif best_iou >= match_threshold:
            n = best
        else:
            gscores[a] = best_iou
            if negative_threshold is not None and best_iou >= negative_threshold:
                gclasses[a] = -1
            continue
        gclasses[a] = labels[n]
        gscores[a] = iou[a, n]
        glocalisations[a] = _np_encode(boxes[n], anchors[a])
    return gclasses, glocalisations, gscores


# ----------------------------------------------------------------------------- helpers
def _random_image(rng, num_boxes, num_classes=5, min_size=0.02, max_size=0.7):
    centre = rng.uniform(0.1, 0.9, (num_boxes, 2))
    size = rng.uniform(min_size, max_size, (num_boxes, 2))
    boxes = np.clip(np.concatenate([centre - size / 2, centre + size / 2], axis=1), 0, 1).astype(np.float32)
    labels = rng.integers(1, num_classes, num_boxes).astype(np.int64)
    return labels, boxes


def _encode(labels, boxes, anchors, **kwargs):
    with tf.Graph().as_default():
        out = matching.bboxes_encode(tf.constant(labels), tf.constant(boxes, tf.float32), anchors, **kwargs)
        with tf1.Session() as sess:
            return sess.run(out)


def _assert_same(actual, expected):
    gclasses, glocalisations, gscores = actual
    np.testing.assert_array_equal(gclasses, expected[0])
    np.testing.assert_allclose(gscores, expected[2], atol=1e-6)
    np.testing.assert_allclose(glocalisations, expected[1], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def small_anchors():
    return nets_factory.get_network("ssd_300_vgg", img_shape=(96, 96)).flat_anchors()


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("seed", range(4))
def test_random_images_match_the_reference(small_anchors, seed):
    rng = np.random.default_rng(seed)
    labels, boxes = _random_image(rng, int(rng.integers(1, 9)))
    _assert_same(_encode(labels, boxes, small_anchors), reference_targets(labels, boxes, small_anchors))


def test_full_size_ssd300_anchors_with_many_boxes():
    anchors = nets_factory.get_network("ssd_300_vgg").flat_anchors()
    labels, boxes = _random_image(np.random.default_rng(7), 20, min_size=0.01)
    expected = reference_targets(labels, boxes, anchors)
    _assert_same(_encode(labels, boxes, anchors), expected)
    assert (expected[0] > 0).sum() >= 20


def test_empty_image_has_no_positive(small_anchors):
    gclasses, glocalisations, gscores = _encode(np.zeros([0], np.int64), np.zeros([0, 4]), small_anchors)
    assert gclasses.shape == (len(small_anchors),) and gclasses.dtype == np.int64
    assert not gclasses.any() and not glocalisations.any() and not gscores.any()
    assert glocalisations.dtype == np.float32 and gscores.dtype == np.float32


def test_one_box(small_anchors):
    labels, boxes = np.array([3]), np.array([[0.2, 0.3, 0.7, 0.6]], np.float32)
    actual = _encode(labels, boxes, small_anchors)
    _assert_same(actual, reference_targets(labels, boxes, small_anchors))
    assert set(np.unique(actual[0])) == {0, 3}


def test_box_smaller_than_any_anchor_still_gets_its_best_anchor(small_anchors):
    labels, boxes = np.array([2]), np.array([[0.50, 0.50, 0.505, 0.505]], np.float32)
    gclasses, _, gscores = actual = _encode(labels, boxes, small_anchors)
    _assert_same(actual, reference_targets(labels, boxes, small_anchors))
    assert (gclasses == 2).sum() == 1
    assert 0 < gscores[gclasses == 2][0] < 0.5


def test_overlapping_boxes_competing_for_one_anchor(small_anchors):
    corners = anchors_lib.centers_to_corners(small_anchors)
    target = corners[5].astype(np.float32)  # a block4 anchor both boxes fit best
    shrink = np.array([0.002, 0.002, -0.002, -0.002], np.float32)
    boxes = np.stack([target + 2 * shrink, target + shrink])
    labels = np.array([1, 4])
    ious = [_np_iou(corners, box) for box in boxes]
    assert int(np.argmax(ious[0])) == int(np.argmax(ious[1])) == 5 and ious[1][5] > ious[0][5]
    gclasses, _, gscores = actual = _encode(labels, boxes, small_anchors)
    _assert_same(actual, reference_targets(labels, boxes, small_anchors))
    assert gclasses[5] == 4  # the box with the higher IoU keeps the contested anchor
    assert gscores[5] == pytest.approx(ious[1][5], abs=1e-6)


def test_every_box_gets_its_best_anchor_before_thresholds(small_anchors):
    # A big box over a small one: the small box's best anchor also overlaps the big box more.
    labels = np.array([1, 2])
    boxes = np.array([[0.1, 0.1, 0.9, 0.9], [0.45, 0.45, 0.52, 0.52]], np.float32)
    gclasses, _, gscores = actual = _encode(labels, boxes, small_anchors)
    _assert_same(actual, reference_targets(labels, boxes, small_anchors))
    corners = anchors_lib.centers_to_corners(small_anchors)
    best_of_small = int(np.argmax(_np_iou(corners, boxes[1])))
    assert gclasses[best_of_small] == 2
    assert (gclasses == 2).sum() >= 1 and (gclasses == 1).sum() >= 1


def test_forced_match_below_threshold_is_positive(small_anchors):
    labels, boxes = np.array([1]), np.array([[0.0, 0.0, 0.9, 0.15]], np.float32)
    gclasses, _, gscores = _encode(labels, boxes, small_anchors)
    assert (gclasses == 1).sum() >= 1
    assert gscores[gclasses == 1].max() < 0.5  # no anchor reaches 0.5 on this thin box, yet one is positive


def test_ignore_band(small_anchors):
    rng = np.random.default_rng(3)
    labels, boxes = _random_image(rng, 4)
    actual = _encode(labels, boxes, small_anchors, negative_threshold=0.3)
    expected = reference_targets(labels, boxes, small_anchors, negative_threshold=0.3)
    _assert_same(actual, expected)
    ignored = actual[0] == -1
    assert ignored.any()
    assert ((actual[2][ignored] >= 0.3) & (actual[2][ignored] < 0.5)).all()
    assert not (actual[0] == 0)[actual[2] >= 0.3].any()
    with pytest.raises(ValueError, match="negative_threshold"):
        _encode(labels, boxes, small_anchors, negative_threshold=0.7)


def test_padding_and_zero_area_boxes_never_match(small_anchors):
    labels = np.array([0, 2, 3])
    boxes = np.array([[0.1, 0.1, 0.6, 0.6], [0.3, 0.3, 0.3, 0.8], [0.2, 0.2, 0.7, 0.7]], np.float32)
    gclasses, _, _ = actual = _encode(labels, boxes, small_anchors)
    _assert_same(actual, reference_targets(labels, boxes, small_anchors))
    assert set(np.unique(gclasses)) == {0, 3}


def test_padded_batch_equals_images_one_by_one(small_anchors):
    rng = np.random.default_rng(11)
    images = [_random_image(rng, n) for n in (3, 0, 6, 1)]
    width = max(len(labels) for labels, _ in images)
    batch_labels = np.zeros([len(images), width], np.int64)
    batch_boxes = np.zeros([len(images), width, 4], np.float32)
    for i, (labels, boxes) in enumerate(images):
        batch_labels[i, : len(labels)] = labels
        batch_boxes[i, : len(labels)] = boxes
    batched = _encode(batch_labels, batch_boxes, small_anchors)
    for i, (labels, boxes) in enumerate(images):
        single = _encode(labels, boxes.reshape(-1, 4), small_anchors)
        for got, want in zip((b[i] for b in batched), single):
            np.testing.assert_array_equal(got, want)


def test_graph_has_no_loop_and_dynamic_box_count_works(small_anchors):
    with tf.Graph().as_default() as graph:
        labels = tf1.placeholder(tf.int64, [None, None])
        boxes = tf1.placeholder(tf.float32, [None, None, 4])
        gclasses, glocalisations, gscores = matching.bboxes_encode(labels, boxes, small_anchors)
        assert gclasses.shape.as_list() == [None, len(small_anchors)]
        assert not {op.type for op in graph.get_operations()} & {"While", "StatelessWhile", "Enter", "Exit"}
        with tf1.Session() as sess:
            out = sess.run(gclasses, {labels: np.zeros([2, 0]), boxes: np.zeros([2, 0, 4])})
    assert out.shape == (2, len(small_anchors)) and not out.any()


def test_bad_ranks_raise_a_clear_error(small_anchors):
    with tf.Graph().as_default(), pytest.raises(ValueError, match="labels"):
        matching.bboxes_encode(tf.zeros([2, 3], tf.int64), tf.zeros([3, 4]), small_anchors)


def test_per_image_encoding_inside_tf_data_equals_batched_encoding_in_the_graph():
    net = nets_factory.get_network("ssd_300_vgg", img_shape=(96, 96))
    rng = np.random.default_rng(5)
    images = [_random_image(rng, n) for n in (2, 5, 1)]
    width = 5
    labels = np.zeros([3, width], np.int64)
    boxes = np.zeros([3, width, 4], np.float32)
    for i, (image_labels, image_boxes) in enumerate(images):
        labels[i, : len(image_labels)] = image_labels
        boxes[i, : len(image_labels)] = image_boxes
    with tf.Graph().as_default():
        dataset = tf.data.Dataset.from_tensor_slices((labels, boxes)).map(net.bboxes_encode).batch(3)
        in_pipeline = tf1.data.make_one_shot_iterator(dataset).get_next()
        in_tower = net.bboxes_encode(tf.constant(labels), tf.constant(boxes))
        with tf1.Session() as sess:
            pipeline_np, tower_np = sess.run([in_pipeline, in_tower])
    for a, b in zip(pipeline_np, tower_np):
        np.testing.assert_array_equal(a, b)
