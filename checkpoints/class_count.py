"""An SSD checkpoint for one class count -> a starting checkpoint for another.

Works on checkpoints of this project and of SSD-Tensorflow (same variable names:
``ssd_300_vgg/conv1/conv1_1/weights`` ... ``ssd_300_vgg/<block>_box/conv_cls/{weights,biases}``).
Only the class heads (``conv_cls``) depend on the class count: their output dimension is
anchors per cell x num_classes. Everything else (VGG base, extra blocks, box regression heads,
the conv4_3 L2-normalisation scale) is copied unchanged. The class heads are either left out
(the trainer then starts them from their initialisers) or written with fresh values drawn
from the network's own initialisers for the new shape.

The result is a starting point, not a training state: optimizer slots (``.../Momentum``),
moving averages and ``global_step`` are left out. The variables are written under the
network's scope (``ssd_300_vgg``), so the trainer restores them without
``--checkpoint_model_scope``.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

from checkpoints import keras_vgg16
from nets import nets_factory
from tf_compat import slim, tf1

CLASS_HEAD_SCOPE = "conv_cls"


class ClassCountError(ValueError):
    """The checkpoint cannot be converted for this network (names a file and a variable)."""


@dataclasses.dataclass
class ClassCountConversion:
    """What :func:`convert_class_count` wrote.

    Attributes:
      summary: the written checkpoint, read back (``keras_vgg16.CheckpointSummary``).
      source: the checkpoint prefix read.
      network: network name (``ssd_300_vgg``), also the scope the variables are written under.
      old_num_classes: the class count of the source checkpoint's heads (background included).
      num_classes: the new class count.
      heads: names of the class-head variables (in the written names).
      reinitialized: True if the heads were written with fresh values, False if left out.
      left_out: source variables not written (optimizer slots, moving averages, global_step, ...).
    """

    summary: keras_vgg16.CheckpointSummary
    source: str
    network: str
    old_num_classes: int
    num_classes: int
    heads: list
    reinitialized: bool
    left_out: list

    def describe(self, max_names=6):
        heads = f"{len(self.heads)} class-head variables ({CLASS_HEAD_SCOPE})"
        what = "re-initialised for the new shape" if self.reinitialized else "left out (they start fresh)"
        lines = [
            self.summary.describe(max_names),
            f"classes: {self.old_num_classes} -> {self.num_classes} (background included); {heads} {what}",
        ]
        if self.left_out:
            shown = ", ".join(self.left_out[:3]) + (" ..." if len(self.left_out) > 3 else "")
            lines.append(f"not written: {len(self.left_out)} variable(s) of {self.source} that are not model "
                         f"variables of {self.network} (optimizer slots, moving averages, global_step): {shown}")
        return "\n".join(lines)


def is_class_head(name):
    """Whether a variable name is a class head (``.../<block>_box/conv_cls/{weights,biases}``)."""
    return f"/{CLASS_HEAD_SCOPE}/" in f"/{name}"


def network_variables(model_name, num_classes, seed=0, with_head_values=False):
    """The model variables the network builds for ``num_classes``.

    Builds the network (the network function all commands use, reference input size: kernel shapes do not
    depend on it) in a graph of its own. Returns ``(net, {name: shape}, {head name: value})``; the
    head values come from the network's initialisers with graph seed ``seed`` and are only
    computed with ``with_head_values``.
    """
    network_fn = nets_factory.get_network_fn(model_name, num_classes)
    net = network_fn.net
    height, width = net.params.img_shape
    with tf.Graph().as_default():
        tf1.set_random_seed(seed)
        network_fn(tf1.placeholder(tf.float32, [1, height, width, 3], name="images"))
        variables = {v.op.name: v for v in slim.get_model_variables()}
        shapes = {name: tuple(v.shape.as_list()) for name, v in variables.items()}
        head_values = {}
        if with_head_values:
            heads = [v for name, v in variables.items() if is_class_head(name)]
            with tf1.Session() as session:
                session.run(tf1.variables_initializer(heads))
                head_values = {v.op.name: session.run(v) for v in heads}
    return net, shapes, head_values


def _resolve(checkpoint_path):
    path = os.fspath(checkpoint_path)
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise ClassCountError(f"{path}: directory without a 'checkpoint' state file naming a checkpoint")
        return latest
    if not tf.io.gfile.exists(path + ".index"):
        raise ClassCountError(f"{path}: no such checkpoint (expected a prefix with its .index file, or a directory)")
    return path


def _source_name(name, network_scope, model_scope):
    return model_scope + name[len(network_scope):] if model_scope != network_scope else name


def convert_class_count(checkpoint_path, output_prefix, num_classes, model_name="ssd_300_vgg", model_scope=None,
                        reinitialize_heads=False, seed=0):
    """Writes ``output_prefix``: the SSD checkpoint at ``checkpoint_path`` for ``num_classes`` classes.

    Args:
      checkpoint_path: checkpoint prefix, or a directory with a ``checkpoint`` state file.
      output_prefix: checkpoint prefix to write; its directory's state file points at it.
      num_classes: new class count, background included (a 3-class dataset: 4).
      model_name: the network (``nets_factory.list_networks()``) the checkpoint belongs to.
      model_scope: the network's scope inside the checkpoint (default: ``model_name``'s scope).
      reinitialize_heads: write the class heads with fresh values (network initialisers, graph
        seed ``seed``) instead of leaving them out.

    Returns:
      :class:`ClassCountConversion`.

    Raises:
      ClassCountError: no checkpoint there; a model variable (other than a class head) missing
        or of another shape (wrong ``model_name`` / ``model_scope``); class heads inconsistent
        with the network's anchors.
    """
    if int(num_classes) < 2:
        raise ClassCountError(f"num_classes counts background and must be >= 2, got {num_classes}")
    source = _resolve(checkpoint_path)
    reader = tf.train.load_checkpoint(source)
    source_shapes = {name: tuple(shape) for name, shape in reader.get_variable_to_shape_map().items()}
    net, shapes, head_values = network_variables(model_name, num_classes, seed, with_head_values=reinitialize_heads)
    model_scope = net.name if model_scope is None else model_scope.strip("/")

    missing, wrong_shape, old_counts = [], [], {}
    tensors = {}
    for name, shape in shapes.items():
        source_name = _source_name(name, net.name, model_scope)
        if source_name not in source_shapes:
            missing.append(source_name)
            continue
        source_shape = source_shapes[source_name]
        if is_class_head(name):
            anchors = shape[-1] // num_classes
            if source_shape[:-1] != shape[:-1] or source_shape[-1] % anchors:
                raise ClassCountError(
                    f"{source}: class head {source_name} has shape {list(source_shape)}; {model_name} needs "
                    f"{list(shape[:-1])} + [{anchors} anchors x classes]. Is this a {model_name} checkpoint?")
            old_counts[source_name] = source_shape[-1] // anchors
            if reinitialize_heads:
                tensors[name] = head_values[name]
            continue
        if source_shape != shape:
            wrong_shape.append(f"{source_name} {list(source_shape)} (network: {list(shape)})")
            continue
        tensors[name] = reader.get_tensor(source_name)
    if missing or wrong_shape:
        problems = [f"missing {n}" for n in missing] + [f"shape of {n}" for n in wrong_shape]
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5 else "")
        scopes = sorted({name.split("/", 1)[0] for name in source_shapes})
        raise ClassCountError(
            f"{source} does not hold the {model_name} network under scope '{model_scope}': {shown}. "
            f"Check --model_name (one of {', '.join(nets_factory.list_networks())}) and --model_scope "
            f"(the checkpoint's top-level scopes: {', '.join(scopes)}).")
    if len(set(old_counts.values())) != 1:
        raise ClassCountError(f"{source}: the class heads disagree on the class count: {old_counts}")
    old_num_classes = next(iter(old_counts.values()))

    used = {_source_name(name, net.name, model_scope) for name in shapes}
    left_out = sorted(name for name in source_shapes if name not in used)
    for name, value in tensors.items():
        if not np.issubdtype(np.asarray(value).dtype, np.floating):
            raise ClassCountError(f"{source}: model variable {name} is {np.asarray(value).dtype}, expected floats")
    written = keras_vgg16.write_checkpoint(tensors, output_prefix)
    summary = keras_vgg16.summarize_checkpoint(written)
    if summary.shapes != {name: tuple(np.shape(value)) for name, value in sorted(tensors.items())}:
        raise RuntimeError(f"{written}: the checkpoint read back differs from what was written")
    return ClassCountConversion(
        summary=summary, source=source, network=net.name, old_num_classes=old_num_classes,
        num_classes=int(num_classes), heads=sorted(n for n in shapes if is_class_head(n)),
        reinitialized=bool(reinitialize_heads), left_out=left_out,
    )
