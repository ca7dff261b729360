"""TensorBoard summaries of a training run (docs/design.md, "Summaries").

Tags written (besides ``global_step/sec``, which the Supervisor of ``slim.learning.train``
writes itself, and the per-clone ``Losses/clone_i/clone_loss`` and
``Losses/regularization_loss`` that :func:`deployment.model_deploy.optimize_clones` adds):

- ``Losses/total_loss`` and one ``Losses/<term>`` per loss of the first clone
  (:func:`add_loss_summaries`);
- ``learning_rate`` (:func:`add_learning_rate_summary`);
- ``activations/<end point>`` histograms and ``sparsity/<end point>`` zero fractions
  (:func:`add_activation_summaries`);
- ``variables/<variable>`` histograms (:func:`add_variable_summaries`);
- with float16 loss scaling, ``mixed_precision/loss_scale`` and ``mixed_precision/skipped_steps``
  (:func:`add_loss_scale_summaries`).

The training images with their boxes and class names come from
:func:`preprocessing.visualization.ground_truth_image_summary`.

Every function adds to the graph's ``SUMMARIES`` collection and returns the ops it made,
so ``tf.compat.v1.summary.merge_all()`` or ``slim.learning.train``'s default summary op
picks them up.
"""

import re

import tensorflow as tf

from tf_compat import tf1


def _clean(name):
    return re.sub(r":\d+$", "", name)


def add_loss_summaries(total_loss, clones=None):
    """``Losses/total_loss`` and each loss term of the first clone (its scope stripped)."""
    ops = [tf1.summary.scalar("Losses/total_loss", total_loss)]
    scope = clones[0].scope if clones else None
    for loss in tf1.get_collection(tf1.GraphKeys.LOSSES, scope):
        name = _clean(loss.op.name)
        if scope and name.startswith(scope):
            name = name[len(scope) :]
        ops.append(tf1.summary.scalar(f"Losses/{name}", loss))
    return ops


def add_learning_rate_summary(learning_rate):
    return [tf1.summary.scalar("learning_rate", learning_rate)]


def add_loss_scale_summaries(loss_scale_optimizer):
    """The loss scale and the steps skipped in this run for an overflow, of a
    :class:`deployment.mixed_precision.DynamicLossScaleOptimizer`."""
    return [tf1.summary.scalar("mixed_precision/loss_scale", loss_scale_optimizer.loss_scale),
            tf1.summary.scalar("mixed_precision/skipped_steps", loss_scale_optimizer.skipped_steps)]


def add_activation_summaries(end_points):
    """A histogram and the zero fraction (sparsity) of each activation in ``end_points`` ({name: tensor}),
    computed in float32 (histograms take no bfloat16)."""
    ops = []
    for name, activation in end_points.items():
        activation = tf.cast(activation, tf.float32) if activation.dtype != tf.float32 else activation
        ops.append(tf1.summary.histogram(f"activations/{name}", activation))
        ops.append(tf1.summary.scalar(f"sparsity/{name}", tf.nn.zero_fraction(activation)))
    return ops


def add_variable_summaries(variables):
    return [tf1.summary.histogram(f"variables/{var.op.name}", var) for var in variables]

