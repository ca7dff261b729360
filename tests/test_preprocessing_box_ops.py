"""Box-aware ops against numpy references, and render_window against a materialised canvas."""

import numpy as np
import pytest
import tensorflow as tf

from preprocessing import box_ops
from tf_compat import tf1


def _run(build):
    with tf.Graph().as_default():
        output = build()
        with tf1.Session() as session:
            return session.run(output)


def _random_boxes(rng, count):
    corners = rng.uniform(0.0, 1.0, size=(count, 2, 2))
    low, high = corners.min(axis=1), corners.max(axis=1)
    return np.concatenate([low, high], axis=1).astype(np.float32)


def reference_iou(a, b):
    ious = np.zeros((len(a), len(b)))
    for i, (ay0, ax0, ay1, ax1) in enumerate(a):
        for j, (by0, bx0, by1, bx1) in enumerate(b):
            inter = max(0.0, min(ay1, by1) - max(ay0, by0)) * max(0.0, min(ax1, bx1) - max(ax0, bx0))
            union = (ay1 - ay0) * (ax1 - ax0) + (by1 - by0) * (bx1 - bx0) - inter
            ious[i, j] = inter / union if union > 0 else 0.0
    return ious


def reference_crop(window, boxes, labels):
    wy0, wx0, wy1, wx1 = window
    centers_y = (boxes[:, 0] + boxes[:, 2]) / 2
    centers_x = (boxes[:, 1] + boxes[:, 3]) / 2
    keep = (centers_y >= wy0) & (centers_y <= wy1) & (centers_x >= wx0) & (centers_x <= wx1)
    scale = np.array([wy1 - wy0, wx1 - wx0] * 2)
    cropped = np.clip((boxes[keep] - np.array([wy0, wx0] * 2)) / scale, 0.0, 1.0)
    return cropped, labels[keep]


def test_pairwise_iou_matches_numpy():
    rng = np.random.RandomState(0)
    windows, boxes = _random_boxes(rng, 6), _random_boxes(rng, 5)
    boxes[0] = boxes[0, [0, 1, 0, 1]]  # a zero-area box
    np.testing.assert_allclose(_run(lambda: box_ops.pairwise_iou(windows, boxes)), reference_iou(windows, boxes),
                               atol=1e-6)


def test_crop_boxes_matches_numpy():
    rng = np.random.RandomState(1)
    boxes = _random_boxes(rng, 12)
    labels = np.arange(1, 13, dtype=np.int64)
    window = np.array([0.2, 0.1, 0.7, 0.8], np.float32)
    cropped, kept_labels = _run(lambda: box_ops.crop_boxes(window, boxes, labels))
    expected_boxes, expected_labels = reference_crop(window, boxes, labels)
    np.testing.assert_array_equal(kept_labels, expected_labels)
    np.testing.assert_allclose(cropped, expected_boxes, atol=1e-6)
    assert 0 < len(kept_labels) < len(labels)


def test_window_composition_round_trips_boxes():
    rng = np.random.RandomState(2)
    boxes = _random_boxes(rng, 4)
    outer = np.array([-0.5, -1.0, 1.5, 2.0], np.float32)
    inner = np.array([0.1, 0.2, 0.6, 0.9], np.float32)

    def build():
        in_outer = box_ops.boxes_in_window(boxes, outer)
        direct = box_ops.boxes_in_window(boxes, box_ops.window_in_frame(inner, outer))
        return box_ops.boxes_in_window(in_outer, inner), direct

    two_steps, direct = _run(build)
    np.testing.assert_allclose(two_steps, direct, atol=1e-5)
    np.testing.assert_allclose(_run(lambda: box_ops.boxes_in_window(boxes, outer))[0],
                               (boxes[0] - [-0.5, -1.0, -0.5, -1.0]) / [2.0, 3.0, 2.0, 3.0], atol=1e-6)


def test_flip_and_degenerate_removal():
    boxes = np.array([[0.1, 0.2, 0.5, 0.3], [0.4, 0.4, 0.4, 0.9], [-0.2, 0.5, 0.3, 1.4], [0.5, 0.6, 0.2, 0.7]],
                     np.float32)
    labels = np.array([1, 2, 3, 4], np.int64)
    flipped, (kept, kept_labels) = _run(lambda: (box_ops.flip_boxes_left_right(boxes),
                                                 box_ops.remove_degenerate_boxes(boxes, labels)))
    np.testing.assert_allclose(flipped[0], [0.1, 0.7, 0.5, 0.8], atol=1e-6)
    np.testing.assert_array_equal(kept_labels, [1, 3])
    np.testing.assert_allclose(kept[1], [0.0, 0.5, 0.3, 1.0])


def test_sampled_crop_windows_respect_scale_and_aspect():
    windows = _run(lambda: box_ops.sample_crop_windows(tf.constant([3, 4], tf.int64), 500))
    heights, widths = windows[:, 2] - windows[:, 0], windows[:, 3] - windows[:, 1]
    assert windows.min() >= 0.0 and windows.max() <= 1.0 + 1e-6
    scales, aspects = np.sqrt(heights * widths), widths / heights
    assert scales.min() >= 0.3 - 1e-5 and scales.max() <= 1.0 + 1e-5
    assert aspects.min() >= 0.5 - 1e-4 and aspects.max() <= 2.0 + 1e-4
    assert scales.max() - scales.min() > 0.5  # the range is actually explored


@pytest.mark.parametrize("min_iou", [0.1, 0.5, 0.7])
def test_min_iou_crop_satisfies_its_constraint(min_iou):
    boxes = np.array([[0.1, 0.1, 0.6, 0.5], [0.4, 0.3, 0.95, 0.9], [0.2, 0.6, 0.5, 0.95]], np.float32)
    with tf.Graph().as_default():
        seed = tf1.placeholder(tf.int64, [])
        window = box_ops.sample_min_iou_crop(boxes, seed, min_iou_choices=(min_iou,))
        with tf1.Session() as session:
            windows = np.array([session.run(window, {seed: s}) for s in range(30)])
    cropped = [w for w in windows if not np.allclose(w, box_ops.IMAGE_WINDOW)]
    assert len(cropped) >= 5
    for w in cropped:
        centers = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
        inside = np.all((centers >= w[:2]) & (centers <= w[2:]), axis=1)
        ious = reference_iou(w[None], boxes)[0]
        assert np.any(inside & (ious >= min_iou - 1e-6)), (w, ious, inside)


def test_min_iou_crop_keeps_whole_frame_without_boxes_or_when_chosen():
    boxes = _random_boxes(np.random.RandomState(6), 3)

    def build():
        empty = tf.zeros([0, 4], tf.float32)
        return ([box_ops.sample_min_iou_crop(empty, s, min_iou_choices=(0.1,)) for s in range(5)]
                + [box_ops.sample_min_iou_crop(boxes, s, min_iou_choices=(None,)) for s in range(5)])

    for window in _run(build):
        np.testing.assert_array_equal(window, box_ops.IMAGE_WINDOW)


def test_expand_window_contains_the_image_and_respects_max_ratio():
    windows = _run(lambda: [box_ops.random_expand_window(s, max_ratio=4.0, probability=0.5) for s in range(40)])
    windows = np.array(windows)
    sizes = windows[:, 2:] - windows[:, :2]
    assert np.all(windows[:, :2] <= 0.0) and np.all(windows[:, 2:] >= 1.0)
    np.testing.assert_allclose(sizes[:, 0], sizes[:, 1], atol=1e-6)  # the canvas keeps the aspect ratio
    assert sizes.max() <= 4.0 + 1e-6
    unexpanded = np.sum(np.isclose(sizes[:, 0], 1.0))
    assert 5 <= unexpanded <= 35


def test_render_window_inside_image_matches_resize_of_the_crop():
    image = np.random.RandomState(7).uniform(-100, 100, size=(24, 36, 3)).astype(np.float32)
    window = np.array([4 / 24, 6 / 36, 20 / 24, 30 / 36], np.float32)  # a 16x24 crop, downsampled 2x
    rendered, expected = _run(lambda: (box_ops.render_window(image, window, (8, 12)),
                                       tf.image.resize(image[4:20, 6:30], (8, 12))))
    np.testing.assert_allclose(rendered, expected, atol=1e-3)


@pytest.mark.parametrize("method", ["bilinear", "nearest"])
def test_render_whole_image_matches_resize_when_upsampling(method):
    image = np.random.RandomState(8).uniform(-100, 100, size=(7, 9, 3)).astype(np.float32)
    resize_method = {"bilinear": "bilinear", "nearest": "nearest"}[method]
    rendered, expected = _run(lambda: (box_ops.render_window(image, box_ops.IMAGE_WINDOW, (20, 23), method=method),
                                       tf.image.resize(image, (20, 23), method=resize_method)))
    np.testing.assert_allclose(rendered, expected, atol=1e-3)


@pytest.mark.parametrize("out_shape", [(30, 40), (11, 13)])
def test_render_expanded_window_matches_resize_of_materialised_canvas(out_shape):
    image = np.random.RandomState(9).uniform(-100, 100, size=(10, 14, 3)).astype(np.float32)
    top, left, canvas_h, canvas_w = 5, 3, 25, 35
    canvas = np.zeros((canvas_h, canvas_w, 3), np.float32)  # zero = the mean colour after mean subtraction
    canvas[top:top + 10, left:left + 14] = image
    window = np.array([-top / 10, -left / 14, (canvas_h - top) / 10, (canvas_w - left) / 14], np.float32)
    rendered, expected, flipped = _run(lambda: (box_ops.render_window(image, window, out_shape),
                                                tf.image.resize(canvas, out_shape),
                                                box_ops.render_window(image, window, out_shape, flip=True)))
    np.testing.assert_allclose(rendered, expected, atol=1e-3)
    np.testing.assert_allclose(flipped, rendered[:, ::-1], atol=1e-3)


def test_render_window_rejects_unknown_method():
    with pytest.raises(ValueError, match="method"):
        box_ops.render_window(np.zeros((2, 2, 3), np.float32), box_ops.IMAGE_WINDOW, (2, 2), method="bicubic")
