"""Starting an SSD from a TF-Slim ``vgg_16`` ImageNet checkpoint.

- conv1_1 ... conv5_3 (26 variables) restore by scope mapping:
  ``vgg_16/convK/convK_N/{weights,biases}`` -> ``<ssd scope>/convK/convK_N/{weights,biases}``.
- fc6 / fc7, when the checkpoint has them, initialise conv6 / conv7 subsampled as the SSD
  authors' Caffe "reduced VGG" (ParseNet / DeepLab-LargeFOV): fc6 [7, 7, 512, 4096] ->
  conv6 [3, 3, 512, 1024] keeps every 3rd spatial tap (rows/cols 0, 3, 6) and every 4th output
  channel (0, 4, ..., 4092); the dilation of 6 (x3 for the taps, x2 for pool5 3x3/1 instead of
  2x2/2) keeps the receptive field. fc7 [1, 1, 4096, 4096] -> conv7 [1, 1, 1024, 1024] keeps
  every 4th input and output channel; biases keep every 4th entry.
"""

import numpy as np
import tensorflow as tf
from absl import logging

from tf_compat import tf1

CHECKPOINT_SCOPE = "vgg_16"
_CONV_LAYERS = [
    (block, f"{block}_{index}")
    for block, repeats in (("conv1", 2), ("conv2", 2), ("conv3", 3), ("conv4", 3), ("conv5", 3))
    for index in range(1, repeats + 1)
]


def vgg16_conv_name_map(model_scope="ssd_300_vgg", checkpoint_scope=CHECKPOINT_SCOPE):
    """{checkpoint variable name: model variable name} for the 26 conv variables."""
    return {
        f"{checkpoint_scope}/{block}/{layer}/{kind}": f"{model_scope}/{block}/{layer}/{kind}"
        for block, layer in _CONV_LAYERS
        for kind in ("weights", "biases")
    }


def subsample_fc6(weights, biases):
    """fc6 [7, 7, C, 4096] / [4096] -> conv6 [3, 3, C, 1024] / [1024] (use with dilation 6)."""
    weights, biases = np.asarray(weights), np.asarray(biases)
    if weights.shape[:2] != (7, 7) or weights.shape[3] != 4096 or biases.shape != (4096,):
        raise ValueError(f"fc6 must be [7, 7, C, 4096] with [4096] biases, got {weights.shape} and {biases.shape}")
    return weights[::3, ::3, :, ::4].copy(), biases[::4].copy()


def subsample_fc7(weights, biases):
    """fc7 [1, 1, 4096, 4096] / [4096] -> conv7 [1, 1, 1024, 1024] / [1024]."""
    weights, biases = np.asarray(weights), np.asarray(biases)
    if weights.shape != (1, 1, 4096, 4096) or biases.shape != (4096,):
        raise ValueError(f"fc7 must be [1, 1, 4096, 4096] with [4096] biases, got {weights.shape} and {biases.shape}")
    return weights[:, :, ::4, ::4].copy(), biases[::4].copy()


_FC_SUBSAMPLERS = (("fc6", "conv6", subsample_fc6), ("fc7", "conv7", subsample_fc7))


def fc_initial_values(reader, checkpoint_scope=CHECKPOINT_SCOPE):
    """{"conv6/weights": array, "conv6/biases": ..., "conv7/...": ...} subsampled from the fc layers a
    checkpoint reader holds (only the layers present)."""
    available = reader.get_variable_to_shape_map()
    values = {}
    for fc, conv, subsample in _FC_SUBSAMPLERS:
        names = [f"{checkpoint_scope}/{fc}/weights", f"{checkpoint_scope}/{fc}/biases"]
        if all(name in available for name in names):
            weights, biases = subsample(reader.get_tensor(names[0]), reader.get_tensor(names[1]))
            values[f"{conv}/weights"], values[f"{conv}/biases"] = weights, biases
    return values


def vgg16_init_fn(checkpoint_path, model_scope="ssd_300_vgg", checkpoint_scope=CHECKPOINT_SCOPE, include_fc=True):
    """``init_fn(session)`` restoring the VGG-16 base of the graph's SSD from ``checkpoint_path``.

    Build the network first. conv1..conv5 must all be present in the checkpoint; conv6/conv7 come
    from fc6/fc7 when ``include_fc`` and the checkpoint has them, and keep their initialiser
    otherwise (logged).
    """
    reader = tf.train.load_checkpoint(checkpoint_path)
    available = reader.get_variable_to_shape_map()
    model_vars = {v.op.name: v for v in tf1.global_variables()}
    var_list = {}
    for ckpt_name, model_name in vgg16_conv_name_map(model_scope, checkpoint_scope).items():
        if ckpt_name not in available:
            raise ValueError(f"{checkpoint_path}: variable {ckpt_name} missing; is this a TF-Slim vgg_16 checkpoint?")
        if model_name not in model_vars:
            raise ValueError(f"graph has no variable {model_name}; build the network with scope {model_scope!r} first")
        var_list[ckpt_name] = model_vars[model_name]
    saver = tf1.train.Saver(var_list=var_list)

    fc_values = fc_initial_values(reader, checkpoint_scope) if include_fc else {}
    if include_fc and len(fc_values) < 4:
        logging.info("%s: no fc6/fc7 to initialise conv6/conv7 from; they keep their initialiser", checkpoint_path)
    fc_assignments = []
    for name, value in fc_values.items():
        variable = model_vars[f"{model_scope}/{name}"]
        placeholder = tf1.placeholder(variable.dtype.base_dtype, value.shape)
        fc_assignments.append((variable.assign(placeholder), placeholder, value))

    def init_fn(session):
        logging.info("Restoring the VGG-16 base of %s from %s (conv6/conv7 from fc6/fc7: %s)", model_scope,
                     checkpoint_path, "yes" if fc_assignments else "no")
        saver.restore(session, checkpoint_path)
        for assign_op, placeholder, value in fc_assignments:
            session.run(assign_op, {placeholder: value})

    return init_fn
