"""GradientAccumulationOptimizer on hand-made graphs with literal numbers: nothing moves before the K-th
micro-batch, then one update by the weighted mean of the gradients, clipped as a whole; the moving
average and the step function count applied updates only."""

import logging

import numpy as np
import pytest
import tensorflow as tf

from deployment import model_deploy
from deployment.devices import session_config
from deployment.gradient_accumulation import GradientAccumulationOptimizer
from deployment.model_deploy import DeploymentConfig
from deployment.train_op import build_train_op, make_train_step_fn
from tf_compat import tf1

INITIAL = [1.0, 2.0]


class _LinearModel:
    """loss = x . v for a variable v = INITIAL and fed x, so that the gradient is x; the micro-batch weight is fed."""

    def __init__(self, optimizer_fn, accumulate_steps=2, weighted=True, **kwargs):
        self.x = tf1.placeholder(tf.float32, [2], name="x")
        self.weight = tf1.placeholder(tf.float32, [], name="weight") if weighted else None
        self.v = tf1.get_variable("v", initializer=tf.constant(INITIAL))
        self.global_step = tf1.train.get_or_create_global_step()
        self.optimizer = GradientAccumulationOptimizer(optimizer_fn(), accumulate_steps,
                                                       micro_batch_weight=self.weight, **kwargs)
        self.train_op = self.optimizer.minimize(tf.reduce_sum(self.x * self.v), global_step=self.global_step)

    def run(self, session, gradient, weight=None):
        """Runs one micro-batch of gradient ``gradient``; returns (v, global step) after it."""
        feed = {self.x: gradient}
        if self.weight is not None:
            feed[self.weight] = weight
        session.run(self.train_op, feed)
        return session.run(self.v), session.run(self.global_step)


def _session():
    session = tf1.Session(config=session_config())
    session.run([tf1.global_variables_initializer(), tf1.local_variables_initializer()])
    return session


def test_the_kth_micro_batch_applies_the_weighted_mean_once_then_a_fresh_accumulation_starts():
    with tf.Graph().as_default():
        model = _LinearModel(lambda: tf1.train.GradientDescentOptimizer(0.1))
        with _session() as session:
            v, step = model.run(session, [1.0, 0.0], weight=1.0)
            np.testing.assert_array_equal(v, INITIAL)
            assert step == 0
            np.testing.assert_allclose(session.run(model.optimizer.accumulator(model.v)), [1.0, 0.0])
            assert session.run(model.optimizer.micro_steps) == 1

            # (1 * [1, 0] + 3 * [3, 2]) / 4 = [2.5, 1.5]
            v, step = model.run(session, [3.0, 2.0], weight=3.0)
            np.testing.assert_allclose(v, [1.0 - 0.25, 2.0 - 0.15], rtol=1e-6)
            assert step == 1
            np.testing.assert_array_equal(session.run(model.optimizer.accumulator(model.v)), [0.0, 0.0])
            assert session.run([model.optimizer.micro_steps, model.optimizer.applied_updates]) == [0, 1]

            # The next accumulation owes nothing to the last: (2 * [1, 1] + 0 * [9, 9]) / 2 = [1, 1]
            model.run(session, [1.0, 1.0], weight=2.0)
            v, step = model.run(session, [9.0, 9.0], weight=0.0)
            np.testing.assert_allclose(v, [0.75 - 0.1, 1.85 - 0.1], rtol=1e-6)
            assert step == 2


def test_when_every_weight_is_zero_the_last_gradient_is_applied():
    """No micro-batch with a positive: each gradient is the regularisation's alone, the same for all."""
    with tf.Graph().as_default():
        model = _LinearModel(lambda: tf1.train.GradientDescentOptimizer(0.1))
        with _session() as session:
            model.run(session, [4.0, 4.0], weight=0.0)
            v, step = model.run(session, [4.0, 4.0], weight=0.0)
            np.testing.assert_allclose(v, [0.6, 1.6], rtol=1e-6)
            assert step == 1


def test_without_weights_the_mean_of_three_micro_batches():
    with tf.Graph().as_default():
        model = _LinearModel(lambda: tf1.train.GradientDescentOptimizer(1.0), accumulate_steps=3, weighted=False)
        with _session() as session:
            for gradient in ([3.0, 0.0], [0.0, 3.0]):
                v, step = model.run(session, gradient)
                np.testing.assert_array_equal(v, INITIAL)
                assert step == 0
            v, step = model.run(session, [3.0, 3.0])
            np.testing.assert_allclose(v, [-1.0, 0.0], rtol=1e-6)
            assert step == 1


def test_clipping_applies_to_the_accumulated_gradient_not_to_each_micro_batch():
    with tf.Graph().as_default():
        model = _LinearModel(lambda: tf1.train.GradientDescentOptimizer(1.0), weighted=False, clip_gradient_norm=4.0)
        with _session() as session:
            # Mean [3, 4] (norm 5) clipped to norm 4: [2.4, 3.2]. Clipping the first micro-batch's [6, 8]
            # on its own would apply ([2.4, 3.2] + [0, 0]) / 2 = [1.2, 1.6].
            model.run(session, [6.0, 8.0])
            v, _ = model.run(session, [0.0, 0.0])
            np.testing.assert_allclose(v, [1.0 - 2.4, 2.0 - 3.2], rtol=1e-6)


def test_the_wrapped_optimizer_keeps_its_slots_and_state_and_sees_one_step_per_accumulation():
    with tf.Graph().as_default():
        model = _LinearModel(lambda: tf1.train.AdamOptimizer(0.1), weighted=False)
        assert model.optimizer.get_slot_names() == ["m", "v"]
        first_moment = model.optimizer.get_slot(model.v, "m")
        assert first_moment is not None and first_moment in model.optimizer.variables()
        # The accumulation's state is local: each process starts its own, no checkpoint holds it.
        local = set(tf1.local_variables())
        assert model.optimizer.accumulator(model.v) in local and model.optimizer.applied_updates in local
        assert not local & set(tf1.global_variables())
        with _session() as session:
            model.run(session, [1.0, 1.0])
            v, _ = model.run(session, [3.0, 3.0])
            # Adam's first step moves every weight by the learning rate, whatever the gradient's size.
            np.testing.assert_allclose(v, [0.9, 1.9], rtol=1e-5)
            beta1_power, _ = model.optimizer.optimizer._get_beta_accumulators()
            np.testing.assert_allclose(session.run(beta1_power), 0.9 ** 2, rtol=1e-6)  # one Adam step, not two


class _ApplyWhenAllowed(tf1.train.Optimizer):
    """A wrapper such as a loss-scaling optimizer: it calls the inner apply_gradients inside a tf.cond."""

    def __init__(self, optimizer, allowed):
        super().__init__(use_locking=False, name="ApplyWhenAllowed")
        self._optimizer, self._allowed = optimizer, allowed

    def compute_gradients(self, *args, **kwargs):
        return self._optimizer.compute_gradients(*args, **kwargs)

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        grads_and_vars = list(grads_and_vars)
        return tf1.cond(self._allowed,
                        lambda: tf.group(self._optimizer.apply_gradients(grads_and_vars, global_step=global_step)),
                        tf.no_op)


def test_a_wrapper_may_apply_it_inside_a_cond_and_a_skipped_micro_batch_does_not_count():
    with tf.Graph().as_default():
        x = tf1.placeholder(tf.float32, [2])
        allowed = tf1.placeholder(tf.bool, [])
        v = tf1.get_variable("v", initializer=tf.constant(INITIAL))
        global_step = tf1.train.get_or_create_global_step()
        accumulating = GradientAccumulationOptimizer(tf1.train.MomentumOptimizer(1.0, momentum=0.5), 2)
        train_op = _ApplyWhenAllowed(accumulating, allowed).minimize(tf.reduce_sum(x * v), global_step=global_step)
        with _session() as session:
            session.run(train_op, {x: [1.0, 1.0], allowed: True})
            session.run(train_op, {x: [100.0, 100.0], allowed: False})  # e.g. a non-finite gradient: left out
            assert session.run(global_step) == 0
            session.run(train_op, {x: [3.0, 3.0], allowed: True})
            np.testing.assert_allclose(session.run(v), [-1.0, 0.0], rtol=1e-6)
            assert session.run(global_step) == 1


def _toy_clone():
    dataset = tf.data.Dataset.from_tensor_slices(np.arange(1.0, 9.0, dtype=np.float32).reshape(4, 2))
    x = tf1.data.make_one_shot_iterator(dataset.repeat()).get_next()
    with tf1.variable_scope("net"):
        v = tf1.get_variable("v", initializer=tf.constant(INITIAL), collections=[
            tf1.GraphKeys.GLOBAL_VARIABLES, tf1.GraphKeys.TRAINABLE_VARIABLES, tf1.GraphKeys.MODEL_VARIABLES])
    tf1.losses.add_loss(tf.reduce_sum(x * v))
    return x


def test_the_moving_average_follows_applied_updates_only():
    with tf.Graph().as_default():
        config = DeploymentConfig(num_clones=1)
        global_step = model_deploy.get_or_create_global_step(config)
        clones = model_deploy.create_clones(config, _toy_clone)
        optimizer = GradientAccumulationOptimizer(tf1.train.GradientDescentOptimizer(0.1), 2)
        train = build_train_op(config, clones, optimizer, global_step=global_step, moving_average_decay=0.5,
                               regularization_losses=[], applied_updates=optimizer.applied_updates)
        (v,) = tf1.trainable_variables()
        average = train.moving_average.average(v)
        with _session() as session:
            session.run(train.train_tensor)  # x = [1, 2]
            np.testing.assert_array_equal(session.run(average), INITIAL)
            session.run(train.train_tensor)  # x = [3, 4]: v = [1, 2] - 0.1 * [2, 3] = [0.8, 1.7]
            assert session.run(global_step) == 1
            np.testing.assert_allclose(session.run(v), [0.8, 1.7], rtol=1e-6)
            # The average's decay at global step 1 is min(0.5, 2 / 11).
            decay = 2.0 / 11.0
            expected = decay * np.array(INITIAL) + (1 - decay) * np.array([0.8, 1.7])
            np.testing.assert_allclose(session.run(average), expected, rtol=1e-6)
            session.run(train.train_tensor)  # x = [5, 6]: accumulated, not applied
            np.testing.assert_allclose(session.run(average), expected, rtol=1e-6)


def test_one_call_of_the_step_function_is_one_applied_update_with_the_weighted_mean_loss_logged(tmp_path, caplog):
    with tf.Graph().as_default():
        config = DeploymentConfig(num_clones=1)
        global_step = model_deploy.get_or_create_global_step(config)
        clones = model_deploy.create_clones(config, _toy_clone)
        x = clones[0].outputs
        weight = tf.reduce_sum(x)  # 3 for the first micro-batch [1, 2], 7 for [3, 4]
        optimizer = GradientAccumulationOptimizer(tf1.train.GradientDescentOptimizer(0.1), 2, micro_batch_weight=weight)
        train = build_train_op(config, clones, optimizer, global_step=global_step, regularization_losses=[])
        summary_writer = tf1.summary.FileWriter(str(tmp_path))
        step_fn = make_train_step_fn(
            tensors_to_log={"first_x": x[0], "loss_term": train.total_loss}, images_per_step=8, log_every_n_steps=1,
            summary_op=tf1.summary.scalar("x0", x[0]), summary_writer=summary_writer,
            micro_batches=2, micro_batch_weight=weight, loss_names=("loss_term",))
        with _session() as session, caplog.at_level(logging.INFO):
            loss, should_stop = step_fn(session, train.train_tensor, global_step, {})
            assert session.run(global_step) == 1 and not should_stop
            np.testing.assert_allclose(session.run(tf1.trainable_variables()[0]), [1.0 - 0.1 * 2.4, 2.0 - 0.1 * 3.4],
                                       rtol=1e-6)
        summary_writer.close()
    # Micro-batch losses [1, 2].[1, 2] = 5 and [3, 4].[1, 2] = 11, weighted 3 and 7: (15 + 77) / 10.
    assert loss == pytest.approx(9.2)
    line = next(record.getMessage() for record in caplog.records if "global step 1:" in record.getMessage())
    assert "loss = 9.2000" in line and "loss_term = 9.2" in line and "first_x = 1," in line, line
    # The summaries come with the last micro-batch, at the global step of its update.
    (path,) = tmp_path.glob("events.out.tfevents.*")
    values = [(event.step, value.simple_value) for event in tf1.train.summary_iterator(str(path))
              for value in event.summary.value if value.tag == "x0"]
    assert values == [(1, 3.0)]
