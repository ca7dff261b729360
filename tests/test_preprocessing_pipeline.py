"""Properties of the full SSD training pipeline, the evaluation pipeline and the factory."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preprocessing import preprocessing_factory, seeds
from preprocessing import ssd_vgg_preprocessing as ssd
from tf_compat import tf1

MEANS = np.array(ssd.RGB_MEANS, np.float32)
BACKGROUND = (128, 128, 128)
BOX_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255))
OUT_SHAPE = (64, 56)
PROPERTY_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Pipeline:
    """One graph with placeholders, reused across hypothesis examples (building graphs is slow)."""

    def __init__(self, options, out_shape=OUT_SHAPE):
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.image = tf1.placeholder(tf.uint8, [None, None, 3])
            self.boxes = tf1.placeholder(tf.float32, [None, 4])
            self.labels = tf1.placeholder(tf.int64, [None])
            self.difficult = tf1.placeholder(tf.int64, [None])
            self.seed = tf1.placeholder(tf.int64, [])
            self.outputs = ssd.preprocess_for_train(
                self.image, self.labels, self.boxes, self.difficult, out_shape, self.seed, options)
        self.session = tf1.Session(graph=self.graph)

    def __call__(self, image, boxes, labels, difficult, seed):
        return self.session.run(self.outputs, {self.image: image, self.boxes: np.reshape(boxes, [-1, 4]),
                                               self.labels: labels, self.difficult: difficult, self.seed: seed})


@pytest.fixture(scope="module")
def geometric_nearest():
    pipeline = Pipeline(ssd.TrainAugmentation(photometric=False, interpolation="nearest"))
    yield pipeline
    pipeline.session.close()


@pytest.fixture(scope="module")
def full_pipeline():
    pipeline = Pipeline(ssd.TrainAugmentation())
    yield pipeline
    pipeline.session.close()


@st.composite
def solid_box_examples(draw):
    """An image with up to 4 solid-colour boxes, one per quadrant (so they never overlap)."""
    height, width = draw(st.integers(24, 90)), draw(st.integers(24, 90))
    image = np.full((height, width, 3), BACKGROUND, np.uint8)
    boxes = []
    cells = draw(st.lists(st.sampled_from([(0, 0), (0, 1), (1, 0), (1, 1)]), max_size=4, unique=True))
    for row, col in cells:
        cell_h, cell_w = height // 2, width // 2
        y0 = row * cell_h + draw(st.integers(0, cell_h - 4))
        x0 = col * cell_w + draw(st.integers(0, cell_w - 4))
        y1 = draw(st.integers(y0 + 3, (row + 1) * cell_h))
        x1 = draw(st.integers(x0 + 3, (col + 1) * cell_w))
        image[y0:y1, x0:x1] = BOX_COLOURS[len(boxes)]
        boxes.append([y0 / height, x0 / width, y1 / height, x1 / width])
    labels = np.arange(1, len(boxes) + 1, dtype=np.int64)
    difficult = labels % 2
    seed = draw(st.integers(0, 2**31 - 1))
    return image, np.array(boxes, np.float32).reshape(-1, 4), labels, difficult, seed


def _check_boxes_and_alignment(labels, boxes, difficult, input_labels):
    assert boxes.shape == (len(labels), 4) and difficult.shape == labels.shape
    assert np.all(boxes >= 0.0) and np.all(boxes <= 1.0)
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert set(labels) <= set(input_labels) and len(set(labels)) == len(labels)
    np.testing.assert_array_equal(difficult, labels % 2)  # flags travel with their boxes


@PROPERTY_SETTINGS
@given(example=solid_box_examples())
def test_box_pixels_land_where_the_transformed_box_says(geometric_nearest, example):
    image, boxes, labels, difficult, seed = example
    out_image, out_labels, out_boxes, out_difficult = geometric_nearest(image, boxes, labels, difficult, seed)
    _check_boxes_and_alignment(out_labels, out_boxes, out_difficult, labels)
    pixels = out_image + MEANS
    height, width = OUT_SHAPE
    centres_y = (np.arange(height) + 0.5) / height
    centres_x = (np.arange(width) + 0.5) / width
    margin_y, margin_x = 0.1 / height, 0.1 / width  # nearest sampling is exact up to float rounding
    for label, (ymin, xmin, ymax, xmax) in zip(out_labels, out_boxes):
        has_colour = np.all(np.abs(pixels - BOX_COLOURS[label - 1]) < 1e-3, axis=-1)
        inside = ((centres_y[:, None] > ymin + margin_y) & (centres_y[:, None] < ymax - margin_y)
                  & (centres_x[None, :] > xmin + margin_x) & (centres_x[None, :] < xmax - margin_x))
        outside = ~((centres_y[:, None] >= ymin - margin_y) & (centres_y[:, None] <= ymax + margin_y)
                    & (centres_x[None, :] >= xmin - margin_x) & (centres_x[None, :] <= xmax + margin_x))
        assert np.all(has_colour[inside]), f"box {label} at {out_boxes} not filled with its colour"
        assert not np.any(has_colour[outside]), f"colour of box {label} found outside {out_boxes}"


@PROPERTY_SETTINGS
@given(example=solid_box_examples())
def test_full_pipeline_keeps_boxes_valid_and_aligned(full_pipeline, example):
    image, boxes, labels, difficult, seed = example
    out_image, out_labels, out_boxes, out_difficult = full_pipeline(image, boxes, labels, difficult, seed)
    assert out_image.shape == OUT_SHAPE + (3,) and out_image.dtype == np.float32
    assert np.all(out_image + MEANS >= -1e-3) and np.all(out_image + MEANS <= 255.0 + 1e-3)
    _check_boxes_and_alignment(out_labels, out_boxes, out_difficult, labels)


def test_zero_box_images_pass_through(full_pipeline):
    image = np.random.RandomState(0).randint(0, 256, (40, 50, 3)).astype(np.uint8)
    for seed in range(8):
        out_image, out_labels, out_boxes, out_difficult = full_pipeline(
            image, np.zeros([0, 4], np.float32), np.zeros([0], np.int64), np.zeros([0], np.int64), seed)
        assert out_image.shape == OUT_SHAPE + (3,)
        assert out_boxes.shape == (0, 4) and out_labels.shape == (0,) and out_difficult.shape == (0,)


def test_degenerate_input_boxes_are_dropped_with_their_labels():
    pipeline = Pipeline(ssd.TrainAugmentation.none())
    image = np.zeros((30, 40, 3), np.uint8)
    boxes = np.array([[0.1, 0.1, 0.5, 0.5], [0.2, 0.3, 0.2, 0.6], [0.3, 0.2, 0.9, 0.8]], np.float32)
    _, labels, out_boxes, difficult = pipeline(image, boxes, np.array([1, 2, 3]), np.array([1, 0, 1]), 0)
    np.testing.assert_array_equal(labels, [1, 3])
    np.testing.assert_array_equal(difficult, [1, 1])
    np.testing.assert_allclose(out_boxes, boxes[[0, 2]])
    pipeline.session.close()


def test_all_stages_off_is_resize_and_mean_subtraction():
    image = np.random.RandomState(1).randint(0, 256, (30, 40, 3)).astype(np.uint8)
    pipeline = Pipeline(ssd.TrainAugmentation.none(), out_shape=(60, 80))
    out_image, *_ = pipeline(image, np.zeros([0, 4]), np.zeros([0], np.int64), np.zeros([0], np.int64), 3)
    pipeline.session.close()
    with tf.Graph().as_default(), tf1.Session() as session:
        expected = session.run(tf.image.resize(image.astype(np.float32), (60, 80))) - MEANS
    np.testing.assert_allclose(out_image, expected, atol=1e-3)


def _train_once(seed, options=None):
    """Builds a fresh graph and session, as a new process would."""
    image = np.random.RandomState(2).randint(0, 256, (48, 64, 3)).astype(np.uint8)
    boxes = np.array([[0.1, 0.1, 0.6, 0.4], [0.5, 0.5, 0.9, 0.95]], np.float32)
    with tf.Graph().as_default():
        outputs = ssd.preprocess_for_train(image, np.array([1, 2]), boxes, np.array([0, 1]), (32, 32), seed, options)
        with tf1.Session() as session:
            return session.run(outputs)


def _assert_same(first, second):
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_fixed_seed_gives_identical_output_in_fresh_graphs():
    _assert_same(_train_once(1234), _train_once(1234))
    _assert_same(_train_once(np.array([5, 6], np.int64)), _train_once(np.array([5, 6], np.int64)))


def test_different_seeds_give_different_outputs():
    outputs = [_train_once(seed)[0].tobytes() for seed in range(5)]
    assert len(set(outputs)) >= 4


def _dataset_outputs(global_seed, num_parallel_calls):
    image = np.random.RandomState(3).randint(0, 256, (40, 48, 3)).astype(np.uint8)
    boxes = np.array([[0.2, 0.2, 0.7, 0.6]], np.float32)
    with tf.Graph().as_default():
        dataset = tf.data.Dataset.from_tensors((image, boxes)).repeat(6).enumerate()
        dataset = dataset.map(
            lambda index, example: ssd.preprocess_for_train(
                example[0], tf.constant([1], tf.int64), example[1], tf.constant([0], tf.int64), (24, 24),
                seeds.example_seed(global_seed, index)),
            num_parallel_calls=num_parallel_calls, deterministic=True)
        next_example = tf1.data.make_one_shot_iterator(dataset).get_next()
        with tf1.Session() as session:
            return [session.run(next_example) for _ in range(6)]


def test_tf_data_runs_are_reproducible_and_examples_differ():
    first = _dataset_outputs(global_seed=7, num_parallel_calls=2)
    second = _dataset_outputs(global_seed=7, num_parallel_calls=1)
    for a, b in zip(first, second):
        _assert_same(a, b)
    assert len({example[0].tobytes() for example in first}) >= 5
    other_seed = _dataset_outputs(global_seed=8, num_parallel_calls=2)
    assert other_seed[0][0].tobytes() != first[0][0].tobytes()


def test_options_are_validated():
    with pytest.raises(ValueError, match="flip_probability"):
        ssd.TrainAugmentation(flip_probability=1.5)
    with pytest.raises(ValueError, match="crop_min_iou_choices"):
        ssd.TrainAugmentation(crop_min_iou_choices=(1.5,))
    with pytest.raises(ValueError, match="interpolation"):
        ssd.TrainAugmentation(interpolation="lanczos")
    with pytest.raises(ValueError, match="expand_max_ratio"):
        ssd.TrainAugmentation(expand_max_ratio=0.5)
    assert dataclasses.replace(ssd.TrainAugmentation.none(), flip=True).flip


# --- evaluation -------------------------------------------------------------------------------------------------

def _eval(image, boxes, out_shape, resize_mode):
    with tf.Graph().as_default():
        outputs = ssd.preprocess_for_eval(image, np.arange(len(boxes)), boxes, np.zeros(len(boxes), np.int64),
                                          out_shape, resize_mode=resize_mode)
        tensor_pixels = ssd.boxes_to_original_pixels(outputs[2], outputs[4])
        batched_pixels = ssd.boxes_to_original_pixels(
            outputs[2][None], {k: v[None] for k, v in outputs[4].items()})
        with tf1.Session() as session:
            return session.run((outputs, tensor_pixels, batched_pixels))


@pytest.mark.parametrize("resize_mode", ["warp", "pad"])
@pytest.mark.parametrize("image_shape", [(30, 80), (90, 40), (50, 50)])
def test_eval_boxes_map_back_to_original_pixels(resize_mode, image_shape):
    height, width = image_shape
    image = np.full((height, width, 3), BACKGROUND, np.uint8)
    image[6:21, 8:31] = BOX_COLOURS[0]
    pixel_box = np.array([6, 8, 21, 31], np.float32)
    boxes = (pixel_box / [height, width, height, width])[None].astype(np.float32)
    (out_image, _, out_boxes, _, info), tensor_pixels, batched_pixels = _eval(image, boxes, (64, 64), resize_mode)
    assert out_image.shape == (64, 64, 3)
    numpy_pixels = ssd.boxes_to_original_pixels(out_boxes, info)
    for pixels in (numpy_pixels, tensor_pixels, batched_pixels[0]):
        np.testing.assert_allclose(pixels[0], pixel_box, atol=1e-3)
    # The box's colour sits where its network-input box says.
    ymin, xmin, ymax, xmax = out_boxes[0] * 64
    centre = out_image[int((ymin + ymax) / 2), int((xmin + xmax) / 2)] + MEANS
    np.testing.assert_allclose(centre, BOX_COLOURS[0], atol=1.0)
    if resize_mode == "pad":
        assert info["scale"][0] == pytest.approx(info["scale"][1], rel=0.05)
        top, left = info["offset"].astype(int)
        if top > 0:
            np.testing.assert_allclose(out_image[:top], 0.0)  # padding is the mean colour
        if left > 0:
            np.testing.assert_allclose(out_image[:, :left], 0.0)
        assert top == 0 or left == 0
    else:
        np.testing.assert_allclose(out_boxes, boxes)


def test_boxes_to_original_pixels_clips_to_the_image():
    info = {"original_shape": np.array([100, 200]), "scale": np.array([0.5, 0.5]), "offset": np.array([7.0, 0.0]),
            "output_shape": np.array([64, 100])}
    pixels = ssd.boxes_to_original_pixels(np.array([[0.0, -0.1, 1.0, 0.5]]), info)
    np.testing.assert_allclose(pixels, [[0.0, 0.0, 100.0, 100.0]])


def test_factory_returns_the_ssd_vgg_functions():
    for name in ("ssd_300_vgg", "ssd_512_vgg"):
        assert preprocessing_factory.get_preprocessing(name, True) is ssd.preprocess_for_train
        assert preprocessing_factory.get_preprocessing(name, False) is ssd.preprocess_for_eval
    with pytest.raises(ValueError, match="ssd_300_vgg"):
        preprocessing_factory.get_preprocessing("inception_v3", True)
