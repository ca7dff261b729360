"""Keras VGG-16 ImageNet weights (HDF5) -> a TF-Slim ``vgg_16`` checkpoint SSD can start from.

Keras' files (``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`` and the full
``vgg16_weights_tf_dim_ordering_tf_kernels.h5``) hold per-layer groups ``block1_conv1`` ...
``block5_conv3`` and, in the full file, the dense ``fc1``, ``fc2`` and ``predictions``. Three
layouts are read, all by the layer names they record rather than by dataset paths:

- legacy weights files (Keras 1/2 ``save_weights``, and the files Keras downloads): root
  attribute ``layer_names``, per-layer attribute ``weight_names`` (``block1_conv1_W_1:0`` in
  Keras 1 files, ``block1_conv1/kernel:0`` in Keras 2, ``block1_conv1/kernel`` in Keras 3);
- legacy whole-model files (``model.save('x.h5')``): the same under a ``model_weights`` group;
- Keras 3 ``.weights.h5`` files: ``layers/<class-based name>/vars/{0,1}`` with the layer
  name in the ``vars`` group's ``name`` attribute.

What the checkpoint holds, in TF-Slim's names and HWIO layout:

- ``vgg_16/convB/convB_N/{weights,biases}`` for the 13 conv layers. Keras' VGG-16 was
  trained on BGR input while this project feeds RGB (both minus the ImageNet means, neither
  divided by a std), so conv1_1's input-channel axis is reversed.
- With the dense layers present: ``vgg_16/fc6`` [7, 7, 512, 4096] (Keras flattens pool5 in
  H, W, C order, so fc1's [25088, 4096] kernel is exactly a 7x7 VALID convolution),
  ``vgg_16/fc7`` [1, 1, 4096, 4096] and ``vgg_16/fc8`` [1, 1, 4096, classes], exactly as TF-Slim's
  ``vgg_16.ckpt`` holds them. The trainer's start-up makes SSD's conv6/conv7 from fc6/fc7 (the
  paper's reduced layers, :mod:`nets.vgg_checkpoint`), for this file and TF-Slim's alike.
"""

import dataclasses
import os

import h5py
import numpy as np
import tensorflow as tf

from nets.ssd_vgg_common import VGG16_BLOCKS
from nets.vgg_checkpoint import CHECKPOINT_SCOPE
from tf_compat import tf1

# ImageNet means the project subtracts from RGB input (TF-Slim / SSD-Tensorflow values).
RGB_MEANS = (123.68, 116.78, 103.94)


def _conv_layers():
    layers = {}
    channels_in = 3
    for block, (scope, num_convs, channels_out) in enumerate(VGG16_BLOCKS, start=1):
        for index in range(1, num_convs + 1):
            layers[f"block{block}_conv{index}"] = (f"{scope}/{scope}_{index}", channels_in, channels_out)
            channels_in = channels_out
    return layers


# Keras layer name -> (TF-Slim scope under vgg_16, input channels, output channels), from VGG16_BLOCKS.
CONV_LAYERS = _conv_layers()
FC6_SHAPE = (7, 7, VGG16_BLOCKS[-1][2], 4096)  # a 7x7 VALID convolution over pool5
FC7_SHAPE = (1, 1, 4096, 4096)


class KerasWeightsError(ValueError):
    """The file is not a Keras VGG-16 weights file this converter can read."""


@dataclasses.dataclass(frozen=True)
class CheckpointSummary:
    """What a checkpoint holds, as read back from disk."""

    path: str
    shapes: dict  # variable name -> shape tuple, sorted by name

    @property
    def num_variables(self):
        return len(self.shapes)

    @property
    def num_parameters(self):
        return int(sum(np.prod(shape, dtype=np.int64) for shape in self.shapes.values()))

    def describe(self, max_names=6):
        """A few lines for a person: where, how many variables and parameters, some names and shapes."""
        lines = [f"{self.path}: {self.num_variables} variables, {self.num_parameters:,} parameters"]
        names = list(self.shapes)
        if len(names) > max_names:
            names = names[: max_names - 1] + [None] + names[-1:]
        for name in names:
            if name is None:
                lines.append(f"  ... {self.num_variables - max_names} more")
            else:
                lines.append(f"  {name} {list(self.shapes[name])}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- reading


def _decode(value):
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _string_list_attribute(group, name):
    """Keras' list attributes, including the ``name0``, ``name1`` ... chunks of long lists."""
    if name in group.attrs:
        return [_decode(value) for value in np.atleast_1d(group.attrs[name])]
    values = []
    chunk = 0
    while f"{name}{chunk}" in group.attrs:
        values.extend(_decode(value) for value in np.atleast_1d(group.attrs[f"{name}{chunk}"]))
        chunk += 1
    return values


def _has_list_attribute(group, name):
    return name in group.attrs or f"{name}0" in group.attrs


def _legacy_layers(path, root):
    layers = {}
    for layer_name in _string_list_attribute(root, "layer_names"):
        if layer_name not in root:
            raise KerasWeightsError(f"{path}: layer '{layer_name}' is listed in layer_names but has no group")
        layer_group = root[layer_name]
        arrays = []
        for weight_name in _string_list_attribute(layer_group, "weight_names"):
            if weight_name not in layer_group:
                raise KerasWeightsError(f"{path}: layer '{layer_name}' has no dataset '{weight_name}'")
            arrays.append(np.asarray(layer_group[weight_name]))
        if arrays:
            layers[layer_name] = arrays
    return layers


def _keras3_layers(path, root):
    layers = {}
    for group in root["layers"].values():
        variables = group.get("vars") if isinstance(group, h5py.Group) else None
        if variables is None or len(variables) == 0:
            continue
        if "name" not in variables.attrs:
            raise KerasWeightsError(f"{path}: group '{variables.name}' does not record its layer name")
        indices = sorted(variables, key=int)
        layers[_decode(variables.attrs["name"])] = [np.asarray(variables[index]) for index in indices]
    return layers


def read_keras_layers(path):
    """Returns {Keras layer name: [arrays in Keras' order]} for the layers that have weights."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise KerasWeightsError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise KerasWeightsError(f"{path}: not an HDF5 file (expected Keras weights such as "
                                f"vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5)")
    with h5py.File(path, "r") as handle:
        if _has_list_attribute(handle, "layer_names"):
            return _legacy_layers(path, handle)
        if "model_weights" in handle and _has_list_attribute(handle["model_weights"], "layer_names"):
            return _legacy_layers(path, handle["model_weights"])
        if isinstance(handle.get("layers"), h5py.Group):
            return _keras3_layers(path, handle)
    raise KerasWeightsError(f"{path}: HDF5 file without Keras weights (no 'layer_names' attribute, "
                            f"'model_weights' group or Keras 3 'layers' group)")


def _kernel_and_bias(path, layer_name, arrays):
    # Weight names differ between Keras versions (W/b, kernel/bias), ranks do not.
    kernels = [array for array in arrays if array.ndim >= 2]
    biases = [array for array in arrays if array.ndim == 1]
    if len(arrays) != 2 or len(kernels) != 1 or len(biases) != 1:
        shapes = [list(array.shape) for array in arrays]
        raise KerasWeightsError(f"{path}: layer '{layer_name}' should hold a kernel and a bias, found shapes {shapes}")
    return kernels[0].astype(np.float32), biases[0].astype(np.float32)


def _check_shape(path, layer_name, what, array, expected):
    if tuple(array.shape) != tuple(expected):
        hint = ""
        if what == "kernel" and array.ndim == 4 and tuple(array.shape) == tuple(np.asarray(expected)[[3, 2, 0, 1]]):
            hint = " (this looks like a channels-first 'th' file; use the 'tf_dim_ordering_tf_kernels' one)"
        raise KerasWeightsError(f"{path}: layer '{layer_name}' {what} has shape {list(array.shape)}, "
                                f"expected {list(expected)}{hint}")


# --------------------------------------------------------------------------- converting


def keras_vgg16_to_slim(layers, source="<keras weights>"):
    """Maps Keras VGG-16 layers ({name: [kernel, bias]}) to {TF-Slim variable name: array}."""
    tensors = {}
    missing = [name for name in CONV_LAYERS if name not in layers]
    if missing:
        raise KerasWeightsError(f"{source}: missing VGG-16 layer(s) {', '.join(missing)} "
                                f"(found: {', '.join(layers) or 'no layers with weights'})")
    for layer_name, (slim_scope, channels_in, channels_out) in CONV_LAYERS.items():
        kernel, bias = _kernel_and_bias(source, layer_name, layers[layer_name])
        _check_shape(source, layer_name, "kernel", kernel, (3, 3, channels_in, channels_out))
        _check_shape(source, layer_name, "bias", bias, (channels_out,))
        if layer_name == "block1_conv1":
            kernel = kernel[:, :, ::-1, :]  # BGR-trained input channels -> RGB
        tensors[f"{CHECKPOINT_SCOPE}/{slim_scope}/weights"] = np.ascontiguousarray(kernel)
        tensors[f"{CHECKPOINT_SCOPE}/{slim_scope}/biases"] = bias

    top = [name for name in ("fc1", "fc2", "predictions") if name in layers]
    if not top:
        return tensors
    if "fc1" not in layers or "fc2" not in layers:
        raise KerasWeightsError(f"{source}: has {', '.join(top)} but not both fc1 and fc2; a file with the "
                                f"dense layers needs both (or neither, like the _notop file)")
    fc1_kernel, fc1_bias = _kernel_and_bias(source, "fc1", layers["fc1"])
    fc2_kernel, fc2_bias = _kernel_and_bias(source, "fc2", layers["fc2"])
    _check_shape(source, "fc1", "kernel", fc1_kernel, (int(np.prod(FC6_SHAPE[:3])), FC6_SHAPE[3]))
    _check_shape(source, "fc1", "bias", fc1_bias, FC6_SHAPE[3:])
    _check_shape(source, "fc2", "kernel", fc2_kernel, FC7_SHAPE[2:])
    _check_shape(source, "fc2", "bias", fc2_bias, FC7_SHAPE[3:])
    fc6_weights = fc1_kernel.reshape(FC6_SHAPE)
    fc7_weights = fc2_kernel.reshape(FC7_SHAPE)
    tensors[f"{CHECKPOINT_SCOPE}/fc6/weights"] = fc6_weights
    tensors[f"{CHECKPOINT_SCOPE}/fc6/biases"] = fc1_bias
    tensors[f"{CHECKPOINT_SCOPE}/fc7/weights"] = fc7_weights
    tensors[f"{CHECKPOINT_SCOPE}/fc7/biases"] = fc2_bias
    if "predictions" in layers:
        fc8_kernel, fc8_bias = _kernel_and_bias(source, "predictions", layers["predictions"])
        if fc8_kernel.ndim != 2 or fc8_kernel.shape[0] != FC7_SHAPE[3] or fc8_bias.shape != fc8_kernel.shape[1:]:
            raise KerasWeightsError(f"{source}: layer 'predictions' has kernel {list(fc8_kernel.shape)} and bias "
                                    f"{list(fc8_bias.shape)}, expected [{FC7_SHAPE[3]}, classes] and [classes]")
        tensors[f"{CHECKPOINT_SCOPE}/fc8/weights"] = fc8_kernel.reshape((1, 1) + fc8_kernel.shape)
        tensors[f"{CHECKPOINT_SCOPE}/fc8/biases"] = fc8_bias
    return tensors


# --------------------------------------------------------------------------- writing


def write_checkpoint(tensors, output_prefix):
    """Saves {name: array} as a V2 checkpoint at output_prefix with exactly those names.

    The directory's ``checkpoint`` state file is updated to point at it, so the directory
    itself can be passed as ``--checkpoint_path``.
    """
    output_prefix = os.path.abspath(os.fspath(output_prefix))
    os.makedirs(os.path.dirname(output_prefix), exist_ok=True)
    with tf.Graph().as_default():
        feeds = {}
        variables = {}
        for name, array in tensors.items():
            # Values enter through placeholders: as constants the 400 MB fc6 would bloat the graph.
            value = tf1.placeholder(tf.float32, array.shape, name=f"{name}/value")
            variables[name] = tf1.Variable(value, trainable=False, name=name)
            feeds[value] = array
        saver = tf1.train.Saver(var_list=variables, write_version=tf1.train.SaverDef.V2)
        with tf1.Session() as session:
            session.run([variable.initializer for variable in variables.values()], feeds)
            return saver.save(session, output_prefix, write_meta_graph=False)


def summarize_checkpoint(checkpoint_path):
    """Reads a checkpoint (prefix or directory) back and lists its variables and shapes."""
    path = os.fspath(checkpoint_path)
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"{path}: directory without a 'checkpoint' state file")
        path = latest
    reader = tf.train.load_checkpoint(path)
    shapes = reader.get_variable_to_shape_map()
    return CheckpointSummary(path=path, shapes={name: tuple(shapes[name]) for name in sorted(shapes)})


def convert(keras_weights_path, output_prefix):
    """Converts a Keras VGG-16 weights file; returns the written checkpoint's summary."""
    source = os.fspath(keras_weights_path)
    tensors = keras_vgg16_to_slim(read_keras_layers(source), source=source)
    written = write_checkpoint(tensors, output_prefix)
    summary = summarize_checkpoint(written)
    if summary.shapes != {name: tuple(array.shape) for name, array in sorted(tensors.items())}:
        raise RuntimeError(f"{written}: the checkpoint read back differs from what was written")
    return summary
