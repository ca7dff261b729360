"""Learning-rate schedules against numpy formulas."""

import math

import numpy as np
import pytest
import tensorflow as tf

from deployment import learning_rate as lr_lib
from tf_compat import tf1

STEPS = [0, 1, 5, 99, 100, 101, 250, 399, 400, 401, 1000]


def evaluate(**kwargs):
    with tf.Graph().as_default():
        step = tf1.placeholder(tf.int64, [])
        rate = lr_lib.configure_learning_rate(step, **kwargs)
        assert rate.dtype == tf.float32 and rate.op.name == "learning_rate_schedule/learning_rate"
        with tf1.Session() as session:
            return np.array([session.run(rate, {step: s}) for s in STEPS])


def reference(fn):
    return np.array([fn(s) for s in STEPS], dtype=np.float64)


def test_fixed():
    np.testing.assert_allclose(evaluate(learning_rate=0.01), reference(lambda s: 0.01), rtol=1e-6)


@pytest.mark.parametrize("staircase", [True, False])
def test_exponential(staircase):
    got = evaluate(learning_rate=0.1, decay_type="exponential", decay_steps=100, decay_rate=0.5, staircase=staircase)
    expect = reference(lambda s: 0.1 * 0.5 ** ((s // 100) if staircase else s / 100))
    np.testing.assert_allclose(got, expect, rtol=1e-5)


def test_polynomial():
    got = evaluate(learning_rate=0.1, decay_type="polynomial", decay_steps=400, end_learning_rate=0.001, power=2.0)
    expect = reference(lambda s: (0.1 - 0.001) * (1 - min(s, 400) / 400) ** 2 + 0.001)
    np.testing.assert_allclose(got, expect, rtol=1e-5)


def test_cosine():
    got = evaluate(learning_rate=0.1, decay_type="cosine", decay_steps=400, end_learning_rate=0.002)
    expect = reference(lambda s: 0.002 + (0.1 - 0.002) * 0.5 * (1 + math.cos(math.pi * min(s, 400) / 400)))
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-8)


def test_piecewise_with_values():
    got = evaluate(learning_rate=1.0, decay_type="piecewise", boundaries=[100, 400], values=[1e-3, 1e-4, 1e-5])
    expect = reference(lambda s: 1e-3 if s <= 100 else (1e-4 if s <= 400 else 1e-5))
    np.testing.assert_allclose(got, expect, rtol=1e-6)


def test_piecewise_without_values_decays_by_rate():
    got = evaluate(learning_rate=1e-3, decay_type="piecewise", boundaries=[100, 400], decay_rate=0.1)
    expect = reference(lambda s: 1e-3 * 0.1 ** ((s > 100) + (s > 400)))
    np.testing.assert_allclose(got, expect, rtol=1e-5)


def test_warmup_ramps_linearly_into_the_schedule():
    got = evaluate(learning_rate=0.1, decay_type="exponential", decay_steps=100, decay_rate=0.5, staircase=True,
                   warmup_steps=250, warmup_start_factor=0.1)
    expect = reference(lambda s: 0.1 * 0.5 ** (s // 100) * min(1.0, 0.1 + 0.9 * s / 250))
    np.testing.assert_allclose(got, expect, rtol=1e-5)


def test_decay_counted_in_global_batches():
    # 6400 images, 8 per clone, 2 clones, 2 aggregated replicas: 200 global steps per epoch.
    assert lr_lib.steps_per_epoch(6400, 8, num_clones=2, num_replicas=2) == 200
    assert lr_lib.decay_steps_from_epochs(6400, 0.5, 8, num_clones=2, num_replicas=2) == 100
    got = evaluate(learning_rate=0.1, decay_type="exponential", decay_rate=0.5, num_samples_per_epoch=6400,
                   num_epochs_per_decay=0.5, batch_size=8, num_clones=2, num_replicas=2)
    expect = reference(lambda s: 0.1 * 0.5 ** (s // 100))
    np.testing.assert_allclose(got, expect, rtol=1e-5)


def test_bad_settings_are_errors():
    with tf.Graph().as_default():
        step = tf1.train.get_or_create_global_step()
        with pytest.raises(ValueError, match="decay_type"):
            lr_lib.configure_learning_rate(step, decay_type="linear")
        with pytest.raises(ValueError, match="needs decay_steps"):
            lr_lib.configure_learning_rate(step, decay_type="cosine")
        with pytest.raises(ValueError, match=r"len\(values\) == len\(boundaries\) \+ 1"):
            lr_lib.configure_learning_rate(step, decay_type="piecewise", boundaries=[10], values=[1.0])
        with pytest.raises(ValueError, match="increase"):
            lr_lib.configure_learning_rate(step, decay_type="piecewise", boundaries=[10, 5])
        with pytest.raises(ValueError, match="needs learning_rate_boundaries"):
            lr_lib.configure_learning_rate(step, decay_type="piecewise")


def test_two_phases_hand_worked():
    """1e-3 warmed up over 4 steps until step 10; then 5e-5, ramped up over 4 steps from the switch."""
    steps = [0, 2, 4, 9, 10, 11, 12, 14, 100]
    with tf.Graph().as_default():
        step = tf1.placeholder(tf.int64, [])
        first = lr_lib.configure_learning_rate(step, learning_rate=1e-3, warmup_steps=4)
        second = lr_lib.configure_learning_rate(step, learning_rate=5e-5)
        rate = lr_lib.two_phase_learning_rate(step, 10, first, second, warmup_steps=4)
        with tf1.Session() as session:
            got = [session.run(rate, {step: s}) for s in steps]
    expect = [0.0, 5e-4, 1e-3, 1e-3, 0.0, 1.25e-5, 2.5e-5, 5e-5, 5e-5]
    np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-12)
