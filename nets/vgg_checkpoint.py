"""Starting an SSD from a TF-Slim ``vgg_16`` ImageNet checkpoint: the paper's reduced fc6/fc7.

conv1_1 ... conv5_3 restore by name (``--checkpoint_model_scope=vgg_16`` maps
``ssd_300_vgg/convK/convK_N/*`` to ``vgg_16/convK/convK_N/*``; see
:mod:`deployment.checkpoint_init`). SSD's conv6 and conv7 have no namesake in VGG-16: the paper
starts them from fc6 and fc7, subsampled as the SSD authors' Caffe "reduced VGG"
(``VGG_ILSVRC_16_layers_fc_reduced``, from DeepLab-LargeFOV):

- fc6 [7, 7, 512, 4096] -> conv6 [3, 3, 512, 1024]: every 3rd spatial tap (rows/cols 0, 3, 6) and
  every 4th output channel (0, 4, ..., 4092). The dilation of 6 keeps the receptive field (x3 for
  the taps, x2 because pool5 is 3x3/1 instead of 2x2/2).
- fc7 [1, 1, 4096, 4096] -> conv7 [1, 1, 1024, 1024]: every 4th input and output channel.
- Biases keep every 4th entry.

:func:`derive_reduced_fc` is the one implementation: the trainer's start-up calls it (through
``checkpoint_init``'s ``derive_missing`` hook) for a TF-Slim ``vgg_16.ckpt`` and for a Keras
VGG-16 file converted with the top layers (``checkpoints/keras_vgg16.py`` writes fc6/fc7 as TF-Slim
does). Without fc layers conv6/conv7 start from their initialisers.
"""

import numpy as np

CHECKPOINT_SCOPE = "vgg_16"


def _check(name, array, shape):
    if array.ndim != len(shape) or any(want is not None and have != want for have, want in zip(array.shape, shape)):
        wanted = ", ".join("C" if want is None else str(want) for want in shape)
        raise ValueError(f"{name} must be [{wanted}], got {list(array.shape)}")
    return array


def reduce_fc6_weights(weights):
    """fc6 [7, 7, C, 4096] -> conv6 [3, 3, C, 1024] (used with dilation 6)."""
    return np.ascontiguousarray(_check("fc6 weights", np.asarray(weights), (7, 7, None, 4096))[::3, ::3, :, ::4])


def reduce_fc7_weights(weights):
    """fc7 [1, 1, 4096, 4096] -> conv7 [1, 1, 1024, 1024]."""
    return np.ascontiguousarray(_check("fc7 weights", np.asarray(weights), (1, 1, 4096, 4096))[:, :, ::4, ::4])


def reduce_fc_biases(biases):
    """fc6/fc7 biases [4096] -> conv6/conv7 biases [1024]."""
    return np.ascontiguousarray(_check("fc biases", np.asarray(biases), (4096,))[::4])


# SSD layer -> (the VGG-16 layer it is reduced from, {variable: reduction}).
_REDUCED_FROM = {
    "conv6": ("fc6", {"weights": reduce_fc6_weights, "biases": reduce_fc_biases}),
    "conv7": ("fc7", {"weights": reduce_fc7_weights, "biases": reduce_fc_biases}),
}


def derive_reduced_fc(ckpt_name, reader):
    """``checkpoint_init``'s ``derive_missing`` hook: the value of a variable the checkpoint lacks,
    made from what it has, or None.

    ``ckpt_name`` is the variable's name as mapped into the checkpoint (``vgg_16/conv6/weights``
    with ``--checkpoint_model_scope=vgg_16``). For ``<scope>/conv6/{weights,biases}`` and
    ``<scope>/conv7/...`` of a checkpoint holding ``<scope>/fc6/...`` (``fc7``) this returns
    ``(value, source)``: the reduced array and where it came from.
    """
    parts = ckpt_name.split("/")
    if len(parts) < 2 or parts[-2] not in _REDUCED_FROM or parts[-1] not in ("weights", "biases"):
        return None
    fc_layer, reductions = _REDUCED_FROM[parts[-2]]
    source = "/".join(parts[:-2] + [fc_layer, parts[-1]])
    if source not in reader.get_variable_to_shape_map():
        return None
    value = reductions[parts[-1]](reader.get_tensor(source))
    return value, f"{source} reduced to {list(value.shape)}"


def is_imagenet_vgg16(variable_names, checkpoint_scope=CHECKPOINT_SCOPE):
    """Whether a checkpoint holding ``variable_names`` is an ImageNet VGG-16 (a classification
    backbone: ``<checkpoint_scope>/conv1/conv1_1/weights``, no SSD box head), the start from which
    the paper freezes conv1 and conv2."""
    names = set(variable_names)
    return f"{checkpoint_scope}/conv1/conv1_1/weights" in names and not any("_box/" in name for name in names)
