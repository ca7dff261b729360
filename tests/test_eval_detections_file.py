"""eval_ssd_network.py --detections_file: the COCO results file scores, under the user's own pycocotools
on the original JSON, exactly what the evaluator reported; ids, follower file names, bad paths."""

import contextlib
import io
import json
import math
import os

import numpy as np
import pytest

import eval_ssd_network
from datasets import converter
from evaluation import coco_metrics, coco_results, evaluator as evaluator_lib
from tests.test_data_convert import _image, _save
from tests.test_export_detect import IMAGE_SIZE, save_fresh_checkpoint

CATEGORIES = [{"id": 2, "name": "ant"}, {"id": 5, "name": "bee"}, {"id": 11, "name": "cow"}]  # sparse, as COCO's


def _small_box_coco(rng, num_images=6):
    """Tiny images with many small boxes, the size of an untrained network's many detections, so that some
    of those overlap them (a non-zero AP makes the comparison mean something), and a large box per image
    for the size breakdown; image 2 has no annotations, and one box is a crowd."""
    images, annotations = [], []

    def add(image, w, h, category_id):
        x, y = float(rng.uniform(0, image["width"] - w)), float(rng.uniform(0, image["height"] - h))
        annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": category_id,
                            "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(len(annotations) == 3)})

    for index in range(num_images):
        width, height = int(rng.integers(48, 81)), int(rng.integers(48, 81))
        images.append({"id": 100 + 7 * index, "file_name": f"img{index}.jpg", "width": width, "height": height})
        if index == 2:
            continue
        for _ in range(int(rng.integers(4, 9))):
            add(images[-1], float(rng.uniform(4, 9)), float(rng.uniform(4, 9)), int(rng.choice([2, 5])))
        add(images[-1], 0.7 * width, 0.7 * height, 11)
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def _pycocotools_stats(ground_truth_file, detections_file):
    """The user's check: pycocotools on the original JSON and the detections file, COCO's defaults."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(ground_truth_file))
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(str(detections_file)), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return [math.nan if value < 0 else value for value in evaluation.stats]


@pytest.fixture(scope="module")
def fresh_checkpoint(tmp_path_factory):
    prefix, _ = save_fresh_checkpoint(str(tmp_path_factory.mktemp("ckpt")), num_classes=4)
    return prefix


def test_detections_file_scores_under_pycocotools_as_the_evaluator_reported(tmp_path, fresh_checkpoint, monkeypatch,
                                                                           caplog):
    data = _small_box_coco(np.random.default_rng(3))
    root = tmp_path / "tiny"
    root.mkdir()
    for index, image in enumerate(data["images"]):
        _save(_image(image["width"], image["height"], seed=index), root / image["file_name"], "JPEG")
    (root / "instances.json").write_text(json.dumps(data))
    dataset_dir = str(tmp_path / "converted")
    converter.convert([str(root)], dataset_dir, "tiny", converter.ConversionOptions(splits=("test",)), quiet=True)

    reported = []  # what the evaluator computed, all 12 COCO numbers (metrics.jsonl keeps 6)
    run = evaluator_lib.Evaluation.run
    monkeypatch.setattr(evaluator_lib.Evaluation, "run", lambda self, prefix: reported.append(run(self, prefix))
                        or reported[-1])
    detections_file = tmp_path / "detections.json"
    eval_dir = tmp_path / "eval"
    code = eval_ssd_network.main([f"--checkpoint_path={fresh_checkpoint}", f"--dataset_dir={dataset_dir}",
                                  "--dataset_split_name=test", f"--image_size={IMAGE_SIZE}", "--batch_size=4",
                                  f"--eval_dir={eval_dir}", f"--detections_file={detections_file}",
                                  "--num_visualized_images=0"])
    assert code == 0
    [(_, ours, _)] = reported
    detections = json.loads(detections_file.read_text())
    assert f"Wrote {len(detections)} detections of 6 images to {detections_file}" in caplog.text
    assert not os.path.exists(f"{detections_file}.tmp")

    sizes = {image["id"]: (image["width"], image["height"]) for image in data["images"]}
    assert detections and {d["image_id"] for d in detections} <= set(sizes)
    assert {d["category_id"] for d in detections} <= {c["id"] for c in CATEGORIES}
    for detection in detections:
        x, y, w, h = detection["bbox"]
        width, height = sizes[detection["image_id"]]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= width + 1e-3 and y + h <= height + 1e-3
    per_image = np.bincount([list(sizes).index(d["image_id"]) for d in detections])
    assert per_image.max() <= evaluator_lib.ssd_eval.DEFAULT_KEEP_TOP_K

    reference = _pycocotools_stats(root / "instances.json", detections_file)
    assert reference[1] > 0  # AP50: some detections match, so wrong ids could not pass unnoticed
    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps([{**d, "category_id": {2: 5, 5: 2}.get(d["category_id"], d["category_id"])}
                                   for d in detections]))
    assert _pycocotools_stats(root / "instances.json", swapped)[1] != reference[1]
    np.testing.assert_allclose([getattr(ours, name) for name in coco_metrics._COCO_STAT_NAMES], reference,
                               rtol=0, atol=1e-6)
    [record] = [json.loads(line) for line in (eval_dir / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([record[key] for key in ("coco_ap", "coco_ap50", "coco_ap75")], reference[:3], atol=1e-6)


def test_a_follower_writes_one_file_per_step_with_source_ids_and_class_ids_for_voc_data(sample_dataset_dir,
                                                                                       tmp_path):
    train_dir = tmp_path / "train"
    save_fresh_checkpoint(str(train_dir))
    evaluator_lib.evaluate(eval_ssd_network.default_options(
        checkpoint_path=str(train_dir), dataset_dir=sample_dataset_dir, image_size=str(IMAGE_SIZE),
        wait_for_checkpoints=True, timeout=0.5, eval_interval_secs=0.0, max_num_images=2, batch_size=2, no_coco=True,
        num_visualized_images=0, detections_file=str(tmp_path / "dets-{step}.json")))
    detections = json.loads((tmp_path / "dets-7.json").read_text())
    assert detections
    # VOC ids end in digits too, but only a COCO root's records have COCO image ids.
    assert all(isinstance(d["image_id"], str) and d["image_id"].count("/") == 1 for d in detections)
    assert {d["category_id"] for d in detections} <= {1, 2, 3}


@pytest.mark.parametrize("where, expected", [
    ("missing/dets.json", "its folder {tmp}/missing does not exist"),
    (".", "--detections_file {tmp}/. is a directory"),
])
def test_an_unwritable_detections_path_is_one_line_and_exit_2_before_evaluating(tmp_path, caplog, where, expected):
    path = os.path.join(str(tmp_path), where)
    code = eval_ssd_network.main([f"--checkpoint_path={tmp_path}/no_such_checkpoint", f"--detections_file={path}"])
    assert code == 2
    assert expected.format(tmp=tmp_path) in caplog.text
    assert "no_such_checkpoint" not in caplog.text  # refused before the checkpoint is looked at


def test_only_a_coco_root_s_integer_last_component_is_an_image_id():
    info = {"sources": [{"path": "/data/coco", "layout": "coco"}, {"path": "/data/VOC2007", "layout": "voc"},
                        {"path": "/other/coco", "layout": "coco"}]}
    roots = coco_results.coco_root_labels(info)
    assert roots == {"coco", "coco-2"}
    assert coco_results.coco_image_id(b"coco/annotations/instances_val2017/139", roots) == 139
    assert coco_results.coco_image_id("coco-2/train/_annotations.coco/7", roots) == 7
    assert coco_results.coco_image_id(b"VOC2007/000005", roots) == "VOC2007/000005"
    assert coco_results.coco_image_id(b"coco/instances/x7", roots) == "coco/instances/x7"
    assert coco_results.coco_image_id(b"coco/7", roots) == "coco/7"  # not <root>/<json>/<id>
    assert coco_results.coco_root_labels({}) == frozenset()  # an old description without sources
