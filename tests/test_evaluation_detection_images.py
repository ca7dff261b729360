"""Detections beside ground truth as TensorBoard pictures (evaluation.detection_images), on literal boxes."""

import io

import numpy as np
import tensorflow as tf
from PIL import Image

from evaluation import detection_images
from evaluation.detection_images import GAP, comparison_images, image_summary
from preprocessing.visualization import class_colour
from tf_compat import tf1

HEIGHT, WIDTH = 160, 200  # large enough to be drawn at scale 1
GREY = 100
LABELS = {1: "RBC", 2: "WBC", 3: "Platelets"}
RIGHT = WIDTH + GAP  # x of the ground-truth panel's first column


def _image(height=HEIGHT, width=WIDTH):
    return np.full((height, width, 3), GREY, np.uint8)


def _detections(boxes=(), scores=(), classes=(), **extra):
    return {"boxes": np.array(boxes, np.float32).reshape(-1, 4), "scores": np.array(scores, np.float32),
            "classes": np.array(classes, np.int64), **extra}


def _ground_truth(boxes=(), labels=(), **extra):
    return {"boxes": np.array(boxes, np.float32).reshape(-1, 4), "labels": np.array(labels, np.int64), **extra}


def _one(detections, ground_truth, **kwargs):
    [picture] = comparison_images([_image()], [detections], [ground_truth], LABELS, **kwargs)
    return picture


def _assert_colour(picture, y, x, colour):
    np.testing.assert_array_equal(picture[y, x], colour, err_msg=f"pixel ({y}, {x})")


def _assert_untouched(region):
    assert np.all(region == GREY), "pixels changed where nothing should be drawn"


def test_output_shape_is_two_panels_and_a_gap():
    pictures = comparison_images([_image(), _image(HEIGHT, 150)], [_detections()] * 2, [_ground_truth()] * 2, LABELS)
    assert [p.shape for p in pictures] == [(HEIGHT, 2 * WIDTH + GAP, 3), (HEIGHT, 2 * 150 + GAP, 3)]
    assert all(p.dtype == np.uint8 for p in pictures)
    assert np.all(pictures[0][:, WIDTH:RIGHT] == 255)  # the gap is white
    assert len(comparison_images([_image()] * 3, [_detections()] * 3, [_ground_truth()] * 3, LABELS,
                                 max_images=2)) == 2


def test_small_images_are_enlarged_by_a_whole_factor():
    small = np.full((64, 64, 3), GREY, np.uint8)
    detections = _detections([[10, 10, 40, 50]], [0.9], [1])
    [picture] = comparison_images([small], [detections], [_ground_truth()], LABELS)
    assert detection_images.panel_scale(64, 64) == 2
    assert picture.shape == (128, 2 * 128 + GAP, 3)
    _assert_colour(picture, 80, 60, class_colour(1))  # bottom edge y = 40 * 2
    _assert_colour(picture, 50, 20, class_colour(1))  # left edge x = 10 * 2
    _assert_colour(picture, 60, 60, [GREY] * 3)  # inside
    # the caption strip along the bottom is darkened, with white (anti-aliased) text in it
    assert picture[-12:, :128].min(axis=-1).max() > 200
    assert np.all(picture[-2:, :128] == round(GREY * 0.4)) and np.all(picture[-20, 100:128] == GREY)


def test_detection_below_threshold_is_not_drawn_and_one_above_is():
    detections = _detections([[20, 20, 60, 60], [80, 100, 130, 180]], [0.3, 0.8], [2, 1])
    picture = _one(detections, _ground_truth(), score_threshold=0.5)
    _assert_untouched(picture[10:70, 10:70])  # the 0.3 detection and where its tag would be
    colour = class_colour(1)
    _assert_colour(picture, 130, 140, colour)  # bottom edge
    _assert_colour(picture, 129, 140, colour)  # two pixels wide
    _assert_colour(picture, 105, 100, colour)  # left edge
    _assert_colour(picture, 105, 180, colour)  # right edge
    _assert_colour(picture, 105, 140, [GREY] * 3)  # inside stays untouched
    # its "RBC: 0.80" tag sits above the box, in the class colour
    assert np.any(np.all(picture[65:80, 100:180] == colour, axis=-1))
    # a lower threshold draws the other one too
    low = _one(detections, _ground_truth(), score_threshold=0.2)
    _assert_colour(low, 60, 40, class_colour(2))


def test_ground_truth_boxes_are_on_the_right_panel_at_their_pixels():
    ground_truth = _ground_truth([[30, 40, 90, 120]], [1])
    picture = _one(_detections(), ground_truth)
    colour = class_colour(1)
    _assert_colour(picture, 90, RIGHT + 80, colour)  # bottom edge
    _assert_colour(picture, 60, RIGHT + 40, colour)  # left edge
    _assert_colour(picture, 60, RIGHT + 120, colour)  # right edge
    _assert_colour(picture, 60, RIGHT + 80, [GREY] * 3)  # inside
    _assert_untouched(picture[:140, :WIDTH])  # nothing on the detections panel (above its caption)


def test_difficult_ground_truth_is_dashed():
    ground_truth = _ground_truth([[30, 20, 100, 180]], [3], difficult=np.array([True]))
    picture = _one(_detections(), ground_truth)
    bottom_edge = picture[100, RIGHT + 20:RIGHT + 181]
    is_colour = np.all(bottom_edge == class_colour(3), axis=-1)
    assert is_colour.any() and not is_colour.all()
    assert np.all(bottom_edge[~is_colour] == GREY)


def test_a_class_has_one_colour_in_both_panels_and_across_calls():
    box = [40, 40, 100, 120]
    detections, ground_truth = _detections([box], [0.9], [2]), _ground_truth([box], [2])
    picture = _one(detections, ground_truth)
    left, right = picture[100, 80], picture[100, RIGHT + 80]
    np.testing.assert_array_equal(left, right)
    np.testing.assert_array_equal(left, class_colour(2))
    assert tuple(class_colour(1)) != tuple(class_colour(2))
    np.testing.assert_array_equal(_one(detections, ground_truth), picture)


def test_padding_rows_are_ignored():
    detections = _detections([[20, 20, 60, 60], [80, 100, 130, 180], [20, 100, 60, 180]], [0.9, 0.9, 0.95], [1, 1, 0],
                             num_detections=1)
    picture = _one(detections, _ground_truth([[20, 20, 60, 60], [80, 100, 130, 180]], [1, 0]))
    _assert_colour(picture, 60, 40, class_colour(1))  # the one real detection
    _assert_untouched(picture[70:140, 90:190])  # past num_detections
    _assert_untouched(picture[5:70, 95:190])  # class 0
    _assert_colour(picture, 60, RIGHT + 40, class_colour(1))
    _assert_untouched(picture[70:140, RIGHT + 90:RIGHT + 190])  # ground-truth label 0


def test_boxes_outside_the_image_are_clipped():
    detections = _detections([[-20, -30, 50, 60], [500, 500, 600, 600]], [0.9, 0.9], [1, 2])
    ground_truth = _ground_truth([[100, 150, 400, 400], [-50, -50, -10, -10]], [3, 1])
    picture = _one(detections, ground_truth)
    _assert_colour(picture, 30, 0, class_colour(1))  # left edge along the image border
    _assert_colour(picture, 30, 60, class_colour(1))  # right edge inside
    _assert_colour(picture, 120, 2 * WIDTH + GAP - 1, class_colour(3))  # right edge at the last column
    _assert_colour(picture, 120, RIGHT + 150, class_colour(3))  # left edge inside
    assert not np.any(np.all(picture == class_colour(2), axis=-1))  # wholly outside: not drawn


def test_image_summary_round_trips_through_an_event_file(tmp_path):
    detections = _detections([[20, 20, 60, 60]], [0.9], [1])
    pictures = comparison_images([_image(), _image(64, 64)], [detections] * 2, [_ground_truth()] * 2, LABELS)
    summary = image_summary("eval/comparison", pictures)
    with tf.Graph().as_default():
        writer = tf1.summary.FileWriter(str(tmp_path))
        writer.add_summary(summary, 7)
        writer.close()
    [event_file] = tmp_path.iterdir()
    values = [(event.step, value) for event in tf1.train.summary_iterator(str(event_file))
              for value in event.summary.value]
    assert [(step, value.tag) for step, value in values] == [(7, "eval/comparison/0"), (7, "eval/comparison/1")]
    for (_, value), picture in zip(values, pictures):
        assert (value.image.height, value.image.width, value.image.colorspace) == (*picture.shape[:2], 3)
        decoded = np.asarray(Image.open(io.BytesIO(value.image.encoded_image_string)).convert("RGB"))
        np.testing.assert_array_equal(decoded, picture)
