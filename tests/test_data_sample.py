"""The built-in synthetic dataset: seeded, varied, in VOC layout, generated and converted once."""

import logging
import os
import xml.etree.ElementTree as ElementTree

import numpy as np
from PIL import Image

from datasets import converter, sample_data


def _objects(root):
    annotations = {}
    for name in sorted(os.listdir(os.path.join(root, "Annotations"))):
        xml = ElementTree.parse(os.path.join(root, "Annotations", name)).getroot()
        size = xml.find("size")
        objects = [(o.find("name").text, tuple(int(o.find("bndbox").find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")))
                   for o in xml.iter("object")]
        annotations[name[:-4]] = ((int(size.find("width").text), int(size.find("height").text)), objects)
    return annotations


def _iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union


def test_generation_is_seeded(tmp_path):
    one = sample_data.generate_voc_sample(str(tmp_path / "one"), num_images=6, seed=3)
    two = sample_data.generate_voc_sample(str(tmp_path / "two"), num_images=6, seed=3)
    other = sample_data.generate_voc_sample(str(tmp_path / "other"), num_images=6, seed=4)
    for sub in ("JPEGImages/sample_00004.jpg", "Annotations/sample_00004.xml", "ImageSets/Main/test.txt"):
        assert open(os.path.join(one, sub), "rb").read() == open(os.path.join(two, sub), "rb").read()
    assert open(os.path.join(one, "JPEGImages/sample_00004.jpg"), "rb").read() != \
        open(os.path.join(other, "JPEGImages/sample_00004.jpg"), "rb").read()


def test_generated_data_is_varied_and_consistent(tmp_path):
    root = sample_data.generate_voc_sample(str(tmp_path / "voc"), num_images=60, image_size=(96, 160), seed=0)
    annotations = _objects(root)
    classes = [name for _, objects in annotations.values() for name, _ in objects]
    assert set(classes) == set(sample_data.CLASSES)
    assert min(classes.count(c) for c in sample_data.CLASSES) >= 10
    assert 1 <= sum(1 for _, objects in annotations.values() if not objects) <= 15
    sizes = {size for size, _ in annotations.values()}
    assert len(sizes) > 30 and all(96 <= w <= 160 and 96 <= h <= 160 for w, h in sizes)
    aspects, overlaps = [], 0
    for image_id, ((width, height), objects) in annotations.items():
        assert Image.open(os.path.join(root, "JPEGImages", f"{image_id}.jpg")).size == (width, height)
        for index, (_, box) in enumerate(objects):
            assert 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height
            aspects.append((box[2] - box[0]) / (box[3] - box[1]))
            overlaps += sum(_iou(box, other) > 0 for _, other in objects[index + 1:])
    assert overlaps >= 5 and min(aspects) < 0.8 and max(aspects) > 1.25
    with open(os.path.join(root, "ImageSets", "Main", "trainval.txt")) as f:
        trainval = f.read().split()
    with open(os.path.join(root, "ImageSets", "Main", "test.txt")) as f:
        test = f.read().split()
    assert sorted(trainval + test) == sorted(annotations) and len(test) == 12


def test_shapes_are_drawn_where_their_boxes_are(tmp_path):
    root = sample_data.generate_voc_sample(str(tmp_path / "voc"), num_images=60, image_size=128, seed=5)
    checked = 0
    for image_id, (_, objects) in _objects(root).items():
        if len(objects) != 1:
            continue
        _, (xmin, ymin, xmax, ymax) = objects[0]
        pixels = np.asarray(Image.open(os.path.join(root, "JPEGImages", f"{image_id}.jpg")), np.float32)
        inside = pixels[ymin + (ymax - ymin) // 2, xmin:xmax]  # the middle row crosses every shape
        colours = inside[(inside.shape[0] // 2 - 1):(inside.shape[0] // 2 + 2)]
        assert colours.std(axis=0).max() < 20, image_id  # a flat fill colour, not the textured background
        checked += 1
    assert checked >= 3


def test_ensure_sample_dataset_builds_once_then_reuses(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="absl")
    first = sample_data.ensure_sample_dataset(cache_dir=str(tmp_path), num_images=10, image_size=64)
    info = os.path.join(first, converter.DATASET_INFO)
    stamp = os.stat(info).st_mtime_ns
    second = sample_data.ensure_sample_dataset(cache_dir=str(tmp_path), num_images=10, image_size=64)
    assert first == second and os.stat(info).st_mtime_ns == stamp
    messages = [r.getMessage() for r in caplog.records]
    assert sum("Generated the built-in sample dataset" in m for m in messages) == 1
    assert sum("Using the built-in sample dataset cached in" in m for m in messages) == 1
    assert [p for p in os.listdir(tmp_path)] == [os.path.basename(first)]  # no temporary folders left


def test_ensure_sample_dataset_uses_the_cache_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("SSD_TOWERS_CACHE", str(tmp_path / "env_cache"))
    path = sample_data.ensure_sample_dataset(num_images=4, image_size=48)
    assert path.startswith(str(tmp_path / "env_cache"))


def test_a_process_that_loses_the_race_uses_the_winners_copy(tmp_path, monkeypatch):
    generate = sample_data.generate_voc_sample
    winner = []

    def generate_while_another_process_finishes_first(*args, **kwargs):
        if not winner:
            winner.append(None)
            monkeypatch.setattr(sample_data, "generate_voc_sample", generate)  # the other process runs unhindered
            winner[0] = sample_data.ensure_sample_dataset(cache_dir=str(tmp_path), num_images=5, image_size=48)
        return generate(*args, **kwargs)

    monkeypatch.setattr(sample_data, "generate_voc_sample", generate_while_another_process_finishes_first)
    loser = sample_data.ensure_sample_dataset(cache_dir=str(tmp_path), num_images=5, image_size=48)
    assert loser == winner[0]
    assert os.listdir(tmp_path) == [os.path.basename(loser)]
    assert os.path.isfile(os.path.join(loser, converter.DATASET_INFO))
