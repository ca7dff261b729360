"""Epochs as an alternative to steps, freeze-then-unfreeze in one run, the progress log line, the run
summary and the CPU default batch (issue 14)."""

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import command_line
from datasets import dataset_factory
from deployment import devices, learning_rate as lr_lib, train_op as train_op_lib
from tf_compat import tf1
from training import graph as graph_lib, machines, plan as plan_lib, run_summary, trainer
from training.config import CPU_DEFAULT_BATCH_SIZE, DEFAULT_BATCH_SIZE, TrainingConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(image_size="96", batch_size=2, num_readers=1, num_preprocessing_threads=1, num_summary_images=1)


# ----------------------------------------------------------------------------- epochs -> steps


def test_epochs_become_global_steps_with_hand_worked_numbers():
    # 200 images at batch 8 x 2 clones = 16 images a step: 12.5 steps an epoch.
    assert lr_lib.epochs_to_steps(2, 200, 8, num_clones=2) == 25
    assert lr_lib.epochs_to_steps(0.5, 200, 8, num_clones=2) == 6  # 6.25 rounds down
    assert lr_lib.epochs_to_steps(0.1, 200, 8, num_clones=2) == 1  # 1.25
    assert lr_lib.epochs_to_steps(4, 200, 8, num_clones=2, num_replicas=2) == 25  # 32 images a step
    assert lr_lib.epochs_to_steps(None, 200, 8) is None
    assert lr_lib.decay_steps_from_epochs(200, 0.01, 8) == 1  # 0.25 steps: at least one

    # --num_epochs: 40 images at 4 a step are 10 steps an epoch.
    assert plan_lib.last_global_step(TrainingConfig(num_epochs=3), 40, 4) == 30
    assert plan_lib.last_global_step(TrainingConfig(num_epochs=0.01), 40, 4) == 1
    assert plan_lib.last_global_step(TrainingConfig(max_number_of_steps=7), 40, 4) == 7
    assert plan_lib.last_global_step(TrainingConfig(), 40, 4) is None

    # The schedule's epoch forms: 40 images at batch 4 x 2 clones = 5 steps an epoch.
    config = TrainingConfig(batch_size=4, num_clones=2, clone_on_cpu=True, warmup_epochs=0.5,
                            learning_rate_boundaries_epochs=["2", "3.2"])
    assert graph_lib.schedule_steps(config, 40, machines.deployment_for(config)) == (2, [10, 16])  # 2.5 -> 2
    steps = TrainingConfig(batch_size=4, warmup_steps=7, learning_rate_boundaries=["100", "200"])
    assert graph_lib.schedule_steps(steps, 40, machines.deployment_for(steps)) == (7, [100, 200])


def test_unfreeze_at_epoch_becomes_the_first_phase_of_the_plan(tmp_path):
    config = TrainingConfig(train_dir=str(tmp_path), checkpoint_path=None, unfreeze_at_epoch=1.5,
                            trainable_scopes="ssd_300_vgg/block8, ssd_300_vgg/block4_box")
    plan = plan_lib.resolve_training_plan(config, "ssd_300_vgg", 40, 4)
    assert plan.new_layers_only_steps == 15 and plan.first_phase_scopes == ("ssd_300_vgg/block8",
                                                                            "ssd_300_vgg/block4_box")
    assert "until global step 15 (--unfreeze_at_epoch=1.5), then the whole network" in plan.note
    by_step = plan_lib.resolve_training_plan(config.replace(unfreeze_at_epoch=None, unfreeze_at_step=9),
                                             "ssd_300_vgg", 40, 4)
    assert by_step.new_layers_only_steps == 9 and by_step.second_phase_trains == "the whole network"


def test_a_resumed_run_keeps_the_unfreeze_plan_it_started_with(tmp_path):
    from training.config import TrainingRecord

    with tf.Graph().as_default():
        step = tf1.train.get_or_create_global_step()
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            tf1.train.Saver([step]).save(session, str(tmp_path / "model.ckpt"), global_step=5)
    TrainingRecord(new_layers_only_steps=12, first_phase_scopes=("ssd_300_vgg/block8",)).write(str(tmp_path))
    resumed = plan_lib.resolve_training_plan(TrainingConfig(train_dir=str(tmp_path)), "ssd_300_vgg", 40, 4)
    assert resumed.new_layers_only_steps == 12 and resumed.first_phase_scopes == ("ssd_300_vgg/block8",)
    assert "only ssd_300_vgg/block8 train until global step 12 (as in the run being resumed" in resumed.note
    record = TrainingRecord.read(str(tmp_path))
    assert record.first_phase_scopes == ("ssd_300_vgg/block8",) and TrainingRecord.from_json("{}").first_phase_scopes is None


@pytest.mark.parametrize("options, message", [
    (dict(max_number_of_steps=10, num_epochs=2), "give --max_number_of_steps or --num_epochs, not both"),
    (dict(warmup_steps=10, warmup_epochs=1), "give --warmup_steps or --warmup_epochs, not both"),
    (dict(learning_rate_boundaries=["10"], learning_rate_boundaries_epochs=["1"]),
     "give --learning_rate_boundaries or --learning_rate_boundaries_epochs, not both"),
    (dict(unfreeze_at_step=5, unfreeze_at_epoch=1), "give --unfreeze_at_step or --unfreeze_at_epoch, not both"),
    (dict(new_layers_only_epochs=2, unfreeze_at_step=5), "give --new_layers_only_epochs or --unfreeze_at_step"),
    (dict(num_epochs=0), "--num_epochs"),
])
def test_a_step_option_and_its_epoch_form_are_not_both_given(options, message):
    with pytest.raises(command_line.UsageError, match=re.escape(message)):
        TrainingConfig(**options).check()
    # Each alone is fine (--warmup_epochs replaces the default --warmup_steps).
    for name in options:
        if name != "num_epochs":
            TrainingConfig(**{name: options[name]}).check()
    TrainingConfig(new_layers_only_epochs=0, unfreeze_at_step=5).check()


# ----------------------------------------------------------------------------- the CPU default batch


def test_without_a_gpu_and_without_the_flag_the_batch_is_the_cpu_default(caplog):
    assert TrainingConfig().batch_size is None  # not given: decided by the machine
    with caplog.at_level("INFO"):
        assert plan_lib.resolve_batch_size(TrainingConfig(), gpu_visible=False).batch_size == CPU_DEFAULT_BATCH_SIZE
    assert f"No GPU visible and no --batch_size: training at batch {CPU_DEFAULT_BATCH_SIZE}" in caplog.text
    assert plan_lib.resolve_batch_size(TrainingConfig(), gpu_visible=True).batch_size == DEFAULT_BATCH_SIZE
    for gpu_visible in (False, True):
        assert plan_lib.resolve_batch_size(TrainingConfig(batch_size=32), gpu_visible).batch_size == 32
        assert plan_lib.resolve_batch_size(TrainingConfig(batch_size=2), gpu_visible).batch_size == 2


# ----------------------------------------------------------------------------- the log line and the run summary


def test_progress_says_step_epoch_and_eta_when_the_run_has_an_end():
    assert train_op_lib.progress_text(120, 50.0, 500, 4.0) == "step 120/500 (epoch 2.40/10), ETA 25m"
    assert train_op_lib.progress_text(120, 12.5) == "epoch 9.60"  # no end: no ETA
    assert train_op_lib.progress_text(499, None, 500, 30.0) == "step 499/500, ETA 30s"
    assert train_op_lib.progress_text(3, None) == ""
    # A time limit: its ETA when it comes first or the run has no last step, the steps' otherwise.
    assert train_op_lib.progress_text(120, None, 500, 4.0, 600.0) == "step 120/500, ETA 10m (time limit)"
    assert train_op_lib.progress_text(120, None, 500, 4.0, 7200.0) == "step 120/500, ETA 25m"
    assert train_op_lib.progress_text(120, 12.5, None, 4.0, 90.0) == "epoch 9.60, ETA 2m (time limit)"
    assert train_op_lib.progress_text(120, None, None, None, -3.0) == "ETA 0s (time limit)"
    assert train_op_lib.format_duration(7500) == "2h05m"


def test_run_summary_says_why_the_run_stopped_and_the_best_checkpoint(tmp_path):
    os.makedirs(tmp_path / "best")
    (tmp_path / "best" / "best.json").write_text(json.dumps({"global_step": 30, "metric": "mAP_VOC07",
                                                             "mAP_VOC07": 0.61, "per_class": {"a": 0.5}}))
    reason = run_summary.stop_reason_of(None, None, 50, 50, "--num_epochs")
    summary = run_summary.summarize(str(tmp_path), 10, 50, 1000.0, 8, 20.0, reason, ended_at=1160.0)
    assert summary == {"first_global_step": 11, "last_global_step": 50, "steps": 40, "first_epoch": 0.5,
                       "last_epoch": 2.5, "wall_seconds": 160.0, "images_per_second": 2.0,
                       "stop_reason": "reached --num_epochs (global step 50)",
                       "best": {"global_step": 30, "metric": "mAP_VOC07", "mAP_VOC07": 0.61}}
    line = run_summary.summary_line(summary)
    assert line == ("Run summary: global steps 11..50 (40 steps, epoch 0.50 to 2.50) in 2.7 min, 2 images/s; "
                    "stopped: reached --num_epochs (global step 50); best mAP_VOC07 0.61 at global step 30")
    path = run_summary.write(str(tmp_path), summary)
    assert json.load(open(path)) == summary

    assert run_summary.stop_reason_of("the time limit of 1.0 minutes is reached", None, 7, None, "x") == \
        "the time limit of 1.0 minutes is reached"
    assert run_summary.stop_reason_of(None, KeyboardInterrupt(), 7, 50, "x") == "interrupted (KeyboardInterrupt)"
    assert run_summary.stop_reason_of(None, OSError("disk full\nmore"), 7, 50, "x") == "failed: OSError: disk full"
    nothing = run_summary.summarize(str(tmp_path / "none"), None, None, None, 8, None, "failed: X")
    assert nothing["steps"] == 0 and nothing["best"] is None
    assert run_summary.summary_line(nothing) == "Run summary: no step trained; stopped: failed: X"


@pytest.mark.slow
def test_num_epochs_stops_at_its_step_logs_progress_and_writes_the_run_summary(tmp_path, sample_dataset_dir):
    spec = dataset_factory.get_dataset(None, "trainval", sample_dataset_dir)
    train_dir = tmp_path / "run"
    os.makedirs(train_dir / "best")  # as the validation hook leaves it
    (train_dir / "best" / "best.json").write_text(json.dumps({"global_step": 2, "metric": "mAP", "mAP": 0.1}))
    epochs = 3 * 4 / spec.num_samples  # 3 steps of 4 images
    command = [sys.executable, os.path.join(REPO_ROOT, "train_ssd_network.py"), f"--train_dir={train_dir}",
               f"--dataset_dir={sample_dataset_dir}", "--image_size=96", "--batch_size=4", "--num_readers=1",
               "--num_preprocessing_threads=1", "--num_summary_images=0", "--log_every_n_steps=1",
               "--summarize_activations=false", "--summarize_variables=false", f"--num_epochs={epochs}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=str(tmp_path),
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert tf.train.latest_checkpoint(str(train_dir)).endswith("-3")
    end = f"{epochs:.3g}"
    assert re.search(rf"global step 1: loss = .*, step 1/3 \(epoch {4 / spec.num_samples:.2f}/{end}\), ETA \d+s",
                     log), log[-3000:]
    assert re.search(rf"global step 3: loss = .*, step 3/3 \(epoch {epochs:.2f}/{end}\), ETA 0s", log), log[-3000:]
    summary = json.load(open(train_dir / "run_summary.json"))
    assert summary["first_global_step"] == 1 and summary["last_global_step"] == 3 and summary["steps"] == 3
    assert summary["first_epoch"] == 0 and summary["last_epoch"] == round(epochs, 4)
    assert summary["images_per_second"] > 0 and summary["wall_seconds"] > 0
    assert summary["stop_reason"] == "reached --num_epochs (global step 3)"
    # In-run validation, when on, replaces the file written above: the summary has what is there at the end.
    best = json.load(open(train_dir / "best" / "best.json"))
    assert summary["best"] == {key: best[key] for key in ("global_step", "metric", best["metric"], "checkpoint_path")
                               if key in best}
    assert "Run summary: global steps 1..3 (3 steps" in log
    assert f"best {best['metric']} {best[best['metric']]} at global step {best['global_step']}" in log


# ----------------------------------------------------------------------------- freeze, then unfreeze


def _event_values(train_dir, tag):
    values = {}
    for path in glob.glob(os.path.join(train_dir, "events.out.tfevents.*")):
        for event in tf1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = value.simple_value
    return values


@pytest.mark.slow
def test_unfreeze_at_step_trains_the_scopes_first_then_the_whole_network(tmp_path, sample_dataset_dir, caplog):
    """--trainable_scopes (block8, the block4 head) until global step 2, then the whole network, in one
    graph and one session: the other variables do not move in steps 1-2 and move in step 3; their Adam
    slots exist from the start; TensorBoard's trainable_variables scalar shows the switch."""
    scopes = ("ssd_300_vgg/block8", "ssd_300_vgg/block4_box")
    config = TrainingConfig(train_dir=str(tmp_path), checkpoint_path=None, augmentation="none", optimizer="adam",
                            new_layers_learning_rate=1e-3, learning_rate=1e-3, warmup_steps=0, unfreeze_at_step=2,
                            trainable_scopes=",".join(scopes), save_summaries_secs=0, summarize_activations=False,
                            summarize_variables=False, **TINY)
    spec = dataset_factory.get_dataset(None, "trainval", sample_dataset_dir)
    plan = plan_lib.resolve_training_plan(config, "ssd_300_vgg", spec.num_samples, config.batch_size)
    assert plan.new_layers_only_steps == 2 and plan.first_phase_scopes == scopes
    with tf.Graph().as_default():
        parts = graph_lib.build_training_graph(config, spec, machines.deployment_for(config), None,
                                               plan.frozen_scopes, plan.new_layers_only_steps, plan.first_phase_scopes)
        names = {v.op.name: v for v in tf1.global_variables()}
        first = {v.op.name for _, v in parts.train.first_phase.grads_and_vars}
        assert first and all(name.startswith(scopes) for name in first)
        assert len(parts.train.grads_and_vars) == len(tf1.trainable_variables())  # then everything
        assert "ssd_300_vgg/conv5/conv5_3/weights/Adam" in names  # slots of the later layers exist from the start
        watched = {"frozen first": names["ssd_300_vgg/conv5/conv5_3/weights"],
                   "frozen head": names["ssd_300_vgg/block7_box/conv_cls/weights"],
                   "trained first": names["ssd_300_vgg/block8/conv1x1/weights"]}
        step_fn, writer = trainer.make_train_step_fn(config, parts, plan, True, steps_per_epoch=20.0, last_step=3)
        with tf1.Session(config=devices.session_config()) as session, caplog.at_level("INFO"):
            session.run([tf1.global_variables_initializer(), tf1.local_variables_initializer()])
            history = [session.run(watched)]
            for _ in range(3):
                step_fn(session, parts.train.train_tensor, parts.global_step, {})
                history.append(session.run(watched))
        writer.close()

    def moved(name, step):
        return not np.array_equal(history[step - 1][name], history[step][name])

    assert moved("trained first", 1) and moved("trained first", 2) and moved("trained first", 3)
    for name in ("frozen first", "frozen head"):
        assert not moved(name, 1) and not moved(name, 2), f"{name} trained before the switch"
        assert moved(name, 3), f"{name} did not train after the switch"
    assert re.search(r"Global step 2: the whole network starts training, at learning rate 0\.001 after a 0-step "
                     r"warmup \(trainable variables: \d+ -> \d+\)", caplog.text), caplog.text
    counts = _event_values(str(tmp_path), "trainable_variables")
    assert counts[1] == counts[2] == len(first) and counts[3] == len(parts.train.grads_and_vars), counts


def test_a_failing_run_still_writes_its_summary_with_the_error(tmp_path):
    class StepFunction:  # what make_train_step_fn's function keeps, after 4 steps from global step 10
        stop_reason, first_global_step, last_global_step, started_at = None, 10, 14, 0.0

    config = TrainingConfig(train_dir=str(tmp_path), max_number_of_steps=100)
    with pytest.raises(OSError, match="No space left"):
        with trainer._run_summary_at_end(config, StepFunction, True, 8, 20.0, 100):
            raise OSError("No space left on device\nsecond line")
    summary = json.load(open(tmp_path / "run_summary.json"))
    assert summary["stop_reason"] == "failed: OSError: No space left on device"
    assert (summary["first_global_step"], summary["last_global_step"], summary["steps"]) == (11, 14, 4)
    # A worker that is not the chief writes nothing.
    with trainer._run_summary_at_end(config.replace(train_dir=str(tmp_path / "worker")), StepFunction, False, 8,
                                     20.0, 100):
        pass
    assert not os.path.exists(tmp_path / "worker" / "run_summary.json")
