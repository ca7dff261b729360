"""training.validation: the early-stopping rule, what is validated when, and a run that validates, keeps the best
weights and stops early, with the evaluator's numbers."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from evaluation import evaluator as evaluator_lib, summaries
import eval_ssd_network
from training import validation

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stops_after(values, patience, min_delta=0.0):
    """The 1-based index of the validation after which the rule stops, or None; and the improvements."""
    rule = validation.EarlyStopping(patience, min_delta)
    improvements = []
    for index, value in enumerate(values, start=1):
        improvements.append(rule.update(value))
        if rule.should_stop:
            return index, improvements
    return None, improvements


def test_early_stopping_counts_validations_without_improvement():
    assert _stops_after([0.1, 0.2, 0.3, 0.3, 0.3], patience=2) == (5, [True, True, True, False, False])
    # An improvement resets the count.
    assert _stops_after([0.1, 0.1, 0.2, 0.2, 0.25, 0.2, 0.2], patience=2) == (
        7, [True, False, True, False, True, False, False])
    assert _stops_after([0.5, 0.4, 0.3], patience=3) == (None, [True, False, False])
    assert _stops_after([0.5, 0.4, 0.3], patience=1) == (2, [True, False])


def test_early_stopping_min_delta_and_undefined_values():
    # Gains of at most min_delta are not improvements (and the reference stays at the last real improvement).
    assert _stops_after([0.10, 0.15, 0.19, 0.21], patience=2, min_delta=0.1) == (3, [True, False, False])
    assert _stops_after([0.10, 0.15, 0.21, 0.30], patience=2, min_delta=0.1) == (None, [True, False, True, False])
    # Nothing can improve by more than 1 on a metric in [0, 1]: patience 1 stops at the second validation.
    assert _stops_after([0.0, 1.0], patience=1, min_delta=1.0) == (2, [True, False])
    # None/NaN (e.g. no ground truth) never improve; the first defined value does.
    assert _stops_after([None, float("nan"), 0.2, None], patience=3) == (None, [False, False, True, False])
    # patience 0 or None: never stops.
    assert _stops_after([0.3, 0.2, 0.1, 0.0], patience=0)[0] is None
    assert _stops_after([0.3, 0.2, 0.1, 0.0], patience=None)[0] is None
    # A resumed run's best is the value to beat.
    rule = validation.EarlyStopping(1, best=0.5)
    assert not rule.update(0.4) and rule.should_stop and "--early_stopping_patience=1" in rule.reason("voc07_map")
    with pytest.raises(ValueError, match="--early_stopping_min_delta"):
        validation.EarlyStopping(1, -0.1)


def test_validation_split_and_interval():
    assert validation.resolve_validation_split(None, {"trainval": {}, "test": {}})[0] == "test"
    split, why = validation.resolve_validation_split(None, {"train": {}})
    assert split is None and "no 'test' split" in why
    assert validation.resolve_validation_split("", {"test": {}})[0] is None
    assert validation.resolve_validation_split("val", {"val": {}, "test": {}})[0] == "val"
    with pytest.raises(ValueError, match="--validation_split=val: the dataset has no such split"):
        validation.resolve_validation_split("val", {"test": {}})
    assert validation.validation_interval(7, None, 100, 10) == 7
    assert validation.validation_interval(None, None, 100, 10) == 10  # one epoch by default
    assert validation.validation_interval(None, 0.5, 100, 10) == 5
    assert validation.validation_interval(None, 0.01, 100, 10) == 1
    with pytest.raises(ValueError, match="not both"):
        validation.validation_interval(3, 1.0, 100, 10)


def test_validation_is_due_at_each_multiple_reached_and_at_the_last_step():
    due = [step for previous, step in zip([None] + list(range(1, 12)), range(1, 13))
           if validation.validation_due(step, previous, 5, last_step=12)]
    assert due == [5, 10, 12]
    # An asynchronous cluster: the chief sees 3, 7, 9, 12 (other workers ran the steps in between).
    assert [validation.validation_due(step, previous, 5) for previous, step in [(3, 7), (7, 9), (9, 12)]] == [
        True, False, True]
    # A resumed run's first step validates only on a multiple.
    assert validation.validation_due(20, None, 5) and not validation.validation_due(21, None, 5)


def _train(train_dir, dataset_dir, cache_dir, *extra):
    env = dict(os.environ, SSD_TOWERS_CACHE=str(cache_dir), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, os.path.join(REPO_ROOT, "train_ssd_network.py"), f"--train_dir={train_dir}",
               f"--dataset_dir={dataset_dir}", "--image_size=96", "--batch_size=2", "--num_readers=1",
               "--num_preprocessing_threads=2", "--num_summary_images=0", "--save_summaries_secs=600", *extra]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    return completed, completed.stdout + completed.stderr


def _event_tags(directory):
    tags = set()
    for name in os.listdir(directory):
        if name.startswith("events.out.tfevents"):
            for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
                tags.update(value.tag for value in event.summary.value)
    return tags


def _evaluate(checkpoint_prefix, eval_dir):
    records = evaluator_lib.evaluate(eval_ssd_network.default_options(
        checkpoint_path=checkpoint_prefix, batch_size=2, eval_dir=str(eval_dir), progress_every_secs=1e9,
        num_visualized_images=2))
    assert len(records) == 1
    assert {"eval/detections/0", "eval/detections/1"} <= _event_tags(eval_dir)
    return records[0]


def _assert_same_metrics(in_run, evaluated):
    for name in ("num_images", "voc07_map", "voc_area_map", "coco_ap", "coco_ap50"):
        assert evaluated[name] == pytest.approx(in_run[name], abs=1e-6), name
    assert evaluated["moving_averages"] is in_run["moving_averages"]
    for name, entry in in_run["per_class"].items():
        for field in ("voc07_ap", "voc_area_ap"):
            assert evaluated["per_class"][name][field] == pytest.approx(entry[field], abs=1e-6), (name, field)


@pytest.mark.slow
def test_a_run_validates_keeps_the_best_stops_early_and_agrees_with_the_evaluator(sample_dataset_dir, tmp_path):
    train_dir = tmp_path / "train"
    # min_delta 1 on a metric in [0, 1]: no validation can improve on the first, so patience 1 stops the run at
    # the second validation (step 20) whatever the weights do. Ten steps at 1e-3 give a mAP above 0 (so that
    # the comparison with the evaluator below compares something). Two towers, EMA weights.
    result, log = _train(train_dir, sample_dataset_dir, tmp_path / "cache", "--num_clones=2", "--clone_on_cpu",
                         "--moving_average_decay=0.9", "--max_number_of_steps=100", "--learning_rate=0.001",
                         "--warmup_steps=0", "--validate_every_n_steps=10", "--early_stopping_patience=1",
                         "--early_stopping_min_delta=1.0", "--restore_best_at_end")
    assert result.returncode == 0, log[-4000:]
    assert "Validating on the dataset's 'test' split (the default" in log
    assert log.count("Validation at global step 10 on test (8 images, EMA weights)") == 1  # once, not per tower
    assert "Validation at global step 20 on test" in log and "Validation at global step 30" not in log
    assert "Stopping after global step 20: early stopping: 1 validations without an improvement" in log

    eval_dir = train_dir / "eval_test"
    records = summaries.read_metrics_jsonl(str(eval_dir / "metrics.jsonl"))
    assert [r["global_step"] for r in records] == [10, 20]
    assert records[0]["voc07_map"] > 0
    assert all(r["validation_loss"] > 0 and r["moving_averages"] is True for r in records)
    # The evaluator's tags, the validation loss, and pictures of the first 3 images (the default).
    assert {"eval/mAP_VOC07", "eval/mAP_VOC_area", "eval/COCO/AP", "eval/validation_loss", "eval/detections/0",
            "eval/detections/2"} <= _event_tags(eval_dir)
    assert "eval/detections/3" not in _event_tags(eval_dir)

    best_record = records[1] if records[1]["voc07_map"] > records[0]["voc07_map"] else records[0]
    best_step = best_record["global_step"]
    best = json.loads((train_dir / "best" / "best.json").read_text())
    assert best["global_step"] == best_step and best["metric"] == "voc07_map"
    assert best["value"] == pytest.approx(best_record["voc07_map"], abs=1e-12)
    assert tf.train.latest_checkpoint(str(train_dir / "best")).endswith(f"model.ckpt-{best_step}")
    assert os.listdir(train_dir / "best").count(f"model.ckpt-{best_step}.index") == 1
    assert tf.train.latest_checkpoint(str(train_dir)).endswith("-20")
    restored = (f"--restore_best_at_end: the final checkpoint holds the best weights, of global step {best_step}"
                if best_step == 10 else "--restore_best_at_end: the last weights (global step 20) are the best")
    assert restored in log

    # The evaluator on the best checkpoint prints the in-run numbers of its step ...
    _assert_same_metrics(best_record, _evaluate(str(train_dir / "best" / f"model.ckpt-{best_step}"),
                                                tmp_path / "eval_best"))
    # ... and, with --restore_best_at_end, the run's final checkpoint (step 20) holds those same weights.
    _assert_same_metrics(best_record, _evaluate(tf.train.latest_checkpoint(str(train_dir)), tmp_path / "eval_last"))


@pytest.mark.slow
def test_a_run_at_learning_rate_0_stops_early_and_ends_with_the_best_weights(sample_dataset_dir, tmp_path):
    train_dir = tmp_path / "train"
    # The rate is 0 from global step 5 on (piecewise: steps 0..4 at 1e-3): the weights stop changing, so the
    # validations at steps 10 and 15 cannot improve on step 5's and patience 2 stops the run at step 15.
    result, log = _train(train_dir, sample_dataset_dir, tmp_path / "cache", "--max_number_of_steps=100",
                         "--warmup_steps=0", "--learning_rate_decay_type=piecewise", "--learning_rate_boundaries=4",
                         "--learning_rate_values=0.001,0", "--validate_every_n_steps=5",
                         "--early_stopping_patience=2", "--restore_best_at_end", "--best_metric=voc_area_map")
    assert result.returncode == 0, log[-4000:]
    records = summaries.read_metrics_jsonl(str(train_dir / "eval_test" / "metrics.jsonl"))
    assert [r["global_step"] for r in records] == [5, 10, 15]
    assert records[0]["voc_area_map"] == records[1]["voc_area_map"] == records[2]["voc_area_map"]
    assert all(r["moving_averages"] is False for r in records)
    assert "Stopping after global step 15: early stopping: 2 validations without an improvement of voc_area_map" \
        in log
    assert "--restore_best_at_end: the final checkpoint holds the best weights, of global step 5" in log
    best = json.loads((train_dir / "best" / "best.json").read_text())
    assert (best["global_step"], best["metric"]) == (5, "voc_area_map")
    assert tf.train.latest_checkpoint(str(train_dir)).endswith("-15")

    # Resumed with more steps, the run's patience goes on from the stopped run's count (2 validations
    # without an improvement): the next validation, at step 20, stops it (a fresh count would go to 25).
    result, log = _train(train_dir, sample_dataset_dir, tmp_path / "cache", "--max_number_of_steps=100",
                         "--warmup_steps=0", "--learning_rate_decay_type=piecewise", "--learning_rate_boundaries=4",
                         "--learning_rate_values=0.001,0", "--validate_every_n_steps=5",
                         "--early_stopping_patience=2", "--restore_best_at_end", "--best_metric=voc_area_map")
    assert result.returncode == 0, log[-4000:]
    assert "Early stopping goes on from the earlier run: 2 validations without an improvement of voc_area_map" in log
    assert "Stopping after global step 20: early stopping: 3 validations without an improvement" in log, log[-3000:]
    assert [r["global_step"] for r in summaries.read_metrics_jsonl(str(train_dir / "eval_test" / "metrics.jsonl"))] \
        == [5, 10, 15, 20]


def test_a_resumed_run_replays_the_earlier_validations_into_its_patience():
    def record(step, value, in_run=True):
        return {"global_step": step, "voc07_map": value, **({"validation_loss": 1.0} if in_run else {})}

    records = [record(5, 0.30), record(10, 0.50), record(15, 0.45), record(15, 0.99, in_run=False),
               record(20, None), record(25, 0.70)]
    # Resumed at step 21 (its first step): 5, 10 (best 0.5), 15 and 20 replayed; the evaluator command's
    # record and the validation of step 25 (after the checkpoint the run resumed from) are not.
    rule = validation.resume_early_stopping(3, 0.0, records, "voc07_map", before_step=21)
    assert (rule.best, rule.without_improvement, rule.should_stop) == (0.5, 2, False)
    assert not rule.update(0.5) and rule.should_stop  # the third validation in a row without a gain
    # A best saved after the resumed checkpoint (best.json) still has to be beaten; the count stays.
    rule = validation.resume_early_stopping(3, 0.0, records, "voc07_map", before_step=21, best_so_far=0.7)
    assert (rule.best, rule.without_improvement) == (0.7, 2)
    assert validation.resume_early_stopping(3, 0.0, records, "voc07_map", before_step=1).without_improvement == 0


def test_best_json_names_the_metric_and_its_value_and_a_damaged_one_is_replaced(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "training_config.json").write_text("{}")
    best_dir = tmp_path / "best"
    best_dir.mkdir()
    evaluator_lib.write_best_record(str(best_dir), {"global_step": 7, "voc07_map": 0.25}, "voc07_map",
                                    str(tmp_path / "train"))
    assert evaluator_lib.read_best_record(str(best_dir)) == {"global_step": 7, "voc07_map": 0.25,
                                                             "metric": "voc07_map", "value": 0.25}
    assert sorted(os.listdir(best_dir)) == ["best.json", "training_config.json"]
    (best_dir / "best.json").write_text('{"global_step": 7, "voc0')  # a run killed during an older write
    assert evaluator_lib.read_best_record(str(best_dir)) is None
