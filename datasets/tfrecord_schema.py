"""The one TFRecord schema: writing (`make_example`) and reading (`parse_example`) a detection example.

Keys are SSD-Tensorflow's, so either project reads the other's records. Differences that stay
compatible: we also write `image/filename` and `image/source_id` (SSD-Tensorflow ignores unknown
keys; when reading its records they default to ''), and `truncated` holds the XML's real values
(SSD-Tensorflow always wrote 0). Boxes are relative [0, 1]; labels are 1-based class ids.
"""

import numpy as np
import tensorflow as tf

SCHEMA_VERSION = 1

ENCODED = "image/encoded"
FORMAT = "image/format"
FILENAME = "image/filename"
SOURCE_ID = "image/source_id"
HEIGHT = "image/height"
WIDTH = "image/width"
CHANNELS = "image/channels"
SHAPE = "image/shape"
BBOX_XMIN = "image/object/bbox/xmin"
BBOX_YMIN = "image/object/bbox/ymin"
BBOX_XMAX = "image/object/bbox/xmax"
BBOX_YMAX = "image/object/bbox/ymax"
LABEL = "image/object/bbox/label"
LABEL_TEXT = "image/object/bbox/label_text"
DIFFICULT = "image/object/bbox/difficult"
TRUNCATED = "image/object/bbox/truncated"


def _int64s(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode("utf-8") if isinstance(v, str) else v for v in values]))


def make_example(
    encoded,
    image_format,
    height,
    width,
    boxes,
    labels,
    label_texts=(),
    difficult=None,
    truncated=None,
    filename="",
    source_id="",
):
    """Builds a tf.train.Example (plain protobuf, no graph).

    `boxes` is [N, 4] as [ymin, xmin, ymax, xmax] relative to the image; `labels` the N class ids
    (>= 1); `difficult`/`truncated` N 0/1 flags (zeros when None). `image/channels` is 3: the
    reader always decodes to RGB, grayscale included.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    count = boxes.shape[0]
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    difficult = np.zeros(count, np.int64) if difficult is None else np.asarray(difficult, np.int64).reshape(-1)
    truncated = np.zeros(count, np.int64) if truncated is None else np.asarray(truncated, np.int64).reshape(-1)
    label_texts = list(label_texts)
    for name, values in (("labels", labels), ("difficult", difficult), ("truncated", truncated)):
        if values.shape[0] != count:
            raise ValueError(f"{filename or source_id}: {count} boxes but {values.shape[0]} {name}")
    if label_texts and len(label_texts) != count:
        raise ValueError(f"{filename or source_id}: {count} boxes but {len(label_texts)} label texts")
    if count and (labels < 1).any():
        raise ValueError(f"{filename or source_id}: class ids must be >= 1 (0 is the background), got {labels.tolist()}")
    feature = {
        ENCODED: _bytes([encoded]),
        FORMAT: _bytes([image_format]),
        FILENAME: _bytes([filename]),
        SOURCE_ID: _bytes([source_id]),
        HEIGHT: _int64s([height]),
        WIDTH: _int64s([width]),
        CHANNELS: _int64s([3]),
        SHAPE: _int64s([height, width, 3]),
        BBOX_YMIN: _floats(boxes[:, 0]),
        BBOX_XMIN: _floats(boxes[:, 1]),
        BBOX_YMAX: _floats(boxes[:, 2]),
        BBOX_XMAX: _floats(boxes[:, 3]),
        LABEL: _int64s(labels),
        LABEL_TEXT: _bytes(label_texts),
        DIFFICULT: _int64s(difficult),
        TRUNCATED: _int64s(truncated),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _features_spec():
    return {
        ENCODED: tf.io.FixedLenFeature((), tf.string),
        FORMAT: tf.io.FixedLenFeature((), tf.string, default_value="JPEG"),
        FILENAME: tf.io.FixedLenFeature((), tf.string, default_value=""),
        SOURCE_ID: tf.io.FixedLenFeature((), tf.string, default_value=""),
        BBOX_YMIN: tf.io.VarLenFeature(tf.float32),
        BBOX_XMIN: tf.io.VarLenFeature(tf.float32),
        BBOX_YMAX: tf.io.VarLenFeature(tf.float32),
        BBOX_XMAX: tf.io.VarLenFeature(tf.float32),
        LABEL: tf.io.VarLenFeature(tf.int64),
        DIFFICULT: tf.io.VarLenFeature(tf.int64),
        TRUNCATED: tf.io.VarLenFeature(tf.int64),
    }


def _flags_or_zeros(values, count):
    """Per-object flags; zeros when the record lacks them (or has the wrong number)."""
    return tf.cond(
        tf.equal(tf.size(values), count),
        lambda: values,
        lambda: tf.zeros([count], tf.int64),
    )


def _parse_objects(parsed):
    dense = {key: tf.sparse.to_dense(parsed[key]) for key in (BBOX_YMIN, BBOX_XMIN, BBOX_YMAX, BBOX_XMAX, LABEL, DIFFICULT, TRUNCATED)}
    boxes = tf.stack([dense[BBOX_YMIN], dense[BBOX_XMIN], dense[BBOX_YMAX], dense[BBOX_XMAX]], axis=1)
    labels = dense[LABEL]
    count = tf.size(labels)
    return {
        "boxes": tf.reshape(boxes, [-1, 4]),
        "labels": labels,
        "difficult": _flags_or_zeros(dense[DIFFICULT], count),
        "truncated": _flags_or_zeros(dense[TRUNCATED], count),
    }


def parse_example(serialized):
    """Parses one serialized Example (a graph op, for tf.data `map`).

    Returns a dict: image uint8 [H, W, 3], shape int32 [3] (of the decoded image), boxes float32
    [N, 4] as [ymin, xmin, ymax, xmax] relative, labels int64 [N], difficult int64 [N],
    truncated int64 [N], filename string scalar, source_id string scalar.
    """
    parsed = tf.io.parse_single_example(serialized, _features_spec())
    image = tf.io.decode_image(parsed[ENCODED], channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return {
        "image": image,
        "shape": tf.shape(image, out_type=tf.int32),
        **_parse_objects(parsed),
        "filename": parsed[FILENAME],
        "source_id": parsed[SOURCE_ID],
    }


def parse_objects(serialized):
    """The objects of one serialized Example without decoding its image: boxes, labels, difficult,
    truncated as :func:`parse_example` returns them (for statistics over a whole split)."""
    return _parse_objects(tf.io.parse_single_example(serialized, _features_spec()))


def parse_listing(serialized):
    """What statistics over a split need from one serialized Example, without decoding its image
    (unless the record lacks its size): the objects as :func:`parse_objects` returns them, plus
    height and width int64 scalars (the stored ``image/height``/``image/width``; the decoded
    image's when they are missing or 0), filename and source_id string scalars."""
    spec = {**_features_spec(), HEIGHT: tf.io.FixedLenFeature((), tf.int64, default_value=0),
            WIDTH: tf.io.FixedLenFeature((), tf.int64, default_value=0)}
    parsed = tf.io.parse_single_example(serialized, spec)
    stored = tf.stack([parsed[HEIGHT], parsed[WIDTH]])

    def decoded_size():
        image = tf.io.decode_image(parsed[ENCODED], channels=3, dtype=tf.uint8, expand_animations=False)
        return tf.cast(tf.shape(image)[:2], tf.int64)

    size = tf.cond(tf.reduce_all(stored > 0), lambda: stored, decoded_size)
    return {
        **_parse_objects(parsed),
        "height": size[0],
        "width": size[1],
        "filename": parsed[FILENAME],
        "source_id": parsed[SOURCE_ID],
    }
