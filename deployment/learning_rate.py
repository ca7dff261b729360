"""Learning-rate schedules counted in global steps (docs/design.md, "Learning rate and optimizers").

One global step trains on ``batch_size x num_clones x num_replicas`` images, where
``num_replicas`` is the number of replicas whose batches one step aggregates
(``replicas_to_aggregate`` under ``SyncReplicasOptimizer``; 1 for asynchronous replicas,
each of which advances the global step on its own). :func:`epochs_to_steps` turns every
option given in epochs into global steps with that count.

Schedules (``lr0`` = ``learning_rate``, ``s`` = global step, ``d`` = decay steps):

- ``fixed``:        lr0
- ``exponential``:  lr0 * decay_rate ** (s / d)   (``s // d`` with ``staircase``)
- ``polynomial``:   (lr0 - end) * (1 - min(s, d) / d) ** power + end
- ``piecewise``:    ``values[i]`` for ``boundaries[i-1] < s <= boundaries[i]``
                    (``tf.compat.v1.train.piecewise_constant``); without ``values``,
                    ``lr0 * decay_rate ** i`` (the paper's x0.1 steps)
- ``cosine``:       end + (lr0 - end) * 0.5 * (1 + cos(pi * min(s, d) / d))

Warmup (``warmup_steps > 0``) multiplies the schedule by
``f + (1 - f) * s / warmup_steps`` while ``s < warmup_steps``, with
``f = warmup_start_factor``: a linear ramp up to the schedule, which itself starts
counting at step 0.
"""

import math

import tensorflow as tf

from tf_compat import tf1

DECAY_TYPES = ("fixed", "exponential", "polynomial", "piecewise", "cosine")


def steps_per_epoch(num_samples_per_epoch, batch_size, num_clones=1, num_replicas=1):
    """Global steps per epoch: each step consumes batch_size x num_clones x num_replicas images."""
    images_per_step = batch_size * num_clones * num_replicas
    if images_per_step <= 0:
        raise ValueError(f"batch_size x num_clones x num_replicas must be positive, got {images_per_step}")
    return num_samples_per_epoch / images_per_step


def epochs_to_steps(epochs, num_samples_per_epoch, batch_size, num_clones=1, num_replicas=1):
    """``epochs`` of a split of ``num_samples_per_epoch`` images in global steps, rounded to the nearest
    step: the one conversion behind every option given in epochs (--num_epochs, --warmup_epochs,
    --learning_rate_boundaries_epochs, --unfreeze_at_epoch, --new_layers_only_epochs, decay periods)."""
    if epochs is None:
        return None
    return int(round(epochs * steps_per_epoch(num_samples_per_epoch, batch_size, num_clones, num_replicas)))


def decay_steps_from_epochs(num_samples_per_epoch, num_epochs_per_decay, batch_size, num_clones=1, num_replicas=1):
    """``num_epochs_per_decay`` epochs in global steps (at least 1)."""
    return max(1, epochs_to_steps(num_epochs_per_decay, num_samples_per_epoch, batch_size, num_clones, num_replicas))


def configure_learning_rate(
    global_step,
    learning_rate=0.001,
    decay_type="fixed",
    decay_steps=None,
    decay_rate=0.94,
    staircase=True,
    end_learning_rate=0.0,
    power=1.0,
    boundaries=None,
    values=None,
    warmup_steps=0,
    warmup_start_factor=0.0,
    num_samples_per_epoch=None,
    num_epochs_per_decay=None,
    batch_size=None,
    num_clones=1,
    num_replicas=1,
):
    """The learning rate at ``global_step``: a float32 scalar named 'learning_rate_schedule/learning_rate'.

    Args:
      global_step: the global step tensor or variable.
      learning_rate: the initial rate ``lr0``.
      decay_type: one of :data:`DECAY_TYPES`.
      decay_steps: ``d`` in global steps; or give ``num_samples_per_epoch``,
        ``num_epochs_per_decay``, ``batch_size`` (per clone), ``num_clones`` and
        ``num_replicas`` to count it in epochs. Needed by exponential, polynomial, cosine.
      decay_rate: factor per ``d`` steps (exponential), per boundary (piecewise without values).
      staircase: exponential decay in whole steps of ``d``.
      end_learning_rate: the final rate of polynomial and cosine decay.
      power: polynomial exponent.
      boundaries: increasing global steps where the piecewise rate changes.
      values: ``len(boundaries) + 1`` rates for piecewise.
      warmup_steps: length of the linear warmup (0: none).
      warmup_start_factor: the warmup's starting fraction of the scheduled rate.
    """
    if decay_type not in DECAY_TYPES:
        raise ValueError(f"learning rate decay_type must be one of {DECAY_TYPES}, got {decay_type!r}")
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    if decay_type in ("exponential", "polynomial", "cosine") and decay_steps is None:
        if None in (num_samples_per_epoch, num_epochs_per_decay, batch_size):
            raise ValueError(
                f"{decay_type} decay needs decay_steps, or num_samples_per_epoch, num_epochs_per_decay "
                "and batch_size to count it in epochs"
            )
        decay_steps = decay_steps_from_epochs(
            num_samples_per_epoch, num_epochs_per_decay, batch_size, num_clones, num_replicas
        )
    if decay_steps is not None and decay_steps <= 0:
        raise ValueError(f"decay_steps must be positive, got {decay_steps}")

    with tf1.name_scope("learning_rate_schedule"):
        step = tf.cast(global_step, tf.float32)
        if decay_type == "fixed":
            rate = tf.constant(learning_rate, tf.float32)
        elif decay_type == "exponential":
            exponent = step / float(decay_steps)
            if staircase:
                exponent = tf.floor(exponent)
            rate = learning_rate * tf.pow(tf.constant(decay_rate, tf.float32), exponent)
        elif decay_type == "polynomial":
            fraction = tf.minimum(step, float(decay_steps)) / float(decay_steps)
            rate = (learning_rate - end_learning_rate) * tf.pow(1.0 - fraction, power) + end_learning_rate
        elif decay_type == "cosine":
            fraction = tf.minimum(step, float(decay_steps)) / float(decay_steps)
            cosine = 0.5 * (1.0 + tf.cos(math.pi * fraction))
            rate = end_learning_rate + (learning_rate - end_learning_rate) * cosine
        else:
            rate = _piecewise(global_step, learning_rate, boundaries, values, decay_rate)
        if warmup_steps and warmup_steps > 0:
            if not 0.0 <= warmup_start_factor <= 1.0:
                raise ValueError(f"warmup_start_factor must be in [0, 1], got {warmup_start_factor}")
            ramp = warmup_start_factor + (1.0 - warmup_start_factor) * step / float(warmup_steps)
            rate = rate * tf.minimum(ramp, 1.0)
        # Inside the schedule's scope, so the summary tag 'learning_rate' stays free.
        return tf.identity(tf.cast(rate, tf.float32), name="learning_rate")


def _piecewise(global_step, learning_rate, boundaries, values, decay_rate):
    if not boundaries:
        raise ValueError("piecewise decay needs learning_rate_boundaries (global steps)")
    boundaries = [int(b) for b in boundaries]
    if any(b <= a for a, b in zip(boundaries, boundaries[1:])):
        raise ValueError(f"learning_rate_boundaries must increase strictly, got {boundaries}")
    if values is None:
        values = [learning_rate * decay_rate**i for i in range(len(boundaries) + 1)]
    values = [float(v) for v in values]
    if len(values) != len(boundaries) + 1:
        raise ValueError(
            f"piecewise decay needs len(values) == len(boundaries) + 1, got {len(values)} values "
            f"for {len(boundaries)} boundaries"
        )
    step = tf.cast(global_step, tf.int64)
    return tf1.train.piecewise_constant(step, [tf.constant(b, tf.int64) for b in boundaries], values)


def two_phase_learning_rate(global_step, switch_step, first_rate, second_rate, warmup_steps=0):
    """``first_rate`` before global step ``switch_step``, ``second_rate`` from it on, ramped up
    linearly over ``warmup_steps`` from the switch (the variables that start training there have
    fresh optimizer slots: Adam's bias correction, counted from step 0, would make their first
    updates several times the nominal rate)."""
    with tf1.name_scope("two_phase_learning_rate"):
        step = tf.cast(global_step, tf.float32)
        since_switch = step - float(switch_step)
        ramp = tf.minimum(since_switch / float(warmup_steps), 1.0) if warmup_steps and warmup_steps > 0 else 1.0
        rate = tf.where(since_switch < 0.0, first_rate, second_rate * ramp)
        return tf.identity(tf.cast(rate, tf.float32), name="learning_rate")
