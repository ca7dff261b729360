"""Makes tf_slim 1.1.0 work on TensorFlow 2.21; import it instead of ``tf_slim``.

tf_slim 1.1.0 was written against TensorFlow 2.x internals that have since moved.
Each fix below is the smallest change that restores the documented tf_slim
behaviour; they are applied once, at the first import of this module.

- Names tf_slim reaches through TensorFlow's internal modules that those modules no
  longer export (:data:`_MOVED_NAMES`): ``ops.Tensor`` and ``ops.IndexedSlices``
  (``isinstance`` checks in ``smart_cond`` and in gradient multipliers / clipping of
  ``slim.learning``), ``control_flow_ops.cond``/``case``/``Assert``/``while_loop``
  (``smart_cond``, hence ``batch_norm`` and ``dropout`` with a tensor ``is_training``;
  metrics; the example decoder), ``array_ops.stack``/``unstack`` (layers, metrics) and
  ``variable_scope.variable`` (``slim.local_variable``/``global_variable``). Each is
  put back as its public ``tf`` equivalent, only where it is missing.
- ``slim.batch_norm`` with the default ``updates_collections`` delegates to the
  Keras 2 ``BatchNormalization`` layer, which needs the separate ``tf_keras``
  package. Passing the same collection as a list selects tf_slim's own
  implementation, which adds the same update ops to the same collection.

Usage::

    from tf_compat import slim, tf1
"""

import tensorflow as tf
import tf_slim as slim
from tensorflow.python.framework import ops as _framework_ops
from tensorflow.python.ops import array_ops as _array_ops
from tensorflow.python.ops import control_flow_ops as _control_flow_ops
from tensorflow.python.ops import variable_scope as _variable_scope
from tf_slim.layers import layers as _slim_layers
from tf_slim.ops import arg_scope as _arg_scope

tf1 = tf.compat.v1

__all__ = ["slim", "tf1", "tf"]


_MOVED_NAMES = (
    (_framework_ops, "Tensor", tf.Tensor),
    (_framework_ops, "IndexedSlices", tf.IndexedSlices),
    (_control_flow_ops, "cond", tf1.cond),
    (_control_flow_ops, "case", tf1.case),
    (_control_flow_ops, "Assert", tf1.Assert),
    (_control_flow_ops, "while_loop", tf1.while_loop),
    (_array_ops, "stack", tf.stack),
    (_array_ops, "unstack", tf.unstack),
    (_variable_scope, "variable", tf1.Variable),
)


def _restore_moved_names():
    for module, name, public in _MOVED_NAMES:
        if not hasattr(module, name):
            setattr(module, name, public)


def _route_batch_norm_around_keras():
    original = _slim_layers.batch_norm
    if getattr(original, "_ssd_towers_patched", False):
        return
    key = _arg_scope.arg_scope_func_key(original)

    def batch_norm(*args, **kwargs):
        scoped = _arg_scope.current_arg_scope().get(key, {})
        collections = kwargs.get("updates_collections", scoped.get("updates_collections", tf1.GraphKeys.UPDATE_OPS))
        if collections is tf1.GraphKeys.UPDATE_OPS:
            kwargs["updates_collections"] = [tf1.GraphKeys.UPDATE_OPS]
        return original(*args, **kwargs)

    batch_norm._key_op = key
    batch_norm._ssd_towers_patched = True
    batch_norm.__doc__ = original.__doc__
    for module in (_slim_layers, slim.layers, slim):
        module.batch_norm = batch_norm


_restore_moved_names()
_route_batch_norm_around_keras()
