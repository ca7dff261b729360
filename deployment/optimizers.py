"""Optimizers by name (docs/design.md, "Learning rate and optimizers"), including AdamW for graph mode.

``tf.compat.v1.train`` has no AdamW. :class:`AdamWOptimizer` is Adam with decoupled weight
decay (Loshchilov & Hutter, "Decoupled Weight Decay Regularization"): each step first
shrinks the variable by ``learning_rate * weight_decay``, using the same scheduled
learning-rate tensor as the Adam step, then applies the Adam step::

    var <- var * (1 - lr * weight_decay)
    var <- var - lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + epsilon)

The decay never passes through ``m`` and ``v`` (which an L2 loss term would).
"""

import tensorflow as tf

from tf_compat import tf1

OPTIMIZER_NAMES = ("sgd", "momentum", "rmsprop", "adam", "adamw", "adagrad", "adadelta", "ftrl")


class AdamWOptimizer(tf1.train.AdamOptimizer):
    """``tf.compat.v1.train.AdamOptimizer`` with decoupled weight decay scaled by the learning rate.

    Args:
      weight_decay: decay per unit learning rate (PyTorch's ``AdamW(weight_decay=...)``).
      exclude_from_weight_decay: substrings of variable names not decayed (e.g. 'biases').
      Other arguments as ``AdamOptimizer``.
    """

    def __init__(
        self,
        learning_rate=0.001,
        weight_decay=0.01,
        beta1=0.9,
        beta2=0.999,
        epsilon=1e-8,
        exclude_from_weight_decay=None,
        use_locking=False,
        name="AdamW",
    ):
        super().__init__(learning_rate, beta1=beta1, beta2=beta2, epsilon=epsilon, use_locking=use_locking, name=name)
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self._weight_decay = weight_decay
        self._exclude_from_weight_decay = tuple(exclude_from_weight_decay or ())

    def _decays(self, var):
        return self._weight_decay > 0 and not any(part in var.op.name for part in self._exclude_from_weight_decay)

    def _decay_factor(self, var):
        return tf.cast(self._lr_t, var.dtype.base_dtype) * self._weight_decay

    def _decay_dense(self, var):
        if not self._decays(var):
            return tf.no_op()
        return var.assign_sub(self._decay_factor(var) * var, use_locking=self._use_locking, read_value=False)

    def _decay_rows(self, var, indices):
        if not self._decays(var):
            return tf.no_op()
        rows = tf.gather(var, indices)
        return var.scatter_sub(tf.IndexedSlices(self._decay_factor(var) * rows, indices), use_locking=self._use_locking)

    def _apply_dense(self, grad, var):
        with tf.control_dependencies([self._decay_dense(var)]):
            return super()._apply_dense(grad, var)

    def _resource_apply_dense(self, grad, var):
        with tf.control_dependencies([self._decay_dense(var)]):
            return super()._resource_apply_dense(grad, var)

    def _apply_sparse(self, grad, var):
        with tf.control_dependencies([self._decay_rows(var, grad.indices)]):
            return super()._apply_sparse(grad, var)

    def _resource_apply_sparse(self, grad, var, indices):
        with tf.control_dependencies([self._decay_rows(var, indices)]):
            return super()._resource_apply_sparse(grad, var, indices)


def configure_optimizer(
    name,
    learning_rate,
    momentum=0.9,
    use_nesterov=False,
    rmsprop_decay=0.9,
    rmsprop_momentum=0.9,
    rmsprop_epsilon=1.0,
    adam_beta1=0.9,
    adam_beta2=0.999,
    adam_epsilon=1e-8,
    adamw_weight_decay=0.01,
    adamw_exclude_from_weight_decay=None,
    adagrad_initial_accumulator_value=0.1,
    adadelta_rho=0.95,
    adadelta_epsilon=1e-6,
    ftrl_learning_rate_power=-0.5,
    ftrl_initial_accumulator_value=0.1,
    ftrl_l1=0.0,
    ftrl_l2=0.0,
):
    """A ``tf.compat.v1.train.Optimizer`` by name (one of :data:`OPTIMIZER_NAMES`).

    ``learning_rate`` is a float or a tensor (a schedule from
    :func:`deployment.learning_rate.configure_learning_rate`). Adam and AdamW use
    ``adam_epsilon`` (1e-8), not RMSProp's ``rmsprop_epsilon`` (1.0, TF-Slim's
    ``opt_epsilon``, which damps RMSProp's per-weight scaling).
    """
    if name == "sgd":
        return tf1.train.GradientDescentOptimizer(learning_rate)
    if name == "momentum":
        return tf1.train.MomentumOptimizer(learning_rate, momentum=momentum, use_nesterov=use_nesterov, name="Momentum")
    if name == "rmsprop":
        return tf1.train.RMSPropOptimizer(
            learning_rate, decay=rmsprop_decay, momentum=rmsprop_momentum, epsilon=rmsprop_epsilon
        )
    if name == "adam":
        return tf1.train.AdamOptimizer(learning_rate, beta1=adam_beta1, beta2=adam_beta2, epsilon=adam_epsilon)
    if name == "adamw":
        return AdamWOptimizer(
            learning_rate,
            weight_decay=adamw_weight_decay,
            beta1=adam_beta1,
            beta2=adam_beta2,
            epsilon=adam_epsilon,
            exclude_from_weight_decay=adamw_exclude_from_weight_decay,
        )
    if name == "adagrad":
        return tf1.train.AdagradOptimizer(learning_rate, initial_accumulator_value=adagrad_initial_accumulator_value)
    if name == "adadelta":
        return tf1.train.AdadeltaOptimizer(learning_rate, rho=adadelta_rho, epsilon=adadelta_epsilon)
    if name == "ftrl":
        return tf1.train.FtrlOptimizer(
            learning_rate,
            learning_rate_power=ftrl_learning_rate_power,
            initial_accumulator_value=ftrl_initial_accumulator_value,
            l1_regularization_strength=ftrl_l1,
            l2_regularization_strength=ftrl_l2,
        )
    raise ValueError(f"optimizer must be one of {OPTIMIZER_NAMES}, got {name!r}")
