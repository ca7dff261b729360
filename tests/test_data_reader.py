"""dataset_factory: finding converted datasets by name, and the shared tf.data pipeline."""

import json
import os
import shutil

import pytest
import tensorflow as tf

from datasets import converter, dataset_factory, sample_data


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("sharded")
    voc = sample_data.generate_voc_sample(str(base / "voc"), num_images=25, image_size=48, seed=21)
    converter.convert([voc], str(base / "out"), "toy", converter.ConversionOptions(num_shards=3))
    return str(base / "out")


def _ids(dataset_dir, is_training, count, seed=None, device=None, **kwargs):
    spec = dataset_factory.get_dataset("toy", "trainval", dataset_dir)
    with tf.Graph().as_default():
        with tf.device(device) if device else _null():
            dataset = dataset_factory.build_dataset(spec, is_training=is_training, seed=seed, **kwargs)
            next_id = tf.compat.v1.data.make_one_shot_iterator(dataset.map(lambda e: e["source_id"])).get_next()
        ids = []
        with tf.compat.v1.Session() as session:
            for _ in range(count):
                try:
                    ids.append(session.run(next_id).decode())
                except tf.errors.OutOfRangeError:
                    break
    return ids


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def test_get_dataset_reads_the_description(sharded_dir):
    spec = dataset_factory.get_dataset("toy", "trainval", sharded_dir)
    assert (spec.name, spec.split_name, spec.num_samples, spec.num_classes) == ("toy", "trainval", 20, 4)
    assert spec.labels_to_names == {0: "none", 1: "circle", 2: "square", 3: "triangle"}
    assert len(spec.files) == 3 and all(os.path.isfile(f) for f in spec.files)
    assert sorted(tf.io.gfile.glob(spec.file_pattern)) == sorted(spec.files)
    assert spec.info["name"] == "toy"
    assert dataset_factory.get_dataset(None, "test", sharded_dir).num_samples == 5


def test_get_dataset_errors_name_the_directory_and_what_is_missing(sharded_dir, tmp_path):
    with pytest.raises(dataset_factory.DatasetError, match=f"{tmp_path}.*no dataset_info.json"):
        dataset_factory.get_dataset("toy", "trainval", str(tmp_path))
    with pytest.raises(dataset_factory.DatasetError, match=r"no split 'val' \(it has \['test', 'trainval'\]\)"):
        dataset_factory.get_dataset("toy", "val", sharded_dir)
    with pytest.raises(dataset_factory.DatasetError, match="holds dataset 'toy', not 'pascalvoc_2007'"):
        dataset_factory.get_dataset("pascalvoc_2007", "trainval", sharded_dir)
    copy = tmp_path / "copy"
    shutil.copytree(sharded_dir, copy)
    os.remove(copy / "toy_trainval-00001-of-00003.tfrecord")
    with pytest.raises(dataset_factory.DatasetError, match="missing 1 shard files.*toy_trainval-00001-of-00003"):
        dataset_factory.get_dataset("toy", "trainval", str(copy))


def test_named_voc_entries_match_the_converter_output_names(tmp_path):
    voc = sample_data.generate_voc_sample(str(tmp_path / "voc"), num_images=6, image_size=48, seed=2)
    labels = tmp_path / "voc_labels.txt"
    labels.write_text("\n".join(dataset_factory.VOC_CLASSES) + "\n")
    options = converter.ConversionOptions(label_map_path=str(labels))  # sample classes are unknown to VOC: dropped
    for name in dataset_factory.NAMED_DATASETS:
        out = tmp_path / name
        converter.convert([voc], str(out), name, options)
        spec = dataset_factory.get_dataset(name, "trainval", str(out))
        assert spec.num_classes == 21 and spec.labels_to_names[15] == "person"
        assert os.path.basename(spec.file_pattern) == f"{name}_trainval-?????-of-?????.tfrecord"
    bad = tmp_path / "bad"
    converter.convert([voc], str(bad), "pascalvoc_2007", converter.ConversionOptions())
    with pytest.raises(dataset_factory.DatasetError, match="20 VOC classes"):
        dataset_factory.get_dataset("pascalvoc_2007", "trainval", str(bad))


def test_eval_pipeline_is_one_pass_in_shard_order(sharded_dir):
    spec = dataset_factory.get_dataset("toy", "trainval", sharded_dir)
    in_files = []
    for path in spec.files:
        for record in tf.compat.v1.io.tf_record_iterator(path):
            example = tf.train.Example.FromString(record)
            in_files.append(example.features.feature["image/source_id"].bytes_list.value[0].decode())
    assert _ids(sharded_dir, is_training=False, count=100) == in_files
    assert _ids(sharded_dir, is_training=False, count=100, repeat=2) == in_files * 2


def test_training_pipeline_is_seeded_shuffled_and_repeats_whole_epochs(sharded_dir):
    first = _ids(sharded_dir, True, 60, seed=5, shuffle_buffer_size=8, num_readers=2)
    again = _ids(sharded_dir, True, 60, seed=5, shuffle_buffer_size=8, num_readers=2, device="/cpu:0")
    other = _ids(sharded_dir, True, 60, seed=6, shuffle_buffer_size=8, num_readers=2)
    assert first == again and first != other and len(first) == 60
    everything = sorted(_ids(sharded_dir, is_training=False, count=100))
    assert sorted(first[:20]) == everything and sorted(first[20:40]) == everything
    assert first[:20] != first[20:40]  # reshuffled each epoch
    assert first[:20] != _ids(sharded_dir, is_training=False, count=100)


def test_parsed_examples_have_the_documented_types(sharded_dir):
    spec = dataset_factory.get_dataset("toy", "trainval", sharded_dir)
    with tf.Graph().as_default():
        dataset = dataset_factory.build_dataset(spec, is_training=True, seed=1)
        spec_by_key = dataset.element_spec
    assert spec_by_key["image"].dtype == tf.uint8 and spec_by_key["image"].shape.as_list() == [None, None, 3]
    assert spec_by_key["shape"].dtype == tf.int32 and spec_by_key["shape"].shape.as_list() == [3]
    assert spec_by_key["boxes"].dtype == tf.float32 and spec_by_key["boxes"].shape.as_list() == [None, 4]
    for key in ("labels", "difficult", "truncated"):
        assert spec_by_key[key].dtype == tf.int64 and spec_by_key[key].shape.as_list() == [None]
    assert spec_by_key["filename"].dtype == tf.string and spec_by_key["filename"].shape.as_list() == []


def test_the_sample_fixture_is_a_converted_dataset(sample_dataset_dir):
    with open(os.path.join(sample_dataset_dir, converter.DATASET_INFO)) as f:
        info = json.load(f)
    assert info["num_images"] == 40 and set(info["splits"]) == {"trainval", "test"}
    assert dataset_factory.get_dataset("sample", "trainval", sample_dataset_dir).num_samples == 32
