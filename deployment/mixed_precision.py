"""Mixed precision for the towers: float32 variables computed in bfloat16 or float16, and loss scaling.

``--precision`` (:data:`PRECISIONS`):

- ``fp32``: everything in float32 (the default).
- ``mixed_bf16``: each tower computes its convolutions and activations in bfloat16. The variables stay
  float32: :func:`tower_precision` installs a custom getter (:func:`float32_variables_getter`) that creates
  every variable the network asks for in a low precision as a float32 variable and hands the network a
  cast of it. Checkpoints, the moving averages, restores from ImageNet weights, evaluation and export see
  the same float32 variables as in an fp32 run (a checkpoint written in one precision restores in another),
  the weight decay is computed on the float32 variables, the gradients arrive at the variables in float32
  (the gradient of the cast) and are averaged over the towers in float32 on the optimizer device. The
  trainer casts the heads' outputs back to float32 before the multibox loss: the softmax, the hard-negative
  ranking and the losses run in float32. bfloat16 has float32's exponent range, so it needs no loss scaling.
- ``mixed_fp16``: the same in float16, whose range (largest 65504, smallest normal 6e-5) makes small
  gradients underflow to zero. :class:`DynamicLossScaleOptimizer` multiplies the loss by a scale before the
  backward pass and divides the gradients by it after, in float32; when a step's gradients are not finite
  (the scaled backward pass overflowed) it skips that update and halves the scale, and it doubles the scale
  after ``growth_interval`` finite steps in a row (the scheme of Micikevicius et al., "Mixed Precision
  Training", 2018, and of TensorFlow's own loss-scale optimizers).

An overflow skip is normal (a few at the start while the scale finds its level, then rarely). A real
divergence is told apart in two ways, each stopping training with the NaN guard's message
(:mod:`deployment.train_op`): a loss term that is NaN/Inf before scaling (the guard checks the unscaled
losses), or :attr:`DynamicLossScaleOptimizer.max_consecutive_skips` skipped steps in a row (the scale
is then at its floor of 1 and the gradients still overflow).

The loss scale and the skip counters are local variables: they are not written to checkpoints, so any
precision resumes any checkpoint; a resumed float16 run starts again from the initial scale (at most a few
skipped steps). ``loss_scale`` and ``skipped_steps`` (in this run) are in TensorBoard and in the log line.
"""

import contextlib

import tensorflow as tf

from tf_compat import tf1

PRECISIONS = ("fp32", "mixed_bf16", "mixed_fp16")
COMPUTE_DTYPES = {"fp32": tf.float32, "mixed_bf16": tf.bfloat16, "mixed_fp16": tf.float16}
_LOW_PRECISION = (tf.bfloat16, tf.float16)

# TensorFlow's defaults for dynamic loss scaling (tf.keras.mixed_precision.LossScaleOptimizer).
INITIAL_LOSS_SCALE = 2.0 ** 15
GROWTH_INTERVAL = 2000
SCALE_FACTOR = 2.0
MIN_LOSS_SCALE = 1.0
# From 2**15, 15 halvings reach the floor of 1; ten more overflows at that floor are a divergence.
MAX_CONSECUTIVE_SKIPS = 25

OVERFLOW_GUARD_MARKER = "float16 overflow guard"


def compute_dtype(precision):
    """The towers' compute dtype for ``--precision``."""
    if precision not in COMPUTE_DTYPES:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return COMPUTE_DTYPES[precision]


def needs_loss_scaling(precision):
    return compute_dtype(precision) == tf.float16


def float32_variables_getter(getter, name, *args, **kwargs):
    """Variable-scope custom getter: a variable asked for in bfloat16/float16 is created (or reused) in
    float32, and the caller gets its cast to the asked dtype. Other dtypes pass through unchanged."""
    requested = kwargs.get("dtype")
    requested = tf.as_dtype(requested) if requested is not None else None
    if requested not in _LOW_PRECISION:
        return getter(name, *args, **kwargs)
    kwargs["dtype"] = tf.float32
    variable = getter(name, *args, **kwargs)
    return tf.cast(variable, requested, name=f"{name.split('/')[-1]}_{requested.name}")


@contextlib.contextmanager
def tower_precision(precision):
    """Within this context, variables asked for in a low precision are float32 variables read through a
    cast (:func:`float32_variables_getter`); ``fp32`` changes nothing. The name scope is left as it is."""
    if compute_dtype(precision) == tf.float32:
        yield
        return
    with tf1.variable_scope(tf1.get_variable_scope(), custom_getter=float32_variables_getter,
                            auxiliary_name_scope=False):
        yield


def to_float32(tensors):
    """``tensors`` (a list) cast to float32 where they are not."""
    return [t if t.dtype == tf.float32 else tf.cast(t, tf.float32) for t in tensors]


def _local_variable(name, initial_value, dtype):
    return tf1.Variable(initial_value, name=name, dtype=dtype, trainable=False,
                        collections=[tf1.GraphKeys.LOCAL_VARIABLES])


def _scale_gradient(gradient, factor):
    if gradient is None:
        return None
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(gradient.values * tf.cast(factor, gradient.values.dtype), gradient.indices,
                                gradient.dense_shape)
    return gradient * tf.cast(factor, gradient.dtype)


def all_finite(gradients):
    """A scalar bool: every element of every gradient is finite."""
    checks = [tf.reduce_all(tf.math.is_finite(g.values if isinstance(g, tf.IndexedSlices) else g))
              for g in gradients if g is not None]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


class DynamicLossScaleOptimizer(tf1.train.Optimizer):
    """Wraps a ``tf.compat.v1.train.Optimizer`` with dynamic loss scaling (see the module docstring).

    ``compute_gradients`` differentiates ``loss * loss_scale`` and returns the gradients divided by the
    scale, in float32; ``apply_gradients`` applies them through the wrapped optimizer only when all are
    finite, then updates the scale (halved on an overflow, down to ``min_loss_scale``; doubled after
    ``growth_interval`` finite steps in a row). A skipped step still advances ``global_step``, as
    TensorFlow's Keras loss-scale optimizer counts it: a run's step count, schedule and checkpoints count
    the steps run. Build it on the optimizer device: its state lives there.
    """

    skips_non_finite_gradients = True

    def __init__(self, optimizer, initial_loss_scale=INITIAL_LOSS_SCALE, growth_interval=GROWTH_INTERVAL,
                 scale_factor=SCALE_FACTOR, min_loss_scale=MIN_LOSS_SCALE,
                 max_consecutive_skips=MAX_CONSECUTIVE_SKIPS, name="DynamicLossScale"):
        if initial_loss_scale < min_loss_scale or scale_factor <= 1 or growth_interval < 1:
            raise ValueError("loss scaling needs initial_loss_scale >= min_loss_scale, scale_factor > 1 and "
                             "growth_interval >= 1")
        super().__init__(use_locking=False, name=name)
        self._optimizer = optimizer
        self.growth_interval = growth_interval
        self.scale_factor = scale_factor
        self.min_loss_scale = min_loss_scale
        self.max_consecutive_skips = max_consecutive_skips
        with tf1.variable_scope(name):
            self.loss_scale = _local_variable("loss_scale", initial_loss_scale, tf.float32)
            self.finite_steps_in_a_row = _local_variable("finite_steps_in_a_row", 0, tf.int64)
            self.skipped_steps = _local_variable("skipped_steps", 0, tf.int64)
            self.skipped_steps_in_a_row = _local_variable("skipped_steps_in_a_row", 0, tf.int64)
            # Updates applied in this process, for what must follow applied updates only (the moving average).
            self.applied_updates = _local_variable("applied_updates", 0, tf.int64)

    @property
    def wrapped_optimizer(self):
        return self._optimizer

    def compute_gradients(self, loss, var_list=None, **kwargs):
        scale = tf.identity(self.loss_scale, name="loss_scale_value")
        scaled_loss = tf.cast(loss, tf.float32) * scale
        grads_and_vars = self._optimizer.compute_gradients(scaled_loss, var_list=var_list, **kwargs)
        inverse = tf.math.reciprocal(scale)
        return [(_scale_gradient(grad, inverse), var) for grad, var in grads_and_vars]

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        grads_and_vars = list(grads_and_vars)
        finite = all_finite([grad for grad, _ in grads_and_vars])
        if getattr(self._optimizer, "accepts_dropped_micro_batches", False):
            # Gradient accumulation: an overflowing micro-batch is dropped from its accumulation (it still
            # counts towards the K micro-batches, so one update still takes K runs).
            update = self._optimizer.apply_gradients(grads_and_vars, global_step, name, keep=finite)
            with tf.control_dependencies([update]):
                return self._update_scale(finite)

        def apply_update():
            with tf.control_dependencies([self._optimizer.apply_gradients(grads_and_vars, global_step, name),
                                          self.applied_updates.assign_add(1, read_value=False)]):
                return tf.constant(True)

        def skip_update():
            ops = [] if global_step is None else [tf1.assign_add(global_step, 1)]
            with tf.control_dependencies(ops):
                return tf.constant(False)

        applied = tf.cond(finite, apply_update, skip_update, name="apply_if_finite")
        with tf.control_dependencies([applied]):
            return self._update_scale(finite)

    def _update_scale(self, finite):
        finite_in_a_row = self.finite_steps_in_a_row + 1
        grow = tf.logical_and(finite, finite_in_a_row >= self.growth_interval)
        scale = tf.identity(self.loss_scale)
        new_scale = tf.where(finite, tf.where(grow, scale * self.scale_factor, scale),
                             tf.maximum(scale / self.scale_factor, self.min_loss_scale))
        skipped = tf.cast(tf.logical_not(finite), tf.int64)
        zero = tf.constant(0, tf.int64)
        return tf.group(
            tf1.assign(self.loss_scale, new_scale),
            tf1.assign(self.finite_steps_in_a_row, tf.where(tf.logical_and(finite, tf.logical_not(grow)),
                                                            finite_in_a_row, zero)),
            tf1.assign_add(self.skipped_steps, skipped),
            tf1.assign(self.skipped_steps_in_a_row, tf.where(finite, zero, self.skipped_steps_in_a_row + 1)),
            name="update_loss_scale")

    def overflow_guard(self, global_step):
        """An op failing when the steps before this one all overflowed ``max_consecutive_skips`` times in a
        row: no loss scale makes the gradients finite, training diverged (see the module docstring)."""
        return tf1.debugging.Assert(
            self.skipped_steps_in_a_row < self.max_consecutive_skips,
            [f"{OVERFLOW_GUARD_MARKER}: every step overflowed at global step", global_step,
             "steps in a row:", self.skipped_steps_in_a_row, "loss scale:", self.loss_scale],
            name="check_overflow_skips")

    # The wrapped optimizer's slots are this optimizer's (restores, inspection and Saver names unchanged).
    def get_slot(self, var, name):
        return self._optimizer.get_slot(var, name)

    def get_slot_names(self):
        return self._optimizer.get_slot_names()

    def variables(self):
        return self._optimizer.variables()

    def get_name(self):
        return self._optimizer.get_name()
