"""eval_ssd_network.py and evaluation.evaluator: batch accounting, progress lines, --keep_best, class checks, following a directory, BCCD."""

import json
import os
import shutil

import numpy as np
import pytest

import eval_ssd_network
from datasets import converter
from evaluation import detection_metrics, evaluator as evaluator_lib, progress as progress_lib, summaries
from tests.test_export_detect import IMAGE_SIZE, save_fresh_checkpoint


def test_add_batch_scales_ground_truth_and_cuts_padding():
    """Padded rows (past num_objects / num_detections) are dropped; relative ground truth becomes pixels."""
    values = {
        "num_objects": np.array([2, 1]),
        "gt_boxes": np.array([[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]],
                              [[0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]]),
        "gt_labels": np.array([[1, 2], [1, 0]]),
        "gt_difficult": np.array([[0, 1], [0, 0]]),
        "filename": np.array([b"a.jpg", b"a.jpg"], dtype=object),
        "source_id": np.array([b"", b""], dtype=object),
        "info": {"original_shape": np.array([[100, 200], [50, 40]])},
        "detections": {
            "num_detections": np.array([1, 2]),
            "boxes": np.array([[[10, 40, 50, 120], [0, 0, 9, 9]], [[25, 20, 50, 40], [0, 0, 10, 10]]], float),
            "scores": np.array([[0.9, 0.0], [0.8, 0.7]]),
            "classes": np.array([[1, 0], [1, 2]]),
        },
    }
    evaluator = detection_metrics.DetectionEvaluator(2, {1: "x", 2: "y"})
    assert evaluator_lib.add_batch(evaluator, values, set(), 0) == 2
    reference = detection_metrics.DetectionEvaluator(2, {1: "x", 2: "y"})
    reference.add_image("a", [[10, 40, 50, 120], [0, 0, 100, 200]], [1, 2], [0, 1], [[10, 40, 50, 120]], [0.9], [1])
    reference.add_image("b", [[25, 20, 50, 40]], [1], [0], [[25, 20, 50, 40], [0, 0, 10, 10]], [0.8, 0.7], [1, 2])
    got, want = evaluator.compute(), reference.compute()
    assert got.voc07_map == want.voc07_map == 1.0
    assert [c.num_ground_truth for c in got.per_class] == [2, 0]
    assert [c.num_difficult for c in got.per_class] == [0, 1]
    assert [c.num_detections for c in got.per_class] == [2, 1]
    assert {r.image_id for r in evaluator.images} == {"a.jpg", "a.jpg#1"}  # duplicate names stay distinct


def test_progress_reports_rate_and_eta():
    now = [0.0]
    lines = []
    progress = progress_lib.Progress("eval", 100, every_secs=5, clock=lambda: now[0], log=lambda f, m: lines.append(m))
    now[0] = 2.0
    progress.update(10)
    assert lines == []  # not yet: every 5 s
    now[0] = 5.0
    progress.update(15)
    assert lines == ["eval: 25/100 images (25%), 5.0 images/s, ETA 0:15"]
    now[0] = 20.0
    progress.update(75)
    assert progress.finish() == 20.0 and lines[-1] == "eval: 100 images in 0:20 (5.0 images/s)"
    assert progress_lib.format_duration(3725) == "1:02:05"


def test_keep_best_copies_only_better_checkpoints(tmp_path):
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    for step in (1, 2, 3):
        for suffix in (".index", ".data-00000-of-00001"):
            (train_dir / f"model.ckpt-{step}{suffix}").write_text(f"step {step}")
    eval_dir = str(tmp_path / "eval")
    best = tmp_path / "eval" / "best"
    assert evaluator_lib.keep_if_best(eval_dir, str(train_dir / "model.ckpt-1"), {"voc07_map": 0.2}, "voc07_map")
    assert not evaluator_lib.keep_if_best(eval_dir, str(train_dir / "model.ckpt-2"), {"voc07_map": 0.1},
                                             "voc07_map")
    assert (best / "model.ckpt-1.index").read_text() == "step 1"
    assert evaluator_lib.keep_if_best(eval_dir, str(train_dir / "model.ckpt-3"), {"voc07_map": 0.3}, "voc07_map")
    assert sorted(os.listdir(best)) == ["best.json", "checkpoint", "model.ckpt-3.data-00000-of-00001",
                                        "model.ckpt-3.index"]
    assert json.load(open(best / "best.json"))["voc07_map"] == 0.3
    assert 'model_checkpoint_path: "model.ckpt-3"' in (best / "checkpoint").read_text()


def test_class_count_mismatch_is_a_clear_error(sample_dataset_dir, tmp_path, caplog):
    prefix, _ = save_fresh_checkpoint(str(tmp_path / "ckpt"), num_classes=6)
    code = eval_ssd_network.main([f"--checkpoint_path={prefix}", f"--dataset_dir={sample_dataset_dir}",
                                  f"--image_size={IMAGE_SIZE}"])
    assert code == 2
    assert "has 3 object classes (4 with background) but the checkpoint" in caplog.text
    assert "trained for 5" in caplog.text


def test_following_a_directory_evaluates_each_checkpoint_once_then_times_out(sample_dataset_dir, tmp_path, capsys):
    train_dir = tmp_path / "train"
    save_fresh_checkpoint(str(train_dir))
    records = evaluator_lib.evaluate(eval_ssd_network.default_options(
        checkpoint_path=str(train_dir), dataset_dir=sample_dataset_dir, image_size=str(IMAGE_SIZE),
        wait_for_checkpoints=True, timeout=1.0, eval_interval_secs=0.0, max_num_images=4, batch_size=4,
        no_coco=True))
    assert [r["global_step"] for r in records] == [7]
    assert records[0]["num_images"] == 4 and "coco_ap" not in records[0]
    jsonl = summaries.read_metrics_jsonl(str(train_dir / "eval_test" / "metrics.jsonl"))
    assert [r["global_step"] for r in jsonl] == [7]
    assert jsonl[0]["voc_box_convention"] == "devkit"  # the default: comparable with published VOC numbers
    printed = capsys.readouterr().out
    assert "AP VOC07" in printed
    assert "VOC APs: VOC devkit convention (pixel-inclusive boxes: xmax - xmin + 1 wide)" in printed

    # Restarted, the follower skips what metrics.jsonl already has and evaluates only the new checkpoint.
    save_fresh_checkpoint(str(train_dir), global_step=9)
    again = evaluator_lib.evaluate(eval_ssd_network.default_options(
        checkpoint_path=str(train_dir), dataset_dir=sample_dataset_dir, image_size=str(IMAGE_SIZE),
        wait_for_checkpoints=True, timeout=1.0, eval_interval_secs=0.0, max_num_images=4, batch_size=4,
        no_coco=True))
    assert [r["global_step"] for r in again] == [9]
    jsonl = summaries.read_metrics_jsonl(str(train_dir / "eval_test" / "metrics.jsonl"))
    assert [r["global_step"] for r in jsonl] == [7, 9]


@pytest.mark.slow
def test_bccd_test_split_is_evaluated_over_its_72_images(bccd_dir, tmp_path, capsys):
    dataset_dir = str(tmp_path / "bccd")
    converter.convert([str(bccd_dir)], dataset_dir, "bccd", converter.ConversionOptions(num_workers=2), quiet=True)
    prefix, _ = save_fresh_checkpoint(str(tmp_path / "ckpt"), num_classes=4)
    records = evaluator_lib.evaluate(eval_ssd_network.default_options(
        checkpoint_path=prefix, dataset_dir=dataset_dir, image_size=str(IMAGE_SIZE), batch_size=12,
        eval_dir=str(tmp_path / "eval")))
    printed = capsys.readouterr().out
    assert records[0]["num_images"] == 72
    for name in ("Platelets", "RBC", "WBC"):
        assert name in printed
    assert "mAP (3 classes)" in printed and "COCO: AP=" in printed
    shutil.rmtree(dataset_dir)
