"""Seeds for the stateless random ops of the preprocessing graphs.

Every random decision in ``preprocessing`` is a ``tf.random.stateless_*`` op whose seed
is a ``[2]`` int tensor derived from one per-example seed. The per-example seed in turn
comes from the global seed and the example's position in the input stream
(:func:`example_seed`). Stateless ops were chosen over stateful ops with ``seed=``
arguments because stateful ops inside a ``tf.data`` map keep one random state per op that
is shared by all examples: with ``num_parallel_calls > 1`` the order in which examples
draw from it depends on thread timing, so a run would not be reproducible. With stateless
ops the output of an example depends only on (global seed, example index, op name).

Op seeds are derived by folding a stable hash of the op's name into the example seed
(``zlib.crc32``; Python's ``hash`` is salted per process and would break reproducibility).
"""

import zlib

import tensorflow as tf


def as_stateless_seed(seed):
    """Returns ``seed`` as a ``[2]`` int64 tensor usable by ``tf.random.stateless_*`` ops.

    Args:
      seed: a Python int, a scalar integer tensor, or a ``[2]`` integer tensor (already a
        stateless seed, e.g. from :func:`example_seed`).
    """
    if isinstance(seed, bool) or seed is None:
        raise ValueError(f"seed must be an int or an integer tensor, got {seed!r}")
    if isinstance(seed, int):
        return tf.constant([seed, 0], dtype=tf.int64)
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer:
        raise ValueError(f"seed must have an integer dtype, got {seed.dtype}")
    seed = tf.cast(seed, tf.int64)
    if seed.shape.rank == 0:
        return tf.stack([seed, tf.constant(0, tf.int64)])
    if seed.shape.rank == 1 and seed.shape[0] == 2:
        return seed
    raise ValueError(f"seed must be a scalar or have shape [2], got shape {seed.shape}")


def op_seed(seed, name):
    """The stateless seed of the random op called ``name`` under the per-example ``seed``."""
    name_id = zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF
    return tf.random.experimental.stateless_fold_in(as_stateless_seed(seed), name_id)


def example_seed(global_seed, example_index):
    """The per-example seed of the ``example_index``-th example under ``global_seed``.

    Use it inside ``tf.data`` with ``Dataset.enumerate()`` placed after ``repeat`` (so every
    epoch gets fresh randomness), e.g.::

        ds = ds.repeat().enumerate().map(
            lambda i, ex: preprocess(..., seed=example_seed(FLAGS.seed, i)),
            num_parallel_calls=...)
    """
    index = tf.cast(example_index, tf.int64)
    return tf.random.experimental.stateless_fold_in(as_stateless_seed(global_seed), index)
