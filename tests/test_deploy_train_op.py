"""build_train_op: trainable scopes, clipping, EMA in the checkpoint, the NaN guard under slim.learning.train."""

import logging

import numpy as np
import pytest
import tensorflow as tf

from deployment import model_deploy, train_op as train_op_lib
from deployment.devices import session_config
from deployment.model_deploy import DeploymentConfig
from deployment.train_op import NonFiniteLossError, build_train_op, get_variables_to_train, make_train_step_fn
from tf_compat import slim, tf1

RNG = np.random.default_rng(11)
IMAGES = RNG.normal(size=(4, 6, 6, 3)).astype(np.float32)
LABELS = RNG.normal(size=(4, 2)).astype(np.float32)


def toy_model(extra_loss_fn=None):
    images, labels = tf.constant(IMAGES[:2]), tf.constant(LABELS[:2])
    with tf1.variable_scope("net"):
        net = slim.conv2d(images, 4, [3, 3], scope="conv1")
        net = slim.conv2d(net, 2, [3, 3], activation_fn=None, scope="head")
    predictions = tf.reduce_mean(net, axis=[1, 2])
    tf1.losses.mean_squared_error(labels, predictions, scope="mse")
    if extra_loss_fn is not None:
        tf1.losses.add_loss(extra_loss_fn())
    return predictions


def build(num_clones=2, model_fn=toy_model, optimizer=None, trainable_scopes=None, **kwargs):
    config = DeploymentConfig(num_clones=num_clones, clone_on_cpu=True)
    global_step = model_deploy.get_or_create_global_step(config)
    clones = model_deploy.create_clones(config, model_fn)
    kwargs["variables_to_train"] = get_variables_to_train(trainable_scopes)
    optimizer = optimizer or tf1.train.GradientDescentOptimizer(0.1)
    return config, global_step, build_train_op(config, clones, optimizer, global_step=global_step, **kwargs)


def test_get_variables_to_train():
    with tf.Graph().as_default():
        toy_model()
        assert len(get_variables_to_train(None)) == 4
        assert [v.op.name for v in get_variables_to_train("net/head")] == ["net/head/weights", "net/head/biases"]
        assert len(get_variables_to_train(["net/head", "net/conv1"])) == 4
        with pytest.raises(ValueError, match="'net/hed' matches no trainable variable"):
            get_variables_to_train("net/hed")
        with pytest.raises(ValueError, match="matches no trainable variable"):
            get_variables_to_train("net/conv")  # a prefix of a name is not a scope


def test_frozen_scopes_are_left_out_and_checked():
    with tf.Graph().as_default():
        toy_model()
        assert [v.op.name for v in get_variables_to_train(None, ["net/conv1"])] == ["net/head/weights", "net/head/biases"]
        assert [v.op.name for v in get_variables_to_train("net/head", "net/conv1")] == [
            "net/head/weights", "net/head/biases"]
        with pytest.raises(ValueError, match="frozen scope 'net/conv2' matches no trainable variable"):
            get_variables_to_train(None, ["net/conv2"])
        with pytest.raises(ValueError, match="no variable left to train"):
            get_variables_to_train("net/head", ["net/head"])


def _executed_op_types(graph, fetch):
    """The types of the ops a session really runs for ``fetch`` (after pruning), from a full trace."""
    run_metadata = tf1.RunMetadata()
    with tf1.Session(graph=graph) as session:
        session.run(tf1.global_variables_initializer())
        session.run(fetch, options=tf1.RunOptions(trace_level=tf1.RunOptions.FULL_TRACE), run_metadata=run_metadata)
    types = {op.name: op.type for op in graph.get_operations()}
    executed = {node.node_name.split(":")[0] for device in run_metadata.step_stats.dev_stats
                for node in device.node_stats}
    return sorted(types[name] for name in executed if name in types)


@pytest.mark.parametrize("frozen", [[], ["net/conv1"]])
def test_frozen_layers_get_no_backward_pass(frozen):
    """A frozen first layer gets neither a weight gradient nor an input gradient at run time."""
    with tf.Graph().as_default() as graph:
        config = DeploymentConfig(num_clones=1, clone_on_cpu=True)
        global_step = model_deploy.get_or_create_global_step(config)
        clones = model_deploy.create_clones(config, toy_model)
        train = build_train_op(config, clones, tf1.train.GradientDescentOptimizer(0.1), global_step=global_step,
                               variables_to_train=get_variables_to_train(None, frozen))
    backprop = [t for t in _executed_op_types(graph, train.train_tensor) if t.startswith("Conv2DBackprop")]
    if frozen:  # the head's weight gradient only
        assert backprop == ["Conv2DBackpropFilter"]
    else:  # both weight gradients, and the head's input gradient that conv1's needs
        assert backprop == ["Conv2DBackpropFilter", "Conv2DBackpropFilter", "Conv2DBackpropInput"]


def test_time_limit_stops_training_with_a_final_checkpoint(tmp_path, caplog):
    with tf.Graph().as_default():
        _, _, train = build(num_clones=1)
        step_fn = make_train_step_fn(max_train_seconds=0.0)
        with caplog.at_level(logging.INFO):
            slim.learning.train(train.train_tensor, str(tmp_path / "train"), number_of_steps=100,
                                train_step_fn=step_fn, save_summaries_secs=0, save_interval_secs=3600)
    assert tf.train.latest_checkpoint(str(tmp_path / "train")).endswith("model.ckpt-1")
    assert any("the time limit of 0.0 minutes is reached" in r.getMessage() for r in caplog.records)
    # A run bounded only by time has an ETA: the time limit's (already reached here).
    assert any(r.getMessage().startswith("global step 1: ") and r.getMessage().endswith("ETA 0s (time limit)")
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_an_after_step_hook_stops_training_with_its_reason_and_a_final_checkpoint(tmp_path, caplog):
    seen = []

    ended = []

    def stop_at_step_3(session, global_step):
        seen.append(global_step)
        return "the hook says so" if global_step >= 3 else None

    stop_at_step_3.at_end = lambda session, global_step: ended.append(global_step)

    with tf.Graph().as_default():
        _, _, train = build(num_clones=1)
        step_fn = make_train_step_fn(after_step_hooks=[stop_at_step_3])
        with caplog.at_level(logging.INFO):
            slim.learning.train(train.train_tensor, str(tmp_path / "train"), number_of_steps=100,
                                train_step_fn=step_fn, save_summaries_secs=0, save_interval_secs=3600)
    assert seen == [1, 2, 3] and step_fn.stop_reason == "the hook says so"
    assert ended == [3]
    assert tf.train.latest_checkpoint(str(tmp_path / "train")).endswith("model.ckpt-3")
    assert any(r.getMessage() == "Stopping after global step 3: the hook says so" for r in caplog.records)


def test_trainable_scopes_freeze_the_rest():
    with tf.Graph().as_default():
        _, _, train = build(trainable_scopes="net/head")
        variables = {v.op.name: v for v in tf1.global_variables()}
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            before = session.run(variables)
            session.run(train.train_tensor)
            after = session.run(variables)
        assert np.array_equal(before["net/conv1/weights"], after["net/conv1/weights"])
        assert not np.array_equal(before["net/head/weights"], after["net/head/weights"])
        assert after["global_step"] == 1


def test_clipping_by_global_norm():
    with tf.Graph().as_default():
        _, _, train = build(clip_gradient_norm=1e-3)
        clipped_norm = tf.linalg.global_norm([g for g, _ in train.grads_and_vars])
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            norm_before, norm_after = session.run((train.gradient_norm, clipped_norm))
        assert norm_before > 1e-2
        np.testing.assert_allclose(norm_after, 1e-3, rtol=1e-4)


def test_train_op_placement_and_loss_terms():
    with tf.Graph().as_default() as graph:
        config, _, train = build()
        assert sorted(train.loss_terms) == ["clone_0/mse/value", "clone_1/mse/value", "gradient_global_norm"]
        guards = [op for op in graph.get_operations() if op.name.endswith("/AssertGuard")]
        assert len(guards) == 1 and all(op.device == config.optimizer_device() for op in guards)
        assert train.train_tensor.op.name == "train_op"


def test_moving_averages_are_saved_in_the_checkpoint(tmp_path):
    with tf.Graph().as_default():
        _, _, train = build(moving_average_decay=0.9)
        averaged = train.moving_average
        weights = [v for v in tf1.global_variables() if v.op.name == "net/head/weights"][0]
        shadow = averaged.average(weights)
        assert shadow.op.name == "net/head/weights/ExponentialMovingAverage"
        assert shadow.device == weights.device == "/device:CPU:0"
        saver = tf1.train.Saver()
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            start = session.run(weights)
            session.run(train.train_tensor)
            # num_updates=1: decay min(0.9, 2/11); the average follows the weights after the step.
            decay = min(0.9, (1 + 1) / (10 + 1))
            np.testing.assert_allclose(session.run(shadow), decay * start + (1 - decay) * session.run(weights),
                                       rtol=1e-5)
            prefix = saver.save(session, str(tmp_path / "model.ckpt"))
    names = dict(tf.train.list_variables(prefix))
    assert "net/head/weights/ExponentialMovingAverage" in names
    assert "net/conv1/biases/ExponentialMovingAverage" in names


def _nan_at_step(trigger_step):
    def extra_loss():
        step = tf.cast(tf1.train.get_global_step(), tf.float32)
        return tf.where(step >= trigger_step, tf.constant(np.nan, tf.float32), tf.constant(0.0), name="bad_term")
    return lambda: toy_model(extra_loss)


def test_nan_guard_stops_slim_learning_train_with_its_message(tmp_path, caplog):
    train_dir = str(tmp_path / "train")
    with tf.Graph().as_default():
        _, global_step, train = build(num_clones=2, model_fn=_nan_at_step(3))
        with caplog.at_level(logging.ERROR), pytest.raises(NonFiniteLossError) as raised:
            slim.learning.train(
                train.train_tensor, train_dir, number_of_steps=20, session_config=session_config(),
                train_step_fn=make_train_step_fn(), save_summaries_secs=0, save_interval_secs=0,
                log_every_n_steps=1,
            )
    message = str(raised.value)
    assert message.startswith(
        "Training stopped: loss term 'clone_0/bad_term', 'clone_1/bad_term' became NaN or Inf at global step 3 "
        "(value nan nan)"
    ), message
    assert "became NaN or Inf at global step 3" in caplog.text
    # The bad step never reached the variables: no NaN in the last checkpoint written.
    latest = tf.train.latest_checkpoint(train_dir)
    if latest:
        reader = tf.train.load_checkpoint(latest)
        for name in reader.get_variable_to_shape_map():
            assert np.all(np.isfinite(reader.get_tensor(name))), name


def test_absurd_learning_rate_stops_at_the_guard(tmp_path):
    with tf.Graph().as_default():
        _, _, train = build(num_clones=1, optimizer=tf1.train.GradientDescentOptimizer(1e12))
        with pytest.raises(NonFiniteLossError, match=r"loss term 'mse/value'(, 'gradient_global_norm')? became NaN or Inf at global step \d+"):
            slim.learning.train(
                train.train_tensor, str(tmp_path / "train"), number_of_steps=100,
                train_step_fn=make_train_step_fn(), save_summaries_secs=0, save_interval_secs=0,
            )


def test_nan_gradient_with_finite_loss_is_caught(tmp_path):
    def sqrt_at_zero():
        weights = [v for v in tf1.trainable_variables() if v.op.name == "net/head/weights"][0]
        return tf.sqrt(tf.reduce_sum(tf.square(weights)) * 0.0, name="sqrt_term")  # value 0, gradient NaN

    with tf.Graph().as_default():
        _, _, train = build(num_clones=1, model_fn=lambda: toy_model(sqrt_at_zero))
        with pytest.raises(NonFiniteLossError, match=r"loss term 'gradient_global_norm' became NaN or Inf at global step 0"):
            slim.learning.train(
                train.train_tensor, str(tmp_path / "train"), number_of_steps=5,
                train_step_fn=make_train_step_fn(), save_summaries_secs=0, save_interval_secs=0,
            )


def test_train_step_fn_logs_tensors_and_images_per_second(tmp_path, caplog):
    with tf.Graph().as_default():
        _, global_step, train = build(num_clones=2)
        learning_rate = tf.constant(0.1, name="lr")
        step_fn = make_train_step_fn(
            tensors_to_log={"learning_rate": learning_rate, **train.loss_terms}, images_per_step=4,
            log_every_n_steps=1,
        )
        with caplog.at_level(logging.INFO):
            final_loss = slim.learning.train(
                train.train_tensor, str(tmp_path / "train"), number_of_steps=3, train_step_fn=step_fn,
                save_summaries_secs=0, save_interval_secs=0,
            )
    assert np.isfinite(final_loss)
    lines = [r.getMessage() for r in caplog.records if "learning_rate = 0.1" in r.getMessage()]
    assert len(lines) == 3
    assert "global step 3: loss = " in lines[-1] and "clone_1/mse/value = " in lines[-1] and "images/s" in lines[-1]


def test_describe_nan_guard_error_ignores_other_errors():
    assert train_op_lib.describe_nan_guard_error(ValueError("something else")) is None


def _train_toy(train_dir, pretrained, number_of_steps):
    """One slim.learning.train run the way train_ssd_network.py wires it: 2 clones, init_fn, EMA, frozen conv1."""
    from deployment.checkpoint_init import init_fn_from_plan, plan_initialization

    with tf.Graph().as_default():
        _, global_step, train = build(num_clones=2, trainable_scopes="net/head", moving_average_decay=0.99)
        plan = plan_initialization(train_dir, pretrained, checkpoint_model_scope="pre", model_scope="net")
        init_fn = init_fn_from_plan(plan)
        slim.learning.train(
            train.train_tensor, train_dir, number_of_steps=number_of_steps, init_fn=init_fn,
            session_config=session_config(), train_step_fn=make_train_step_fn(),
            saver=tf1.train.Saver(max_to_keep=2, write_version=tf1.train.SaverDef.V2),
            save_summaries_secs=0, save_interval_secs=0,
        )
    return plan


def test_slim_learning_train_restores_pretrained_then_resumes(tmp_path):
    pretrained_dir = tmp_path / "pre"
    with tf.Graph().as_default():
        with tf1.variable_scope("pre"):
            net = slim.conv2d(tf.zeros([1, 6, 6, 3]), 4, [3, 3], scope="conv1")
            slim.conv2d(net, 2, [3, 3], scope="head")
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            pretrained = {v.op.name: session.run(v) for v in tf1.global_variables()}
            prefix = tf1.train.Saver().save(session, str(pretrained_dir / "model.ckpt"))
    train_dir = str(tmp_path / "train")

    plan = _train_toy(train_dir, prefix, 4)
    assert plan.source == "checkpoint" and len(plan.restore) == 4
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(train_dir))
    assert reader.get_tensor("global_step") == 4
    # conv1 frozen: still the pre-trained values; head trained from them.
    np.testing.assert_array_equal(reader.get_tensor("net/conv1/weights"), pretrained["pre/conv1/weights"])
    assert not np.array_equal(reader.get_tensor("net/head/weights"), pretrained["pre/head/weights"])
    assert reader.has_tensor("net/head/weights/ExponentialMovingAverage")

    plan = _train_toy(train_dir, prefix, 6)
    assert plan.source == "resume"
    assert tf.train.load_checkpoint(tf.train.latest_checkpoint(train_dir)).get_tensor("global_step") == 6
