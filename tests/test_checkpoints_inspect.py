"""checkpoints.inspect_checkpoint: the init_fn's dry run gives the counts the trainer then logs.

Also the rule it relies on in deployment.checkpoint_init: with a checkpoint of another network
(``checkpoint_model_scope`` other than the model scope), layers that network does not have start
fresh instead of stopping the trainer.
"""

import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

from checkpoints import inspect_checkpoint
from deployment.checkpoint_init import plan_initialization
from nets import nets_factory
from tf_compat import slim, tf1
from training.config import TrainingConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMG_SHAPE = (96, 96)
SUMMARY = re.compile(r"Initialization: .*")


def save_ssd_checkpoint(directory, num_classes, scope=None):
    """Model variables and global_step of a tiny SSD300 (96x96) with ``num_classes``; returns the prefix."""
    with tf.Graph().as_default():
        tf1.set_random_seed(1)
        net = nets_factory.get_network("ssd_300_vgg", num_classes=num_classes, img_shape=IMG_SHAPE)
        with slim.arg_scope(net.arg_scope()):
            net.net(tf1.placeholder(tf.float32, [1, *IMG_SHAPE, 3]), scope=scope)
        tf1.train.get_or_create_global_step()
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            return tf1.train.Saver().save(session, os.path.join(directory, "model.ckpt"), global_step=5)


def run_command(args, env_dir):
    env = dict(os.environ, SSD_TOWERS_CACHE=str(env_dir), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


# ---------------------------------------------------------------------------- checkpoint_init's rule


def _layers(scope, names):
    with tf1.variable_scope(scope):
        for name in names:
            slim.model_variable(f"{name}/weights", [2])
            slim.model_variable(f"{name}/biases", [2])


def _save(directory, scope, names, drop=()):
    with tf.Graph().as_default():
        _layers(scope, names)
        variables = [v for v in tf1.global_variables() if v.op.name not in drop]
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            return tf1.train.Saver(variables).save(session, os.path.join(directory, "model.ckpt"))


def test_layers_another_network_lacks_start_fresh(tmp_path):
    backbone = _save(str(tmp_path / "a"), "vgg_16", ["conv1", "conv2", "fc8"])
    with tf.Graph().as_default():
        _layers("ssd", ["conv1", "conv2", "conv6", "block8_box"])
        plan = plan_initialization(None, backbone, checkpoint_model_scope="vgg_16", model_scope="ssd")
        assert sorted(n for n, _ in plan.restore) == [f"ssd/conv{i}/{k}" for i in (1, 2) for k in ("biases", "weights")]
        assert sorted(plan.missing) == sorted(
            (f"ssd/{layer}/{kind}", f"vgg_16/{layer}/{kind}")
            for layer in ("conv6", "block8_box") for kind in ("weights", "biases"))
        assert "4 restored, 0 skipped (shape differs), 0 excluded, 4 missing from checkpoint, 4 initialised fresh" \
            in plan.summary_line()
        # A checkpoint of the same network (no scope mapping) must still have every layer.
        same = _save(str(tmp_path / "b"), "ssd", ["conv1", "conv2"])
        with pytest.raises(ValueError, match=r"4 variable\(s\) are not in checkpoint"):
            plan_initialization(None, same)
        with pytest.raises(ValueError, match=r"4 variable\(s\) are not in checkpoint"):
            plan_initialization(None, same, checkpoint_model_scope="ssd", model_scope="ssd")
        # A layer the checkpoint has, with a variable missing, is still an error.
        partial = _save(str(tmp_path / "c"), "vgg_16", ["conv1", "conv2"], drop=("vgg_16/conv2/biases",))
        with pytest.raises(ValueError, match=r"^1 variable\(s\) .*ssd/conv2/biases \(as vgg_16/conv2/biases\)"):
            plan_initialization(None, partial, checkpoint_model_scope="vgg_16", model_scope="ssd")
        # A scope the checkpoint does not have at all is a typo, not a network without layers.
        with pytest.raises(ValueError, match=r"no variables under --checkpoint_model_scope=vgg16 .*scopes: vgg_16"):
            plan_initialization(None, backbone, checkpoint_model_scope="vgg16", model_scope="ssd")
        assert len(plan_initialization(None, backbone, checkpoint_model_scope="vgg16", model_scope="ssd",
                                       ignore_missing_vars=True).missing) == 8


# ---------------------------------------------------------------------------- the dry run


def test_network_only_mode_lists_restores_skips_and_fresh(tmp_path):
    prefix = save_ssd_checkpoint(str(tmp_path / "voc"), num_classes=21)
    opts = TrainingConfig(train_dir=str(tmp_path / "train"), checkpoint_path=prefix, image_size="96", batch_size=2)
    result = inspect_checkpoint.inspect(opts, num_classes=4)
    plan = result.plan
    assert result.error is None and not result.training_graph
    heads = sorted(n for n in result.model_variables if "/conv_cls/" in n)
    assert len(heads) == 12 and len(result.model_variables) == 71
    assert sorted(s[0] for s in plan.skipped) == heads
    assert len(plan.restore) == 59 and plan.missing == [] and plan.excluded == []
    assert sorted(plan.fresh) == heads  # network only: no optimizer slots or global_step
    rows = {row[0]: row for row in result.checkpoint_status()}
    assert rows["global_step"][2] == "unused"
    assert rows["ssd_300_vgg/block4_box/conv_cls/weights"][2:] == (
        "skip", "ssd_300_vgg/block4_box/conv_cls/weights", [3, 3, 512, 16])
    assert rows["ssd_300_vgg/block4_box/conv_cls/weights"][1] == [3, 3, 512, 84]
    lines = result.lines()
    assert "  skip     ssd_300_vgg/block7_box/conv_cls/biases [126] -> ssd_300_vgg/block7_box/conv_cls/biases [24] " \
           "(shape differs)" in lines
    assert "  restore  ssd_300_vgg/conv6/weights [3, 3, 512, 1024]" in lines
    assert lines[-1] == result.startup_line() == plan.summary_line() + "; every layer trained (not starting from " \
        "ImageNet VGG-16 weights)"
    assert "59 restored, 12 skipped (shape differs), 0 excluded, 0 missing from checkpoint, 12 initialised fresh" \
        in lines[-1]

    # A checkpoint in train_dir wins, as in the trainer.
    resumed = inspect_checkpoint.inspect(
        TrainingConfig(train_dir=str(tmp_path / "voc"), checkpoint_path=prefix, image_size="96"),
        num_classes=4)
    assert resumed.plan.source == "resume" and resumed.checkpoint_shapes == {}
    assert "ignores --checkpoint_path" in resumed.lines()[1]
    assert resumed.lines()[-1] == (
        f"Initialization: resuming from {prefix} (checkpoint found in train_dir {tmp_path / 'voc'}); "
        "every layer trained (as in the run being resumed)")


def test_command_reports_a_stop_and_bad_paths(tmp_path):
    prefix = save_ssd_checkpoint(str(tmp_path / "other"), num_classes=4, scope="detector")
    common = ["-m", "checkpoints.inspect_checkpoint", f"--train_dir={tmp_path / 'train'}", "--num_classes=4",
              "--image_size=96", "--batch_size=2"]
    stopped = run_command([*common, f"--checkpoint_path={prefix}"], tmp_path / "cache")
    assert stopped.returncode == 1, stopped.stderr[-2000:]
    assert "  unused   detector/conv1/conv1_1/weights [3, 3, 3, 64]" in stopped.stdout
    assert re.search(r"the trainer would stop: 71 variable\(s\) are not in checkpoint", stopped.stdout)
    missing = run_command([*common, f"--checkpoint_path={tmp_path / 'typo'}"], tmp_path / "cache")
    assert missing.returncode == 2 and "typo: does not exist" in missing.stderr


@pytest.mark.slow
def test_inspection_counts_equal_what_the_trainer_logs(tmp_path, sample_dataset_dir):
    prefix = save_ssd_checkpoint(str(tmp_path / "voc"), num_classes=21)
    train_dir = str(tmp_path / "train")
    settings = dict(train_dir=train_dir, checkpoint_path=prefix, dataset_dir=sample_dataset_dir, image_size="96",
                    batch_size=2, num_readers=1, num_preprocessing_threads=1, max_number_of_steps=1)
    result = inspect_checkpoint.inspect(TrainingConfig(**settings))
    assert result.error is None and result.training_graph
    expected = result.startup_line()
    assert "59 restored, 12 skipped (shape differs), 0 excluded, 0 missing from checkpoint" in expected

    trained = run_command(["train_ssd_network.py", *(f"--{k}={v}" for k, v in settings.items())], tmp_path / "cache")
    assert trained.returncode == 0, trained.stderr[-3000:]
    logged = SUMMARY.findall(trained.stderr)
    assert logged and logged[0] == expected
    assert tf.train.latest_checkpoint(train_dir).endswith("model.ckpt-1")
