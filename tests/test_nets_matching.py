"""Matching and target encoding against a plain numpy reference of the paper's (Caffe SSD's) rule."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nets import matching, nets_factory
from test_nets_anchors import centers_to_corners
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


def reference_bipartite(iou, valid):
    """Caffe's MatchBBox bipartite stage, one pair at a time: while some box is unmatched, the
    highest-IoU (box, anchor) pair among unmatched boxes and untaken anchors is matched (ties: the
    lower box, then the lower anchor); it stops when no such pair overlaps. iou [A, N] -> [N]."""
    work = np.where(np.asarray(valid)[np.newaxis, :], iou, -np.inf).T.astype(np.float64)  # [N, A]
    box_anchor = np.full(work.shape[0], -1)
    while work.size and (box_anchor < 0).any():
        n, a = np.unravel_index(int(np.argmax(work)), work.shape)  # first maximum in (box, anchor) order
        if not work[n, a] > 0:
            break
        box_anchor[n] = a
        work[n, :] = -np.inf
        work[:, a] = -np.inf
    return box_anchor


def reference_targets(labels, boxes, anchors, match_threshold=0.5, negative_threshold=None):
    """The paper's rule: bipartite stage, then each other anchor takes its best box at IoU >= threshold."""
    corners = centers_to_corners(anchors).astype(np.float32)
    num_anchors, num_boxes = len(anchors), len(labels)
    valid = np.array([labels[n] > 0 and boxes[n][2] > boxes[n][0] and boxes[n][3] > boxes[n][1]
                      for n in range(num_boxes)], bool)
    iou = np.zeros((num_anchors, num_boxes), np.float32)
    for n in np.flatnonzero(valid):
        iou[:, n] = _np_iou(corners, boxes[n])
    taken_by = {int(a): n for n, a in enumerate(reference_bipartite(iou, valid)) if a >= 0}
    classes = np.zeros(num_anchors, np.int64)
    box_targets = np.zeros((num_anchors, 4))
    positive = np.zeros(num_anchors, np.float32)
    negative = np.zeros(num_anchors, np.float32)
    ious = np.zeros(num_anchors, np.float32)
    for a in range(num_anchors):
        best = int(np.argmax(iou[a])) if num_boxes else -1
        best_iou = float(iou[a, best]) if num_boxes else 0.0
        if a in taken_by:
            n = taken_by[a]
        elif best_iou >= match_threshold:
            n = best
        else:
            ious[a] = best_iou
            if negative_threshold is None or best_iou < negative_threshold:
                negative[a] = 1.0
            continue
        classes[a] = labels[n]
        ious[a] = iou[a, n]
        positive[a] = 1.0
        box_targets[a] = _np_encode(boxes[n], anchors[a])
    return matching.Targets(classes, box_targets, positive, negative, ious)


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
    np.testing.assert_array_equal(actual.classes, expected.classes)
    np.testing.assert_array_equal(actual.positive_weights, expected.positive_weights)
    np.testing.assert_array_equal(actual.negative_weights, expected.negative_weights)
    np.testing.assert_allclose(actual.ious, expected.ious, atol=1e-6)
    np.testing.assert_allclose(actual.boxes, expected.boxes, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def small_anchors():
    return nets_factory.get_network("ssd_300_vgg", img_shape=(96, 96)).flat_anchors()


# ----------------------------------------------------------------------------- the bipartite stage
def _run_bipartite(iou, valid):
    with tf.Graph().as_default():
        out = matching.bipartite_match(tf.constant(iou, tf.float32), tf.constant(valid))
        with tf1.Session() as sess:
            return sess.run(out)


def test_bipartite_hand_worked_case():
    # 3 anchors x 3 boxes. Greedy: (box 1, anchor 0) = 0.9 first; then box 0's best untaken anchor is
    # anchor 1 (0.6, its 0.8 on anchor 0 is gone) while box 2 has 0.7 on anchor 1: box 2 takes anchor 1
    # (0.7 > 0.6), and box 0 ends on anchor 2 (0.1).
    iou = np.array([[[0.8, 0.9, 0.0],
                     [0.6, 0.0, 0.7],
                     [0.1, 0.0, 0.0]]], np.float32)
    assert _run_bipartite(iou, np.ones([1, 3], bool)).tolist() == [[2, 0, 1]]
    assert reference_bipartite(iou[0], np.ones(3, bool)).tolist() == [2, 0, 1]


def test_bipartite_ties_go_to_the_lower_box_then_the_lower_anchor():
    iou = np.array([[[0.5, 0.5], [0.5, 0.5], [0.2, 0.0]]], np.float32)
    assert _run_bipartite(iou, np.ones([1, 2], bool)).tolist() == [[0, 1]]


def test_bipartite_skips_invalid_boxes_and_boxes_without_overlap():
    iou = np.array([[[0.9, 0.0, 0.8], [0.1, 0.0, 0.3]]], np.float32)  # box 1 overlaps nothing
    assert _run_bipartite(iou, np.array([[False, True, True]])).tolist() == [[-1, -1, 0]]


@pytest.mark.parametrize("seed", range(6))
def test_bipartite_equals_the_one_pair_at_a_time_reference_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    batch, anchors, boxes = 3, 40, int(rng.integers(1, 25))
    # Few distinct values: many ties, many contested anchors, zeros (no overlap) too.
    iou = rng.integers(0, 6, (batch, anchors, boxes)).astype(np.float32) / 5.0
    valid = rng.uniform(size=(batch, boxes)) < 0.85
    actual = _run_bipartite(iou, valid)
    for b in range(batch):
        np.testing.assert_array_equal(actual[b], reference_bipartite(iou[b], valid[b]))


# ----------------------------------------------------------------------------- targets
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
    assert (expected.classes > 0).sum() >= 20


def test_empty_image_has_no_positive(small_anchors):
    targets = _encode(np.zeros([0], np.int64), np.zeros([0, 4]), small_anchors)
    assert targets.classes.shape == (len(small_anchors),) and targets.classes.dtype == np.int64
    assert not targets.classes.any() and not targets.boxes.any() and not targets.ious.any()
    assert not targets.positive_weights.any() and targets.negative_weights.all()
    assert targets.boxes.dtype == np.float32 and targets.ious.dtype == np.float32


def test_one_box(small_anchors):
    labels, boxes = np.array([3]), np.array([[0.2, 0.3, 0.7, 0.6]], np.float32)
    actual = _encode(labels, boxes, small_anchors)
    _assert_same(actual, reference_targets(labels, boxes, small_anchors))
    assert set(np.unique(actual.classes)) == {0, 3}
    np.testing.assert_array_equal(actual.positive_weights + actual.negative_weights, 1.0)


def test_box_smaller_than_any_anchor_still_gets_its_best_anchor(small_anchors):
    labels, boxes = np.array([2]), np.array([[0.50, 0.50, 0.505, 0.505]], np.float32)
    actual = _encode(labels, boxes, small_anchors)
    _assert_same(actual, reference_targets(labels, boxes, small_anchors))
    assert (actual.classes == 2).sum() == 1
    assert 0 < actual.ious[actual.classes == 2][0] < 0.5


def test_near_duplicate_boxes_competing_for_one_anchor_both_get_one(small_anchors):
    corners = centers_to_corners(small_anchors)
    target = corners[5].astype(np.float32)  # a block4 anchor both boxes fit best
    shrink = np.array([0.002, 0.002, -0.002, -0.002], np.float32)
    boxes = np.stack([target + 2 * shrink, target + shrink])
    labels = np.array([1, 4])
    ious = [_np_iou(corners, box) for box in boxes]
    assert int(np.argmax(ious[0])) == int(np.argmax(ious[1])) == 5 and ious[1][5] > ious[0][5]
    actual = _encode(labels, boxes, small_anchors)
    _assert_same(actual, reference_targets(labels, boxes, small_anchors))
    assert actual.classes[5] == 4  # the box with the higher IoU keeps the contested anchor
    assert actual.ious[5] == pytest.approx(ious[1][5], abs=1e-6)
    second_best = int(np.argsort(-ious[0], kind="stable")[1])
    assert actual.classes[second_best] == 1  # the other box takes its next-best anchor


def test_every_box_gets_its_anchor_before_thresholds(small_anchors):
    # A big box over a small one: the small box's best anchor also overlaps the big box more.
    labels = np.array([1, 2])
    boxes = np.array([[0.1, 0.1, 0.9, 0.9], [0.45, 0.45, 0.52, 0.52]], np.float32)
    actual = _encode(labels, boxes, small_anchors)
    _assert_same(actual, reference_targets(labels, boxes, small_anchors))
    assert (actual.classes == 2).sum() >= 1 and (actual.classes == 1).sum() >= 1


def test_forced_match_below_threshold_is_positive(small_anchors):
    labels, boxes = np.array([1]), np.array([[0.0, 0.0, 0.9, 0.15]], np.float32)
    actual = _encode(labels, boxes, small_anchors)
    assert (actual.classes == 1).sum() >= 1
    assert actual.ious[actual.classes == 1].max() < 0.5  # no anchor reaches 0.5 on this thin box, yet one is positive


def test_ignore_band(small_anchors):
    rng = np.random.default_rng(3)
    labels, boxes = _random_image(rng, 4)
    actual = _encode(labels, boxes, small_anchors, negative_threshold=0.3)
    expected = reference_targets(labels, boxes, small_anchors, negative_threshold=0.3)
    _assert_same(actual, expected)
    ignored = (actual.positive_weights == 0) & (actual.negative_weights == 0)
    assert ignored.any()
    assert ((actual.ious[ignored] >= 0.3) & (actual.ious[ignored] < 0.5)).all()
    assert not actual.negative_weights[actual.ious >= 0.3].any()
    assert not actual.classes[ignored].any()
    with pytest.raises(ValueError, match="negative_threshold"):
        _encode(labels, boxes, small_anchors, negative_threshold=0.7)
    with pytest.raises(ValueError, match="match_threshold"):
        _encode(labels, boxes, small_anchors, match_threshold=0.0)


def test_padding_and_zero_area_boxes_never_match(small_anchors):
    labels = np.array([0, 2, 3])
    boxes = np.array([[0.1, 0.1, 0.6, 0.6], [0.3, 0.3, 0.3, 0.8], [0.2, 0.2, 0.7, 0.7]], np.float32)
    actual = _encode(labels, boxes, small_anchors)
    _assert_same(actual, reference_targets(labels, boxes, small_anchors))
    assert set(np.unique(actual.classes)) == {0, 3}


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


def test_dynamic_box_count_and_shapes(small_anchors):
    with tf.Graph().as_default():
        labels = tf1.placeholder(tf.int64, [None, None])
        boxes = tf1.placeholder(tf.float32, [None, None, 4])
        targets = matching.bboxes_encode(labels, boxes, small_anchors)
        assert targets.classes.shape.as_list() == [None, len(small_anchors)]
        assert targets.boxes.shape.as_list() == [None, len(small_anchors), 4]
        with tf1.Session() as sess:
            out = sess.run(targets.classes, {labels: np.zeros([2, 0]), boxes: np.zeros([2, 0, 4])})
    assert out.shape == (2, len(small_anchors)) and not out.any()


def test_targets_travel_through_a_dict_and_back():
    targets = matching.Targets(*range(5))
    assert matching.targets_from_dict(matching.targets_to_dict(targets)) == targets
    assert set(matching.targets_to_dict(targets)) == set(matching.TARGET_KEYS)


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
        dataset = tf.data.Dataset.from_tensor_slices((labels, boxes)).map(
            lambda l, b: matching.targets_to_dict(net.bboxes_encode(l, b))).batch(3)
        in_pipeline = tf1.data.make_one_shot_iterator(dataset).get_next()
        in_tower = net.bboxes_encode(tf.constant(labels), tf.constant(boxes))
        with tf1.Session() as sess:
            pipeline_np, tower_np = sess.run([in_pipeline, in_tower])
    pipeline_np = matching.targets_from_dict(pipeline_np)
    for field in ("classes", "positive_weights", "negative_weights"):
        np.testing.assert_array_equal(getattr(pipeline_np, field), getattr(tower_np, field))
    # Offsets and IoUs may differ in the last bit between the two kernels' vectorisations.
    np.testing.assert_allclose(pipeline_np.boxes, tower_np.boxes, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pipeline_np.ious, tower_np.ious, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- property: no box is lost
def _box(cy, cx, h, w):
    return [cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2]


@st.composite
def adversarial_boxes(draw):
    """Random, near-duplicate, tiny, huge and border-touching boxes, clipped to the image."""
    boxes = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["random", "duplicates", "tiny", "huge", "border"]))
        unit = st.floats(0.0, 1.0)
        if kind == "random":
            boxes.append(_box(draw(unit), draw(unit), draw(st.floats(0.005, 1.0)), draw(st.floats(0.005, 1.0))))
        elif kind == "duplicates":
            base = _box(draw(st.floats(0.05, 0.95)), draw(st.floats(0.05, 0.95)),
                        draw(st.floats(0.04, 0.1)), draw(st.floats(0.04, 0.1)))  # 12-30 px at 300
            for _ in range(draw(st.integers(2, 8))):
                jitter = draw(st.lists(st.floats(-0.004, 0.004), min_size=4, max_size=4))
                boxes.append([v + d for v, d in zip(base, jitter)])
        elif kind == "tiny":
            boxes.append(_box(draw(unit), draw(unit), draw(st.floats(1e-4, 0.01)), draw(st.floats(1e-4, 0.01))))
        elif kind == "huge":
            boxes.append(_box(draw(st.floats(0.4, 0.6)), draw(st.floats(0.4, 0.6)),
                              draw(st.floats(0.9, 1.2)), draw(st.floats(0.9, 1.2))))
        else:
            side = draw(st.floats(0.01, 0.3))
            edge = draw(st.sampled_from(["top", "left", "bottom", "right", "corner"]))
            cy, cx = draw(unit), draw(unit)
            cy = {"top": side / 2, "bottom": 1 - side / 2, "corner": side / 2}.get(edge, cy)
            cx = {"left": side / 2, "right": 1 - side / 2, "corner": 1 - side / 2}.get(edge, cx)
            boxes.append(_box(cy, cx, side, side))
    return np.clip(np.array(boxes, np.float32), 0.0, 1.0)


class _Matcher:
    """One graph and session per network size, fed by every hypothesis example."""

    def __init__(self, model_name):
        self.net = nets_factory.get_network(model_name)
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.labels = tf1.placeholder(tf.int64, [None])
            self.boxes = tf1.placeholder(tf.float32, [None, 4])
            single, labels, boxes = matching._batched_inputs(self.labels, self.boxes)
            assigned, positive, _, ious = matching.match_anchors(labels, boxes, self.net.flat_anchors())
            self.outputs = (assigned[0], positive[0], ious[0])
            self.targets = self.net.bboxes_encode(self.labels, self.boxes)
            self.session = tf1.Session()

    def run(self, labels, boxes):
        return self.session.run((self.outputs, self.targets), {self.labels: labels, self.boxes: boxes})


@pytest.fixture(scope="module", params=["ssd_300_vgg", "ssd_512_vgg"])
def full_size_matcher(request):
    matcher = _Matcher(request.param)
    yield matcher
    matcher.session.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(boxes=adversarial_boxes())
def test_every_valid_box_gets_a_positive_anchor(full_size_matcher, boxes):
    labels = np.arange(1, len(boxes) + 1, dtype=np.int64)
    (assigned, positive, _), targets = full_size_matcher.run(labels, boxes)
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    covered = set(assigned[positive].tolist())
    lost = [n for n in np.flatnonzero(valid) if n not in covered]
    assert not lost, f"boxes {lost} of {len(boxes)} have no positive anchor: {boxes[lost]}"
    assert not (set(assigned[positive].tolist()) - set(np.flatnonzero(valid).tolist()))
    np.testing.assert_array_equal(targets.classes, np.where(positive, labels[assigned], 0))
