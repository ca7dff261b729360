"""ssd_eval's checkpoint handling and serving graph, export_ssd_network.py and detect.py.

Fast tests use a freshly initialised SSD at 96x96 saved as a checkpoint; the end-to-end
test trains a tiny model with train_ssd_network.py (subprocess), evaluates, exports, and
checks that detect.py gives the same detections from the SavedModel and the checkpoint.
"""

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import detect
import eval_ssd_network
import export_ssd_network
from evaluation import detectors, ssd_eval, summaries
from nets import nets_factory
from preprocessing import ssd_vgg_preprocessing
from tf_compat import slim, tf1

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 96


def save_fresh_checkpoint(directory, num_classes=4, image_size=IMAGE_SIZE, ema_offset=None, seed=1, global_step=7):
    """A freshly initialised ssd_300_vgg checkpoint at ``directory``/model.ckpt-<global_step>; with ``ema_offset`` each
    variable also gets an ``ExponentialMovingAverage`` copy equal to its value + ema_offset."""
    net = nets_factory.get_network("ssd_300_vgg", num_classes=num_classes, img_shape=(image_size, image_size))
    with tf.Graph().as_default():
        tf1.set_random_seed(seed)
        images = tf.zeros([1, image_size, image_size, 3])
        with slim.arg_scope(net.arg_scope()):
            net.net(images, is_training=False)
        global_step_variable = tf1.train.get_or_create_global_step()
        variables = slim.get_model_variables()
        shadows = {}
        if ema_offset is not None:
            ema = tf1.train.ExponentialMovingAverage(0.9)
            for var in variables:
                shadows[ema.average_name(var)] = tf1.Variable(tf.zeros(var.shape), name="shadow")
        copy_with_offset = [tf1.assign(shadows[ema.average_name(v)], v + ema_offset) for v in variables] \
            if shadows else []
        saver = tf1.train.Saver({**{v.op.name: v for v in variables}, "global_step": global_step_variable, **shadows})
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            session.run(tf1.assign(global_step_variable, global_step))
            session.run(copy_with_offset)
            values = {v.op.name: session.run(v) for v in variables}
            os.makedirs(directory, exist_ok=True)
            prefix = saver.save(session, os.path.join(directory, "model.ckpt"), global_step=global_step)
    return prefix, values


@pytest.fixture(scope="module")
def fresh_checkpoint(tmp_path_factory):
    return save_fresh_checkpoint(str(tmp_path_factory.mktemp("fresh")))


def png_bytes(height, width, seed):
    pixels = (np.random.RandomState(seed).rand(height, width, 3) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue(), pixels


def test_checkpoint_classes_are_read_from_the_class_heads(fresh_checkpoint):
    prefix, _ = fresh_checkpoint
    net4 = nets_factory.get_network("ssd_300_vgg", num_classes=4, img_shape=(IMAGE_SIZE, IMAGE_SIZE))
    net21 = nets_factory.get_network("ssd_300_vgg", num_classes=21, img_shape=(IMAGE_SIZE, IMAGE_SIZE))
    assert ssd_eval.checkpoint_num_classes(prefix, net21) == 4
    assert ssd_eval.check_checkpoint_classes(prefix, net4) == 4
    with pytest.raises(ssd_eval.ClassMismatchError, match=r"has 20 object classes .* trained for 3"):
        ssd_eval.check_checkpoint_classes(prefix, net21, "the dataset")


def test_find_checkpoint_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no checkpoint"):
        ssd_eval.find_checkpoint(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        ssd_eval.find_checkpoint(str(tmp_path / "model.ckpt-3"))


@pytest.mark.parametrize("use_ema", [True, False])
def test_restore_takes_the_moving_averages_when_stored(tmp_path, use_ema):
    prefix, values = save_fresh_checkpoint(str(tmp_path), ema_offset=0.5)
    net = nets_factory.get_network("ssd_300_vgg", num_classes=4, img_shape=(IMAGE_SIZE, IMAGE_SIZE))
    with tf.Graph().as_default():
        with slim.arg_scope(net.arg_scope()):
            net.net(tf.zeros([1, IMAGE_SIZE, IMAGE_SIZE, 3]), is_training=False)
        mapping, used = ssd_eval.restore_variables_map(prefix, use_moving_averages=use_ema)
        assert used == use_ema
        with tf1.Session() as session:
            tf1.train.Saver(mapping).restore(session, prefix)
            name = "ssd_300_vgg/block4_box/conv_cls/weights"
            var = [v for v in slim.get_model_variables() if v.op.name == name][0]
            np.testing.assert_allclose(session.run(var), values[name] + (0.5 if use_ema else 0.0), rtol=1e-6)


def test_restore_without_averages_and_a_wrong_network_is_a_clear_error(fresh_checkpoint):
    prefix, _ = fresh_checkpoint
    assert not ssd_eval.has_moving_averages(prefix)
    net = nets_factory.get_network("ssd_300_vgg", num_classes=4, img_shape=(128, 128))
    with tf.Graph().as_default():
        with slim.arg_scope(net.arg_scope()):
            net.net(tf.zeros([1, 128, 128, 3]), is_training=False)
        mapping, used = ssd_eval.restore_variables_map(prefix)  # same shapes: 128 keeps the layer layout
        assert not used and len(mapping) == len(slim.get_model_variables())
    net = nets_factory.get_network("ssd_512_vgg", num_classes=4, img_shape=(IMAGE_SIZE, IMAGE_SIZE))
    with tf.Graph().as_default():
        with slim.arg_scope(net.arg_scope()):
            net.net(tf.zeros([1, IMAGE_SIZE, IMAGE_SIZE, 3]), is_training=False)
        with pytest.raises(ValueError, match="missing from the checkpoint"):
            ssd_eval.restore_variables_map(prefix)


@pytest.mark.parametrize("resize_mode", ["warp", "pad"])
def test_serving_graph_maps_boxes_to_original_pixels(fresh_checkpoint, resize_mode):
    """Serving outputs against the network's relative detections mapped to pixels in numpy."""
    prefix, _ = fresh_checkpoint
    source = ssd_eval.load_model_source(prefix)
    encoded, pixels = png_bytes(60, 150, seed=3)
    height, width = pixels.shape[:2]
    with tf.Graph().as_default():
        inference = ssd_eval.build_inference_graph(
            source, image_size=IMAGE_SIZE, labels={1: "a", 2: "b", 3: "c"},
            post=ssd_eval.PostProcessing(select_threshold=0.0, keep_top_k=50), resize_mode=resize_mode)
        image, _, _, _, _ = ssd_vgg_preprocessing.preprocess_for_eval(
            tf.constant(pixels), tf.zeros([0], tf.int64), tf.zeros([0, 4]), tf.zeros([0], tf.int64),
            (IMAGE_SIZE, IMAGE_SIZE), resize_mode=resize_mode)
        with tf1.variable_scope(tf1.get_variable_scope(), reuse=True):
            with slim.arg_scope(inference.net.arg_scope()):
                predictions, localisations, _, _ = inference.net.net(image[None], is_training=False)
        relative = inference.net.detected_bboxes(predictions, localisations, select_threshold=0.0, keep_top_k=50)
        with tf1.Session() as session:
            inference.saver.restore(session, prefix)
            served, reference = session.run([inference.outputs, relative], {inference.images: [encoded]})
    count = int(served["num_detections"][0])
    assert count == int(reference.num_detections[0]) > 0
    np.testing.assert_array_equal(served["image_shape"][0], [height, width])
    if resize_mode == "warp":
        expected = reference.boxes[0, :count] * [height, width, height, width]
    else:  # the image fills the input's width; rows of padding above and below
        scale = IMAGE_SIZE / width
        pad_top = (IMAGE_SIZE - round(height * scale)) // 2
        expected = (reference.boxes[0, :count] * IMAGE_SIZE - [pad_top, 0, pad_top, 0]) / [
            round(height * scale) / height, scale, round(height * scale) / height, scale]
        expected = np.clip(expected, 0, [height, width, height, width])
    np.testing.assert_allclose(served["boxes"][0, :count], expected, atol=1e-3)
    np.testing.assert_allclose(served["scores"][0, :count], reference.scores[0, :count], rtol=1e-6)
    names = np.array(["", "a", "b", "c"])
    assert [n.decode() for n in served["class_names"][0, :count]] == list(names[served["classes"][0, :count]])
    assert not served["boxes"][0, count:].any() and not served["scores"][0, count:].any()
    assert all(n == b"" for n in served["class_names"][0, count:])


def test_export_and_detect_agree_and_write_outputs(fresh_checkpoint, tmp_path):
    prefix, _ = fresh_checkpoint
    export_dir = str(tmp_path / "export")
    args = [f"--checkpoint_path={prefix}", f"--output_dir={export_dir}", f"--image_size={IMAGE_SIZE}",
            "--select_threshold=0.0", "--keep_top_k=20"]
    assert export_ssd_network.main(args) == 0
    assert export_ssd_network.main(args) == 2  # the folder exists now
    config = json.load(open(os.path.join(export_dir, "assets", "export_config.json")))
    assert config["keep_top_k"] == 20 and config["num_classes"] == 4 and config["moving_averages"] is False
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    for seed, (h, w) in enumerate([(50, 70), (96, 40), (33, 33)]):
        open(images_dir / f"im{seed}.png", "wb").write(png_bytes(h, w, seed)[0])
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(images_dir / "photo.jpg", quality=90)
    (images_dir / "broken.jpg").write_bytes(b"not an image")
    (images_dir / "notes.txt").write_text("ignored")
    outputs = {}
    for kind, model_flag in [("saved", f"--saved_model={export_dir}"), ("ckpt", f"--checkpoint_path={prefix}")]:
        out_dir = tmp_path / f"out_{kind}"
        assert detect.main([str(images_dir), model_flag, f"--output_dir={out_dir}", "--min_score=0", "--batch_size=2",
                            f"--image_size={IMAGE_SIZE}", "--select_threshold=0.0", "--keep_top_k=20"]) == 0
        outputs[kind] = json.load(open(out_dir / "detections.json"))
        assert sorted(os.listdir(out_dir)) == sorted(
            ["detections.json", "detections.csv", "im0.png", "im1.png", "im2.png", "photo.jpg"])
        rows = list(csv.DictReader(open(out_dir / "detections.csv")))
        assert len(rows) == sum(len(e["detections"]) for e in outputs[kind]) == 4 * 20
        assert Image.open(out_dir / "im1.png").size == (40, 96)
    for saved, ckpt in zip(outputs["saved"], outputs["ckpt"], strict=True):
        assert saved["file"] == ckpt["file"] and (saved["height"], saved["width"]) == (ckpt["height"], ckpt["width"])
        for a, b in zip(saved["detections"], ckpt["detections"], strict=True):
            assert (a["class_id"], a["class_name"]) == (b["class_id"], b["class_name"])
            assert a["score"] == pytest.approx(b["score"], abs=1e-6)
            np.testing.assert_allclose(list(a["box"].values()), list(b["box"].values()), atol=1e-4)
            assert 0 <= a["box"]["ymin"] <= a["box"]["ymax"] <= saved["height"]
            assert 0 <= a["box"]["xmin"] <= a["box"]["xmax"] <= saved["width"]


def test_draw_detections_draws_inside_the_box():
    image = Image.fromarray(np.zeros((50, 80, 3), np.uint8))
    box = {"ymin": 20.0, "xmin": 10.0, "ymax": 45.0, "xmax": 60.0}
    drawn = np.asarray(detect.draw_detections(image, [{"class_id": 1, "class_name": "x", "score": 0.9, "box": box}]))
    assert drawn[45, 30].any() and drawn[30, 10].any()  # the box outline
    assert not drawn[35, 30].any()  # the inside stays untouched
    assert not drawn[5:15, 70:].any()  # far from the box and its label


def test_list_images_expands_folders_and_rejects_missing_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["b.JPG", "a.png", "c.txt", "sub/d.jpeg"]:
        (tmp_path / name).write_bytes(b"x")
    assert detect.list_images([str(tmp_path)]) == [str(tmp_path / "a.png"), str(tmp_path / "b.JPG")]
    assert detect.list_images([str(tmp_path)], recursive=True)[-1] == str(tmp_path / "sub" / "d.jpeg")
    with pytest.raises(FileNotFoundError, match="nope"):
        detect.list_images([str(tmp_path / "nope")])


def _train(train_dir, dataset_dir, cache_dir, steps=20):
    env = dict(os.environ, SSD_TOWERS_CACHE=str(cache_dir), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, os.path.join(REPO_ROOT, "train_ssd_network.py"), f"--train_dir={train_dir}",
               f"--dataset_dir={dataset_dir}", f"--image_size={IMAGE_SIZE}", "--batch_size=4",
               f"--max_number_of_steps={steps}", "--num_readers=1", "--num_preprocessing_threads=2",
               "--moving_average_decay=0.99", "--save_summaries_secs=600", "--num_summary_images=0",
               "--validation_split="]  # eval_test/ below is the evaluator's alone
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]


def _event_tags(directory):
    tags = set()
    for name in os.listdir(directory):
        if name.startswith("events.out.tfevents"):
            for event in tf1.train.summary_iterator(os.path.join(directory, name)):
                tags.update(value.tag for value in event.summary.value)
    return tags


@pytest.mark.slow
def test_train_eval_export_detect_end_to_end(sample_dataset_dir, tmp_path, capsys):
    train_dir = tmp_path / "train"
    _train(train_dir, sample_dataset_dir, tmp_path / "cache")

    # Evaluate: the dataset, network and class names come from training_config.json.
    assert eval_ssd_network.main([f"--checkpoint_path={train_dir}", "--batch_size=4", "--keep_best"]) == 0
    printed = capsys.readouterr().out
    assert "AP VOC07" in printed and "mAP (" in printed and "COCO: AP=" in printed
    for name in ("circle", "square", "triangle"):
        assert name in printed
    eval_dir = train_dir / "eval_test"
    records = summaries.read_metrics_jsonl(str(eval_dir / "metrics.jsonl"))
    assert len(records) == 1 and records[0]["global_step"] == 20 and records[0]["moving_averages"] is True
    assert records[0]["num_images"] == 8 and 0.0 <= records[0]["voc07_map"] <= 1.0
    assert {"eval/mAP_VOC07", "eval/mAP_VOC_area", "eval/COCO/AP"} <= _event_tags(str(eval_dir))
    assert sorted(os.listdir(eval_dir / "best"))[:2] == ["best.json", "checkpoint"]

    export_dir = tmp_path / "export"
    assert export_ssd_network.main([f"--checkpoint_path={train_dir}", f"--output_dir={export_dir}"]) == 0
    assert json.load(open(export_dir / "assets" / "export_config.json"))["moving_averages"] is True

    images_dir = tmp_path / "images"
    images_dir.mkdir()
    for seed, (h, w) in enumerate([(70, 110), (128, 96)]):
        open(images_dir / f"im{seed}.png", "wb").write(png_bytes(h, w, seed)[0])
    results = {}
    for kind, model_flag in [("saved", f"--saved_model={export_dir}"), ("ckpt", f"--checkpoint_path={train_dir}")]:
        out_dir = tmp_path / f"out_{kind}"
        assert detect.main([str(images_dir), model_flag, f"--output_dir={out_dir}", "--min_score=0"]) == 0
        results[kind] = json.load(open(out_dir / "detections.json"))
    saved = [d for entry in results["saved"] for d in entry["detections"]]
    ckpt = [d for entry in results["ckpt"] for d in entry["detections"]]
    assert len(saved) == len(ckpt) > 0
    for a, b in zip(saved, ckpt):
        assert a["class_name"] == b["class_name"] and a["score"] == pytest.approx(b["score"], abs=1e-6)
        np.testing.assert_allclose(list(a["box"].values()), list(b["box"].values()), atol=1e-4)

    # The same detector classes agree with the CLI's checkpoint path (EMA weights both ways).
    with detectors.saved_model_detector(str(export_dir)) as detector:
        assert detector.labels == {0: "none", 1: "circle", 2: "square", 3: "triangle"}
