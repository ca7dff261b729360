"""Gradient accumulation (``--accumulate_steps=K``): K micro-batches train as one batch K times bigger.

:class:`GradientAccumulationOptimizer` wraps a ``tf.compat.v1.train.Optimizer``. Each run of its
``apply_gradients`` op adds the micro-batch's gradients, times the micro-batch's weight ``w``, into
float32 accumulators on the optimizer device; the K-th run applies ``sum(w * g) / sum(w)`` through
the wrapped optimizer (which increments the global step) and resets the accumulators. The other runs
change neither the trained variables nor the global step, so learning-rate schedules, the moving
average and summaries count applied updates::

    run 1 .. K-1:  acc += w * g;  W += w
    run K:         acc += w * g;  W += w;  optimizer.apply(clip(acc / W));  acc, W = 0

The weights make the result the big batch's gradient. With ``--loss_normalization=step`` a
micro-batch's multibox loss is its raw sum over its ``P`` positives (all clones), and its gradient
``g = d(raw)/P + d(reg)``; with ``w = P``, ``sum(w * g) / sum(w) = d(sum of raw) / sum(P) + d(reg)``:
the multibox loss of all K micro-batches over all their positives, plus the regularisation once
(the weights do not change within an accumulation, so every micro-batch has the same regularisation
gradient). A micro-batch without positives has a raw loss of 0 (no positives, no hard negatives) and
weight 0; when no micro-batch has any, each gradient is the regularisation's alone and the last one
is applied. With ``--loss_normalization=clone`` every micro-batch weighs the same (``w = 1``).

Gradient clipping (``clip_gradient_norm``) applies to the accumulated gradient, the big batch's, at
the K-th run. The accumulators and counters are local variables: not in checkpoints, initialised by
each process. A run resumed from a checkpoint starts a fresh accumulation (a checkpoint is only ever
written between runs of the train op, with the weights of the last applied update; the micro-batches
accumulated since then are not trained on).

The wrapper is an optimizer like any other: ``compute_gradients`` is the wrapped optimizer's, the
slots are its slots, and another wrapper (loss scaling) may wrap it and call its ``apply_gradients``
only for some runs; its slot and state variables are created in ``tf.init_scope`` so that this works
inside a ``tf.cond``. :attr:`GradientAccumulationOptimizer.applied_updates` counts the updates it
applied (one per K micro-batches): :func:`update_applied` turns it into "this run applied an update",
for what must only follow applied updates (the moving average, in
:func:`deployment.train_op.build_train_op`).
"""

import tensorflow as tf

from tf_compat import tf1


def _local_variable(initial_value, name):
    """A variable of this process only: in LOCAL_VARIABLES (initialised by each worker's local init op,
    not saved by the default Saver), never trained."""
    return tf1.Variable(initial_value, trainable=False, name=name, use_resource=True,
                        collections=[tf1.GraphKeys.LOCAL_VARIABLES])


class GradientAccumulationOptimizer(tf1.train.Optimizer):
    """Applies ``optimizer`` to the weighted mean of the gradients of every ``accumulate_steps`` runs.

    Args:
      optimizer: the wrapped ``tf.compat.v1.train.Optimizer``.
      accumulate_steps: micro-batches per applied update (1: every run applies, as ``optimizer``).
      micro_batch_weight: a scalar tensor of the micro-batch a run trains on (see the module
        docstring; evaluated in the same run as the gradients); None: equal weights.
      clip_gradient_norm: clip the accumulated gradient to this global norm before applying (<= 0: no).
      name: the name scope of the accumulation ops and variables.

    Build it on the optimizer device: its counters are created there, and so are the accumulators
    (in ``apply_gradients``, which runs there too).
    """

    def __init__(self, optimizer, accumulate_steps, micro_batch_weight=None, clip_gradient_norm=0.0,
                 name="GradientAccumulation"):
        if int(accumulate_steps) != accumulate_steps or accumulate_steps < 1:
            raise ValueError(f"accumulate_steps must be a positive integer, got {accumulate_steps}")
        super().__init__(use_locking=False, name=name)
        self._optimizer = optimizer
        self._accumulate_steps = int(accumulate_steps)
        self._micro_batch_weight = micro_batch_weight
        self._clip_gradient_norm = clip_gradient_norm
        self._accumulators = {}  # variable reference -> its float32 accumulator
        with tf.init_scope(), tf1.name_scope(None), tf1.variable_scope(name):
            self._micro_steps = _local_variable(tf.constant(0, tf.int64), "micro_steps")
            self._weight_sum = _local_variable(tf.constant(0.0, tf.float32), "weight_sum")
            self._applied_updates = _local_variable(tf.constant(0, tf.int64), "applied_updates")
            self._kept_micro_batches = _local_variable(tf.constant(0, tf.int64), "kept_micro_batches")

    @property
    def optimizer(self):
        """The wrapped optimizer."""
        return self._optimizer

    @property
    def accumulate_steps(self):
        return self._accumulate_steps

    @property
    def applied_updates(self):
        """An int64 local variable: the updates applied so far in this process (see :func:`update_applied`)."""
        return self._applied_updates

    @property
    def micro_steps(self):
        """An int64 local variable: the micro-batches accumulated since the last applied update."""
        return self._micro_steps

    def accumulator(self, var):
        """The accumulator of ``var`` (the weighted sum of its gradients so far), or None before its first."""
        return self._accumulators.get(var.ref())

    def compute_gradients(self, *args, **kwargs):
        return self._optimizer.compute_gradients(*args, **kwargs)

    def get_slot(self, var, name):
        return self._optimizer.get_slot(var, name)

    def get_slot_names(self):
        return self._optimizer.get_slot_names()

    def variables(self):
        """The wrapped optimizer's variables, then the accumulation's (accumulators and counters)."""
        own = [self._micro_steps, self._weight_sum, self._applied_updates, self._kept_micro_batches]
        own += list(self._accumulators.values())
        return self._optimizer.variables() + own

    def _create_accumulators(self, variables):
        # In init_scope, like the slots of tf.compat.v1 optimizers: outside any control-flow branch a
        # wrapping optimizer builds this one in, and with the device of the enclosing scope (the optimizer's).
        with tf.init_scope(), tf1.name_scope(None):
            for var in variables:
                if var.ref() not in self._accumulators:
                    self._accumulators[var.ref()] = _local_variable(
                        tf.zeros(var.shape, tf.float32), f"{self._name}/{var.op.name}/accumulated_gradient")

    # A loss-scaling wrapper (deployment.mixed_precision) passes ``keep`` rather than skipping the call.
    accepts_dropped_micro_batches = True

    def apply_gradients(self, grads_and_vars, global_step=None, name=None, keep=None):
        """Accumulates these gradients; every ``accumulate_steps``-th run, applies the weighted mean (and
        increments ``global_step``). Returns the op to run with every micro-batch.

        ``keep``: a boolean tensor; when False, this run's micro-batch is dropped (its gradients, which
        may not be finite, are not added, its weight counts 0) but it still counts towards the
        ``accumulate_steps``. When every micro-batch of an accumulation was dropped, its K-th run only
        advances ``global_step`` (no variable, slot or moving average changes)."""
        grads_and_vars = [(grad, var) for grad, var in grads_and_vars if grad is not None]
        if not grads_and_vars:
            raise ValueError("no gradient to accumulate")
        variables = [var for _, var in grads_and_vars]
        self._create_accumulators(variables)
        with tf1.name_scope(name, self._name):
            weight = (tf.constant(1.0) if self._micro_batch_weight is None
                      else tf.cast(self._micro_batch_weight, tf.float32, name="micro_batch_weight"))
            if keep is not None:
                weight = tf.where(keep, weight, 0.0)
                grads_and_vars = [(_zero_unless(keep, grad), var) for grad, var in grads_and_vars]
            additions = [self._add(grad, var, weight) for grad, var in grads_and_vars]
            with tf.control_dependencies(additions):
                weight_sum = self._weight_sum.assign_add(weight)
                micro_steps = self._micro_steps.assign_add(1)
                kept = self._kept_micro_batches.assign_add(tf.constant(1, tf.int64) if keep is None
                                                           else tf.cast(keep, tf.int64))
            complete = tf.greater_equal(micro_steps, self._accumulate_steps, name="accumulation_complete")

            def reset(update):
                with tf.control_dependencies([update]):
                    resets = [self._accumulators[var.ref()].assign(tf.zeros(var.shape, tf.float32), read_value=False)
                              for var in variables]
                    resets += [self._weight_sum.assign(0.0, read_value=False),
                               self._micro_steps.assign(0, read_value=False),
                               self._kept_micro_batches.assign(0, read_value=False)]
                with tf.control_dependencies(resets):
                    return tf.constant(True)

            def apply_and_reset():
                gradients = self._accumulated_gradients(grads_and_vars, weight_sum)
                apply_op = self._optimizer.apply_gradients(list(zip(gradients, variables)), global_step=global_step)
                with tf.control_dependencies([apply_op]):
                    return reset(self._applied_updates.assign_add(1, read_value=False))

            def count_step_and_reset():
                return reset(tf.no_op() if global_step is None else tf1.assign_add(global_step, 1))

            def finish():
                return tf1.cond(kept > 0, apply_and_reset, count_step_and_reset, name="apply_if_any_kept")

            with tf.control_dependencies([weight_sum, micro_steps, kept]):
                applied = tf1.cond(complete, finish, lambda: tf.constant(False), name="apply_if_complete")
            return tf.group(applied, name="accumulate_or_apply")

    def _add(self, grad, var, weight):
        accumulator = self._accumulators[var.ref()]
        if isinstance(grad, tf.IndexedSlices):
            return accumulator.scatter_add(tf.IndexedSlices(weight * tf.cast(grad.values, tf.float32), grad.indices,
                                                            grad.dense_shape))
        return accumulator.assign_add(weight * tf.cast(grad, tf.float32), read_value=False)

    def _accumulated_gradients(self, grads_and_vars, weight_sum):
        """sum(w * g) / sum(w) per variable, clipped; the last micro-batch's gradient when every weight was 0."""
        weighted = weight_sum > 0.0
        divisor = tf.where(weighted, weight_sum, 1.0)
        gradients = []
        for grad, var in grads_and_vars:
            mean = self._accumulators[var.ref()].read_value() / divisor
            gradients.append(tf.where(weighted, mean, tf.cast(tf.convert_to_tensor(grad), tf.float32)))
        if self._clip_gradient_norm and self._clip_gradient_norm > 0:
            gradients, _ = tf.clip_by_global_norm(gradients, self._clip_gradient_norm,
                                                  name="clip_accumulated_gradients")
        return [tf.cast(gradient, var.dtype.base_dtype) for gradient, (_, var) in zip(gradients, grads_and_vars)]


def _zero_unless(keep, grad):
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(tf.where(keep, grad.values, tf.zeros_like(grad.values)), grad.indices,
                                grad.dense_shape)
    return tf.where(keep, grad, tf.zeros_like(grad))


def read_before_update(applied_updates):
    """``applied_updates`` read now: make the update's inputs wait for it (see :func:`update_applied`)."""
    return tf.identity(applied_updates.read_value(), name="applied_updates_before")


def update_applied(applied_updates, count_before, update_op):
    """A boolean tensor: did the run of ``update_op`` apply an update (``applied_updates`` went past
    ``count_before``, read before the update by :func:`read_before_update`)?"""
    with tf.control_dependencies([update_op]):
        return tf.greater(applied_updates.read_value(), count_before, name="update_applied")
