"""The benchmark's input pipeline on a few BCCD images: VOC loader, TFRecord path, encode_fn hook."""

import importlib.util
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from tf_compat import tf1

# bench/ is scripts, not a package: load the benchmark by path.
_BENCH_PATH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "bench_input_pipeline.py"
_spec = importlib.util.spec_from_file_location("bench_input_pipeline", _BENCH_PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.fixture
def bccd_records(bccd_dir):
    return bench.load_voc_examples(bccd_dir, "trainval", max_images=3)


def _first_batch(records, **kwargs):
    with tf.Graph().as_default():
        batch = tf1.data.make_one_shot_iterator(bench.build_input_pipeline(records, **kwargs)).get_next()
        with tf1.Session() as session:
            return session.run(batch)


@pytest.mark.shared_data
def test_batches_from_in_memory_bccd_records(bccd_records):
    images, labels, boxes, difficult = _first_batch(bccd_records, batch_size=3)
    assert images.shape == (3, 300, 300, 3) and images.dtype == np.float32
    assert boxes.shape[:2] == labels.shape == difficult.shape
    valid = labels > 0
    assert valid.any() and set(np.unique(labels[valid])) <= {1, 2, 3}
    assert np.all(boxes[valid] >= 0.0) and np.all(boxes[valid] <= 1.0)


@pytest.mark.shared_data
def test_tfrecord_files_and_encode_fn_hook(bccd_records, tmp_path):
    path = str(tmp_path / "bccd.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for record in bccd_records:
            writer.write(record)

    def encode_fn(image, labels, boxes, difficult):
        return image, tf.size(labels)

    images, box_counts = _first_batch([path], batch_size=2, encode_fn=encode_fn, num_parallel_calls=1)
    assert images.shape == (2, 300, 300, 3)
    assert box_counts.shape == (2,) and np.all(box_counts >= 0)
