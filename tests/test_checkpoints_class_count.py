"""checkpoints.class_count: a 21-class SSD checkpoint becomes a 4-class starting point."""

import os

import numpy as np
import pytest
import tensorflow as tf

from checkpoints import class_count, convert_class_count
from deployment.checkpoint_init import init_fn_from_plan, plan_initialization
from nets import nets_factory
from tf_compat import slim, tf1

IMG_SHAPE = (96, 96)
NUM_HEADS = 6  # SSD300's feature layers: one conv_cls (weights, biases) each


def build_ssd(num_classes, scope=None):
    """The tiny SSD300 (96x96 input) in the default graph; returns the net."""
    net = nets_factory.get_network("ssd_300_vgg", num_classes=num_classes, img_shape=IMG_SHAPE)
    images = tf1.placeholder(tf.float32, [2, *IMG_SHAPE, 3])
    with slim.arg_scope(net.arg_scope()):
        _, _, logits, _ = net.net(images, is_training=True, scope=scope)
    return net, logits


@pytest.fixture(scope="module")
def checkpoint_21(tmp_path_factory):
    """A trained-looking 21-class checkpoint: model variables, Momentum slots, global_step.
    Returns (prefix, {name: value})."""
    directory = tmp_path_factory.mktemp("voc21")
    with tf.Graph().as_default():
        tf1.set_random_seed(3)
        _, logits = build_ssd(21)
        global_step = tf1.train.get_or_create_global_step()
        loss = tf.add_n([tf.reduce_mean(layer) for layer in logits])
        tf1.train.MomentumOptimizer(0.01, 0.9).minimize(loss, global_step=global_step)
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            # Biases are zeros after initialisation; give every variable a value of its own.
            for variable in tf1.global_variables():
                if variable.dtype.base_dtype == tf.float32:
                    variable.load(np.random.default_rng(len(variable.op.name)).normal(
                        size=variable.shape.as_list()).astype(np.float32), session)
            values = {v.op.name: session.run(v) for v in slim.get_model_variables()}
            prefix = tf1.train.Saver().save(session, str(directory / "model.ckpt"), global_step=1000)
    return prefix, values


def restore_into_4_classes(converted_prefix, ignore_missing_vars):
    """(plan, {name: restored value}, head shapes) for a 4-class tiny SSD restored from converted_prefix."""
    with tf.Graph().as_default():
        net, _ = build_ssd(4)
        plan = plan_initialization(None, converted_prefix, model_scope=net.name,
                                   ignore_missing_vars=ignore_missing_vars)
        init_fn = init_fn_from_plan(plan)
        variables = {v.op.name: v for v in slim.get_model_variables()}
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            init_fn(session)
            values = {name: session.run(variables[name]) for name, _ in plan.restore}
        head_shapes = {n: v.shape.as_list() for n, v in variables.items() if class_count.is_class_head(n)}
    return plan, values, head_shapes


def test_dropped_heads_restore_everything_else(checkpoint_21, tmp_path, capsys):
    source, saved = checkpoint_21
    output = str(tmp_path / "out" / "ssd_4.ckpt")
    assert convert_class_count.main([f"--checkpoint_path={os.path.dirname(source)}", f"--output={output}",
                                     "--num_classes=4"]) == 0
    printed = capsys.readouterr().out
    heads = sorted(n for n in saved if class_count.is_class_head(n))
    assert len(heads) == 2 * NUM_HEADS
    others = {n: v for n, v in saved.items() if n not in heads}
    assert f"{output}: {len(others)} variables, {sum(v.size for v in others.values()):,} parameters" in printed
    assert "classes: 21 -> 4" in printed and "left out" in printed
    assert "--ignore_missing_vars" in printed

    written = tf.train.load_checkpoint(output).get_variable_to_shape_map()
    assert sorted(written) == sorted(others)  # no heads, Momentum slots or global_step
    plan, restored, _ = restore_into_4_classes(output, ignore_missing_vars=True)
    assert plan.skipped == [] and plan.excluded == []
    assert sorted(n for n, _ in plan.missing) == heads
    assert sorted(n for n, _ in plan.restore) == sorted(others)
    assert sorted(plan.fresh) == heads
    for name, value in restored.items():
        np.testing.assert_array_equal(value, saved[name], err_msg=name)


def test_reinitialized_heads_restore_with_the_new_shape(checkpoint_21, tmp_path):
    source, saved = checkpoint_21
    output = str(tmp_path / "ssd_4.ckpt")
    result = class_count.convert_class_count(source, output, 4, reinitialize_heads=True, seed=5)
    assert result.old_num_classes == 21 and result.num_classes == 4 and result.reinitialized
    assert len(result.heads) == 2 * NUM_HEADS
    assert "global_step" in result.left_out
    assert any(name.endswith("/Momentum") for name in result.left_out)
    assert result.summary.num_variables == len(saved)

    plan, restored, head_shapes = restore_into_4_classes(output, ignore_missing_vars=False)
    assert plan.skipped == [] and plan.missing == [] and plan.excluded == [] and plan.fresh == []
    assert len(plan.restore) == len(saved)
    reader = tf.train.load_checkpoint(output)
    for name, shape in head_shapes.items():
        value = restored[name]
        assert list(value.shape) == shape
        if name.endswith("biases"):
            np.testing.assert_array_equal(value, 0.0)
        else:
            # conv_cls: [3, 3, C, anchors x 4]; Glorot uniform bound sqrt(6 / (fan_in + fan_out)).
            kh, kw, channels, outputs = shape
            assert outputs % 4 == 0 and outputs // 4 == saved[name].shape[-1] // 21
            bound = np.sqrt(6.0 / (kh * kw * (channels + outputs)))
            assert np.abs(value).max() <= bound and np.abs(value).max() > 0.5 * bound
        np.testing.assert_array_equal(reader.get_tensor(name), value)
    for name, value in restored.items():
        if name not in head_shapes:
            np.testing.assert_array_equal(value, saved[name], err_msg=name)


def test_model_scope_maps_a_checkpoint_scope_to_the_network(tmp_path):
    with tf.Graph().as_default():
        build_ssd(21, scope="detector")
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            prefix = tf1.train.Saver().save(session, str(tmp_path / "in" / "model.ckpt"))
    with pytest.raises(class_count.ClassCountError, match=r"under scope 'ssd_300_vgg': missing ssd_300_vgg/conv1"):
        class_count.convert_class_count(prefix, str(tmp_path / "a" / "x.ckpt"), 4)
    result = class_count.convert_class_count(prefix, str(tmp_path / "b" / "x.ckpt"), 4, model_scope="detector")
    assert all(name.startswith("ssd_300_vgg/") for name in result.summary.shapes)
    assert result.left_out == []


def test_clear_errors(checkpoint_21, tmp_path, capsys):
    source, _ = checkpoint_21
    with pytest.raises(class_count.ClassCountError, match=r"top-level scopes: global_step, ssd_300_vgg"):
        class_count.convert_class_count(source, str(tmp_path / "x.ckpt"), 4, model_name="ssd_512_vgg")
    with pytest.raises(class_count.ClassCountError, match=r"missing ssd_300_vgg/block12/conv1x1/weights"):
        class_count.convert_class_count(source, str(tmp_path / "x.ckpt"), 4, model_name="ssd_512_vgg",
                                        model_scope="ssd_300_vgg")
    with pytest.raises(class_count.ClassCountError, match="no such checkpoint"):
        class_count.convert_class_count(str(tmp_path / "nothing"), str(tmp_path / "x.ckpt"), 4)
    with pytest.raises(class_count.ClassCountError, match="must be >= 2"):
        class_count.convert_class_count(source, str(tmp_path / "x.ckpt"), 1)
    assert convert_class_count.main([f"--checkpoint_path={tmp_path}", f"--output={tmp_path}/x.ckpt",
                                     "--num_classes=4"]) == 2
    assert "directory without a 'checkpoint' state file" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.ckpt.index")
