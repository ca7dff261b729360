"""Start-up: resume > checkpoint_path > scratch, scope mapping, skips, errors, the log line and init_fn."""

import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from deployment import scopes
from deployment.checkpoint_init import init_fn_from_plan, log_plan, plan_initialization
from tf_compat import slim, tf1


def build_net(scope, num_classes):
    images = tf.zeros([1, 8, 8, 3])
    with tf1.variable_scope(scope):
        net = slim.conv2d(images, 4, [3, 3], scope="conv1")
        net = slim.conv2d(net, 4, [3, 3], scope="conv2")
        slim.conv2d(net, num_classes, [1, 1], activation_fn=None, scope="logits")


def start_up(train_dir, checkpoint_path, **arguments):
    """What the trainer does at start-up: plan, log the plan, make the init_fn; returns (init_fn, plan)."""
    plan = plan_initialization(train_dir, checkpoint_path, **arguments)
    log_plan(plan)
    return init_fn_from_plan(plan), plan


def save_checkpoint(directory, scope="vgg_16", num_classes=21, seed=0):
    """A checkpoint of build_net under ``scope``; returns (prefix, {name: value})."""
    with tf.Graph().as_default():
        tf1.set_random_seed(seed)
        build_net(scope, num_classes)
        tf1.train.get_or_create_global_step()
        saver = tf1.train.Saver()
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            values = {v.op.name: session.run(v) for v in tf1.global_variables()}
            prefix = saver.save(session, os.path.join(directory, "model.ckpt"), global_step=7)
    return prefix, values


def test_scratch_without_checkpoint_path(tmp_path):
    with tf.Graph().as_default():
        build_net("ssd", 4)
        init_fn, plan = start_up(str(tmp_path), None)
        assert init_fn is None
        assert plan.source == "scratch" and len(plan.fresh) == 6
        assert "FROM SCRATCH" in plan.summary_line()


def test_missing_default_path_warns_and_trains_from_scratch(tmp_path, caplog):
    default = str(tmp_path / "ckpt" / "pre_trained")
    with tf.Graph().as_default():
        build_net("ssd", 4)
        with caplog.at_level(logging.WARNING):
            init_fn, plan = start_up(str(tmp_path / "train"), default, default_checkpoint_path=default)
        assert init_fn is None and plan.source == "scratch"
        assert "FROM SCRATCH" in caplog.text and "pre_trained" in caplog.text


def test_wrong_path_is_a_clear_error(tmp_path):
    with tf.Graph().as_default():
        build_net("ssd", 4)
        with pytest.raises(FileNotFoundError, match=r"--checkpoint_path .*typo.*does not exist"):
            start_up(str(tmp_path), str(tmp_path / "typo" / "model.ckpt"))
        (tmp_path / "empty").mkdir()
        with pytest.raises(FileNotFoundError, match="directory holds no checkpoint"):
            start_up(str(tmp_path / "train"), str(tmp_path / "empty"))


def test_scope_mapping_restores_and_skips_class_heads(tmp_path, caplog):
    prefix, saved = save_checkpoint(str(tmp_path / "pre"), scope="vgg_16", num_classes=21)
    with tf.Graph().as_default():
        build_net("ssd_300_vgg", 4)
        with caplog.at_level(logging.INFO):
            init_fn, plan = start_up(
                str(tmp_path / "train"), str(tmp_path / "pre"),  # a directory
                checkpoint_model_scope="vgg_16", model_scope="ssd_300_vgg",
            )
        assert plan.source == "checkpoint" and plan.checkpoint == prefix
        assert sorted(plan.restore) == sorted(
            (f"ssd_300_vgg/{layer}/{kind}", f"vgg_16/{layer}/{kind}")
            for layer in ("conv1", "conv2") for kind in ("weights", "biases")
        )
        assert [(s[0], s[2], s[3]) for s in plan.skipped] == [
            ("ssd_300_vgg/logits/weights", [1, 1, 4, 4], [1, 1, 4, 21]),
            ("ssd_300_vgg/logits/biases", [4], [21]),
        ]
        assert sorted(plan.fresh) == ["ssd_300_vgg/logits/biases", "ssd_300_vgg/logits/weights"]
        assert "4 restored, 2 skipped (shape differs), 0 excluded, 0 missing from checkpoint, 2 initialised fresh" \
            in caplog.text
        assert "skipped ssd_300_vgg/logits/weights" in caplog.text
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            init_fn(session)
            for name, ckpt_name in plan.restore:
                var = [v for v in tf1.global_variables() if v.op.name == name][0]
                np.testing.assert_array_equal(session.run(var), saved[ckpt_name])


def test_exclusions_and_missing_variables(tmp_path):
    prefix, _ = save_checkpoint(str(tmp_path / "pre"), scope="ssd")
    with tf.Graph().as_default():
        build_net("ssd", 21)
        with tf1.variable_scope("ssd"):
            slim.model_variable("extra", [3])
        with pytest.raises(ValueError, match=r"1 variable\(s\) are not in checkpoint .*ssd/extra.*ignore_missing_vars"):
            plan_initialization(None, prefix)
        plan = plan_initialization(None, prefix, ignore_missing_vars=True,
                                   checkpoint_exclude_scopes="ssd/logits, ssd/conv1")
        assert plan.missing == [("ssd/extra", "ssd/extra")]
        assert sorted(plan.excluded) == ["ssd/conv1/biases", "ssd/conv1/weights", "ssd/logits/biases",
                                         "ssd/logits/weights"]
        assert sorted(n for n, _ in plan.restore) == ["ssd/conv2/biases", "ssd/conv2/weights"]


def test_exclude_scope_matches_whole_names_only(tmp_path):
    prefix, _ = save_checkpoint(str(tmp_path / "pre"), scope="ssd")
    with tf.Graph().as_default():
        build_net("ssd", 21)
        plan = plan_initialization(None, prefix, checkpoint_exclude_scopes=["ssd/conv"])
        assert plan.excluded == [] and len(plan.restore) == 6


def test_resume_beats_pretrained_beats_scratch(tmp_path):
    pre_prefix, _ = save_checkpoint(str(tmp_path / "pre"), scope="ssd")
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    with tf.Graph().as_default():
        build_net("ssd", 21)
        assert plan_initialization(str(train_dir), None).source == "scratch"
        assert plan_initialization(str(train_dir), pre_prefix).source == "checkpoint"
    resume_prefix, _ = save_checkpoint(str(train_dir), scope="ssd", seed=1)
    with tf.Graph().as_default():
        build_net("ssd", 21)
        init_fn, plan = start_up(str(train_dir), pre_prefix)
        assert init_fn is None  # the Supervisor restores the train_dir checkpoint itself
        assert plan.source == "resume" and plan.checkpoint == resume_prefix
        assert "resuming from" in plan.summary_line()


def test_var_name_map_fn(tmp_path):
    prefix, saved = save_checkpoint(str(tmp_path / "pre"), scope="vgg_16")
    with tf.Graph().as_default():
        build_net("net", 21)
        plan = plan_initialization(None, prefix, var_name_map_fn=lambda n: n.replace("net/", "vgg_16/"))
        assert len(plan.restore) == 6 and not plan.skipped


def _vgg16_conv_layers(inputs):
    """The 13 convolutions of tf_slim's vgg_16 (its layer names), without the fc layers."""
    from tf_slim.nets import vgg

    with slim.arg_scope(vgg.vgg_arg_scope()):
        net = slim.repeat(inputs, 2, slim.conv2d, 64, [3, 3], scope="conv1")
        net = slim.max_pool2d(net, [2, 2], scope="pool1")
        net = slim.repeat(net, 2, slim.conv2d, 128, [3, 3], scope="conv2")
        net = slim.max_pool2d(net, [2, 2], scope="pool2")
        net = slim.repeat(net, 3, slim.conv2d, 256, [3, 3], scope="conv3")
        net = slim.max_pool2d(net, [2, 2], scope="pool3")
        net = slim.repeat(net, 3, slim.conv2d, 512, [3, 3], scope="conv4")
        net = slim.max_pool2d(net, [2, 2], scope="pool4")
        net = slim.repeat(net, 3, slim.conv2d, 512, [3, 3], scope="conv5")
    return net


@pytest.mark.shared_data
def test_shared_vgg16_checkpoint_by_scope_mapping(vgg16_checkpoint, tmp_path):
    with tf.Graph().as_default():
        with tf1.variable_scope("ssd_300_vgg"):
            _vgg16_conv_layers(tf.zeros([1, 32, 32, 3]))
        init_fn, plan = start_up(
            str(tmp_path), vgg16_checkpoint, checkpoint_model_scope="vgg_16", model_scope="ssd_300_vgg",
        )
        assert plan.source == "checkpoint"
        assert len(plan.restore) == 26 and not plan.skipped and not plan.missing and not plan.fresh
        reader = tf.train.load_checkpoint(vgg16_checkpoint)
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            init_fn(session)
            var = [v for v in tf1.global_variables() if v.op.name == "ssd_300_vgg/conv5/conv5_3/weights"][0]
            np.testing.assert_array_equal(session.run(var), reader.get_tensor("vgg_16/conv5/conv5_3/weights"))


def test_checkpoint_model_scope_needs_model_scope(tmp_path):
    prefix, _ = save_checkpoint(str(tmp_path / "pre"))
    with tf.Graph().as_default():
        build_net("ssd", 4)
        with pytest.raises(ValueError, match="needs model_scope"):
            plan_initialization(None, prefix, checkpoint_model_scope="vgg_16")


def test_scope_helpers():
    assert scopes.split_scopes(" a/b/, c ,") == ["a/b", "c"]
    assert scopes.split_scopes(None) == []
    assert scopes.in_scope("a/conv1/w", "a/conv1")
    assert not scopes.in_scope("a/conv10/w", "a/conv1")
