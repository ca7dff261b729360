"""Optimizers by name; AdamW's decoupled weight decay against numpy."""

import numpy as np
import pytest
import tensorflow as tf

from deployment import optimizers
from tf_compat import tf1

TARGET = np.array([1.0, -2.0, 0.5], np.float32)
START = np.array([0.3, 0.1, -0.4], np.float32)


def _quadratic_steps(optimizer_fn, num_steps, learning_rate_fn=None):
    with tf.Graph().as_default():
        step = tf1.train.get_or_create_global_step()
        var = tf1.get_variable("w", initializer=START)
        loss = tf.reduce_sum(tf.square(var - TARGET))
        learning_rate = learning_rate_fn(step) if learning_rate_fn else 0.05
        optimizer = optimizer_fn(learning_rate)
        train = optimizer.minimize(loss, global_step=step)
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            losses = [session.run(loss)]
            values = []
            for _ in range(num_steps):
                session.run(train)
                values.append(session.run(var))
                losses.append(session.run(loss))
    return np.array(values), losses


@pytest.mark.parametrize("name", optimizers.OPTIMIZER_NAMES)
def test_each_optimizer_takes_a_step_that_lowers_the_loss(name):
    learning_rate = {"adadelta": 1.0, "ftrl": 0.5, "rmsprop": 0.05}.get(name, 0.05)
    values, losses = _quadratic_steps(lambda lr: optimizers.configure_optimizer(name, learning_rate), 2)
    assert np.all(np.isfinite(values))
    assert not np.allclose(values[0], START)
    assert losses[2] < losses[0], (name, losses)


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        optimizers.configure_optimizer("lamb", 0.1)


def test_adam_uses_its_own_epsilon():
    with tf.Graph().as_default():
        assert optimizers.configure_optimizer("adam", 0.1)._epsilon == 1e-8
        assert optimizers.configure_optimizer("adamw", 0.1)._epsilon == 1e-8
        assert optimizers.configure_optimizer("rmsprop", 0.1)._epsilon == 1.0


def numpy_adamw(grad_fn, start, learning_rates, weight_decay, beta1=0.9, beta2=0.999, epsilon=1e-8):
    """Adam as tf.compat.v1 computes it, with decoupled decay by lr * weight_decay first."""
    var = start.astype(np.float64)
    m = np.zeros_like(var)
    v = np.zeros_like(var)
    history = []
    for t, lr in enumerate(learning_rates, start=1):
        grad = grad_fn(var)
        var = var * (1.0 - lr * weight_decay)
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        lr_t = lr * np.sqrt(1 - beta2**t) / (1 - beta1**t)
        var = var - lr_t * m / (np.sqrt(v) + epsilon)
        history.append(var.copy())
    return np.array(history)


def test_adamw_matches_numpy_with_a_learning_rate_schedule():
    def schedule(step):
        return 0.1 * tf.pow(0.5, tf.cast(step, tf.float32))

    values, _ = _quadratic_steps(
        lambda lr: optimizers.AdamWOptimizer(lr, weight_decay=0.3), 4, learning_rate_fn=schedule
    )
    expect = numpy_adamw(lambda w: 2 * (w - TARGET), START, [0.1 * 0.5**i for i in range(4)], 0.3)
    np.testing.assert_allclose(values, expect, rtol=1e-5, atol=1e-6)
    # Not plain Adam: the decay changes the result.
    plain = numpy_adamw(lambda w: 2 * (w - TARGET), START, [0.1 * 0.5**i for i in range(4)], 0.0)
    assert np.abs(plain - expect).max() > 1e-3


def test_adamw_sparse_gradient_decays_touched_rows_and_exclusions():
    table_start = np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0
    with tf.Graph().as_default():
        table = tf1.get_variable("table", initializer=table_start)
        excluded = tf1.get_variable("biases", initializer=np.ones(3, np.float32))
        rows = tf.gather(table, [1, 3])
        loss = tf.reduce_sum(rows) + tf.reduce_sum(excluded)
        optimizer = optimizers.AdamWOptimizer(0.1, weight_decay=0.5, exclude_from_weight_decay=["biases"])
        train = optimizer.minimize(loss)
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            session.run(train)
            table_after, excluded_after = session.run((table, excluded))
    adam_step = 0.1 * np.sqrt(1 - 0.999) / (1 - 0.9) * 0.1 / (np.sqrt(0.001) + 1e-8)  # grad 1
    expect = table_start.copy()
    expect[[1, 3]] = table_start[[1, 3]] * (1 - 0.1 * 0.5) - adam_step
    np.testing.assert_allclose(table_after, expect, rtol=1e-5)
    np.testing.assert_allclose(excluded_after, 1.0 - adam_step, rtol=1e-5)
