"""The TFRecord schema: our records round-trip, and they are interchangeable with SSD-Tensorflow's."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from datasets import tfrecord_schema

# SSD-Tensorflow's reader (datasets/pascalvoc_common.py), with its feature spec verbatim.
SSD_TF_KEYS_TO_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/format": tf.io.FixedLenFeature((), tf.string, default_value="jpeg"),
    "image/height": tf.io.FixedLenFeature([1], tf.int64),
    "image/width": tf.io.FixedLenFeature([1], tf.int64),
    "image/channels": tf.io.FixedLenFeature([1], tf.int64),
    "image/shape": tf.io.FixedLenFeature([3], tf.int64),
    "image/object/bbox/xmin": tf.io.VarLenFeature(dtype=tf.float32),
    "image/object/bbox/ymin": tf.io.VarLenFeature(dtype=tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(dtype=tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(dtype=tf.float32),
    "image/object/bbox/label": tf.io.VarLenFeature(dtype=tf.int64),
    "image/object/bbox/difficult": tf.io.VarLenFeature(dtype=tf.int64),
    "image/object/bbox/truncated": tf.io.VarLenFeature(dtype=tf.int64),
}


def _jpeg(width, height, seed=0, mode="RGB"):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _png(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _ssd_tensorflow_example(image_data, shape, bboxes, labels, labels_text, difficult, truncated):
    """A record as SSD-Tensorflow's pascalvoc_to_tfrecords._convert_to_example writes it."""

    def int64_feature(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=value if isinstance(value, list) else [value]))

    def float_feature(value):
        return tf.train.Feature(float_list=tf.train.FloatList(value=value if isinstance(value, list) else [value]))

    def bytes_feature(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=value if isinstance(value, list) else [value]))

    xmin, ymin, xmax, ymax = [], [], [], []
    for b in bboxes:  # SSD-Tensorflow's boxes are (ymin, xmin, ymax, xmax)
        for coordinate, values in zip(b, [ymin, xmin, ymax, xmax]):
            values.append(coordinate)
    return tf.train.Example(features=tf.train.Features(feature={
        "image/height": int64_feature(shape[0]),
        "image/width": int64_feature(shape[1]),
        "image/channels": int64_feature(shape[2]),
        "image/shape": int64_feature(list(shape)),
        "image/object/bbox/xmin": float_feature(xmin),
        "image/object/bbox/xmax": float_feature(xmax),
        "image/object/bbox/ymin": float_feature(ymin),
        "image/object/bbox/ymax": float_feature(ymax),
        "image/object/bbox/label": int64_feature(labels),
        "image/object/bbox/label_text": bytes_feature(labels_text),
        "image/object/bbox/difficult": int64_feature(difficult),
        "image/object/bbox/truncated": int64_feature(truncated),
        "image/format": bytes_feature(b"JPEG"),
        "image/encoded": bytes_feature(image_data),
    }))


def _parse(serialized_records):
    with tf.Graph().as_default():
        serialized = tf.compat.v1.placeholder(tf.string, [])
        parsed = tfrecord_schema.parse_example(serialized)
        with tf.compat.v1.Session() as session:
            return [session.run(parsed, {serialized: record}) for record in serialized_records]


def test_make_then_parse_round_trips_every_field():
    encoded = _jpeg(40, 30)
    boxes = np.array([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]], np.float32)
    example = tfrecord_schema.make_example(
        encoded, "JPEG", 30, 40, boxes, [2, 1], ["dog", "cat"], difficult=[0, 1], truncated=[1, 0],
        filename="VOC/JPEGImages/a.jpg", source_id="VOC/a",
    )
    (parsed,) = _parse([example.SerializeToString()])
    assert parsed["image"].shape == (30, 40, 3) and parsed["image"].dtype == np.uint8
    reference = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"), dtype=np.float32)
    assert np.abs(parsed["image"].astype(np.float32) - reference).mean() < 2.0  # two JPEG decoders, same pixels
    np.testing.assert_array_equal(parsed["shape"], [30, 40, 3])
    assert parsed["shape"].dtype == np.int32
    np.testing.assert_allclose(parsed["boxes"], boxes, atol=0)
    np.testing.assert_array_equal(parsed["labels"], [2, 1])
    np.testing.assert_array_equal(parsed["difficult"], [0, 1])
    np.testing.assert_array_equal(parsed["truncated"], [1, 0])
    assert parsed["filename"] == b"VOC/JPEGImages/a.jpg" and parsed["source_id"] == b"VOC/a"
    features = example.features.feature
    assert features["image/object/bbox/label_text"].bytes_list.value == [b"dog", b"cat"]
    assert list(features["image/shape"].int64_list.value) == [30, 40, 3]


def test_an_image_without_objects_parses_to_empty_arrays():
    example = tfrecord_schema.make_example(_jpeg(8, 8), "JPEG", 8, 8, np.zeros((0, 4)), [])
    (parsed,) = _parse([example.SerializeToString()])
    assert parsed["boxes"].shape == (0, 4) and parsed["labels"].shape == (0,)
    assert parsed["difficult"].shape == (0,) and parsed["truncated"].shape == (0,)


def test_png_and_grayscale_images_decode_to_three_channels():
    rgb = np.random.default_rng(1).integers(0, 256, size=(6, 9, 3), dtype=np.uint8)
    gray = np.random.default_rng(2).integers(0, 256, size=(5, 7), dtype=np.uint8)
    records = [
        tfrecord_schema.make_example(_png(rgb), "PNG", 6, 9, [[0, 0, 1, 1]], [1]).SerializeToString(),
        tfrecord_schema.make_example(_png(gray), "PNG", 5, 7, [[0, 0, 1, 1]], [1]).SerializeToString(),
    ]
    png_rgb, png_gray = _parse(records)
    np.testing.assert_array_equal(png_rgb["image"], rgb)
    np.testing.assert_array_equal(png_gray["image"], np.repeat(gray[..., None], 3, axis=2))


def test_make_example_rejects_background_labels_and_mismatched_lengths():
    with pytest.raises(ValueError, match="class ids must be >= 1"):
        tfrecord_schema.make_example(b"x", "JPEG", 1, 1, [[0, 0, 1, 1]], [0], filename="f.jpg")
    with pytest.raises(ValueError, match="1 boxes but 2 labels"):
        tfrecord_schema.make_example(b"x", "JPEG", 1, 1, [[0, 0, 1, 1]], [1, 2], filename="f.jpg")


def test_records_written_by_ssd_tensorflow_parse_with_defaults_for_our_extra_keys():
    encoded = _jpeg(20, 10, seed=3)
    record = _ssd_tensorflow_example(
        encoded, [10, 20, 3], [(0.1, 0.2, 0.3, 0.4), (0.5, 0.5, 1.0, 0.9)], [15, 12], [b"person", b"dog"], [0, 1], [0, 0]
    ).SerializeToString()
    (parsed,) = _parse([record])
    np.testing.assert_allclose(parsed["boxes"], [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 1.0, 0.9]], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(parsed["labels"], [15, 12])
    np.testing.assert_array_equal(parsed["difficult"], [0, 1])
    np.testing.assert_array_equal(parsed["truncated"], [0, 0])
    assert parsed["filename"] == b"" and parsed["source_id"] == b""
    assert parsed["image"].shape == (10, 20, 3)


def test_records_missing_difficult_and_truncated_get_zeros():
    example = tfrecord_schema.make_example(_jpeg(8, 8), "JPEG", 8, 8, [[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], [1, 2])
    del example.features.feature["image/object/bbox/difficult"]
    del example.features.feature["image/object/bbox/truncated"]
    (parsed,) = _parse([example.SerializeToString()])
    np.testing.assert_array_equal(parsed["difficult"], [0, 0])
    np.testing.assert_array_equal(parsed["truncated"], [0, 0])


def test_our_records_parse_with_ssd_tensorflow_feature_spec():
    encoded = _jpeg(32, 24, seed=4)
    boxes = np.array([[0.25, 0.125, 0.75, 0.5]], np.float32)
    record = tfrecord_schema.make_example(encoded, "JPEG", 24, 32, boxes, [7], ["cat"], [1], [1], "a.jpg", "x/a")
    with tf.Graph().as_default():
        parsed = tf.io.parse_single_example(record.SerializeToString(), SSD_TF_KEYS_TO_FEATURES)
        dense = {key: tf.sparse.to_dense(value) if isinstance(value, tf.SparseTensor) else value
                 for key, value in parsed.items()}
        image = tf.image.decode_jpeg(parsed["image/encoded"], channels=3)
        with tf.compat.v1.Session() as session:
            values, pixels = session.run([dense, image])
    assert values["image/format"] == b"JPEG"
    np.testing.assert_array_equal(values["image/shape"], [24, 32, 3])
    np.testing.assert_array_equal(values["image/height"], [24])
    np.testing.assert_array_equal(values["image/width"], [32])
    np.testing.assert_array_equal(values["image/channels"], [3])
    for key, column in (("ymin", 0), ("xmin", 1), ("ymax", 2), ("xmax", 3)):
        np.testing.assert_array_equal(values[f"image/object/bbox/{key}"], boxes[:, column])
    np.testing.assert_array_equal(values["image/object/bbox/label"], [7])
    np.testing.assert_array_equal(values["image/object/bbox/difficult"], [1])
    np.testing.assert_array_equal(values["image/object/bbox/truncated"], [1])
    assert pixels.shape == (24, 32, 3)
    assert values["image/encoded"] == encoded
