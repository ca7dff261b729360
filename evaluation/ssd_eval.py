"""The inference graph shared by evaluation, export and detection, and how a checkpoint is opened.

* :func:`load_model_source` resolves ``--checkpoint_path`` (a prefix or a training directory)
  and reads the training directory's ``training_config.json``
  (:class:`training.config.TrainingRecord`), so that a network trained
  there is rebuilt with the same input size, class count and class names without the user
  repeating them (explicit arguments override).
* :func:`check_checkpoint_classes` compares the class count a network expects with the
  class heads stored in a checkpoint, and says clearly when they differ.
* :func:`restore_variables_map` restores the exponential moving averages of the weights
  when the checkpoint has them (``<var>/ExponentialMovingAverage``, written by training
  with ``--moving_average_decay``), the raw weights otherwise.
* :func:`detections_in_pixels` runs the network and its post-processing on preprocessed
  images and maps the boxes back to original image pixels;
  :func:`build_serving_graph` does the same from encoded image bytes (export, detect).
"""

import dataclasses
import os
import re

import numpy as np
import tensorflow as tf

import command_line
from deployment import checkpoint_integrity
from nets import anchors, nets_factory
from preprocessing import ssd_vgg_preprocessing
from tf_compat import slim, tf1
from training.config import CONFIG_FILE as TRAINING_CONFIG, TrainingConfig, TrainingRecord
EMA_SUFFIX = "ExponentialMovingAverage"
# A checkpoint without its training record was most likely trained with the trainer's default network.
DEFAULT_MODEL_NAME = TrainingConfig.model_name

# Post-processing defaults: SSD-Tensorflow's evaluation values (a low threshold, many boxes, for mAP).
DEFAULT_SELECT_THRESHOLD = 0.01
DEFAULT_NMS_THRESHOLD = 0.45
DEFAULT_TOP_K = 400
DEFAULT_KEEP_TOP_K = 200
# The post-processing flags' allowed values (eval, export and detect check them before building anything).
POST_PROCESSING_RULES = {
    "select_threshold": command_line.unit_interval(high_inclusive=False),
    "nms_threshold": command_line.unit_interval(low_inclusive=False),
    "top_k": command_line.positive_int(),
    "keep_top_k": command_line.positive_int(),
}


class ClassMismatchError(ValueError):
    """The dataset (or the requested class count) and the checkpoint's class heads disagree."""


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """A checkpoint to run and what its training directory says about it."""

    checkpoint_prefix: str
    train_dir: str  # the folder holding the checkpoint
    record: TrainingRecord | None  # its training_config.json, when present

    @property
    def config_labels(self):
        """{label id: name} recorded by training (background included), or None."""
        return self.record.labels if self.record else None


def find_checkpoint(path):
    """The checkpoint prefix for ``path`` (a prefix, or a directory: its latest checkpoint)."""
    if not path:
        raise FileNotFoundError("no checkpoint given (pass --checkpoint_path=<training dir or checkpoint prefix>)")
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if not latest:
            raise FileNotFoundError(f"{path}: directory has no checkpoint (no 'checkpoint' file naming one)")
        return latest
    if tf.io.gfile.exists(path + ".index"):
        return path
    raise FileNotFoundError(f"{path}: no such checkpoint (neither a directory nor a prefix with a .index file)")


def load_model_source(checkpoint_path):
    """The checkpoint ``checkpoint_path`` names (read end to end first: a damaged one is named in a
    CorruptCheckpointError), its training directory and that directory's training config."""
    prefix = find_checkpoint(checkpoint_path)
    checkpoint_integrity.verify_checkpoint(
        prefix, "pass an older checkpoint prefix as --checkpoint_path (a training directory keeps several)")
    train_dir = os.path.dirname(prefix) or "."
    return ModelSource(prefix, train_dir, TrainingRecord.read(train_dir))


def build_network(source=None, model_name=None, num_classes=None, image_size=None):
    """The SSDNet a checkpoint was trained as; arguments given here override the training config.

    With the training config and no overrides, every recorded network parameter is reused
    (anchors included); a different input size or class count rebuilds the network's defaults
    for them.
    """
    record = source.record if source else None
    recorded_name = record.model_name if record else None
    recorded_params = record.network_params() if record else None
    name = model_name or recorded_name or DEFAULT_MODEL_NAME
    image_size = nets_factory.parse_image_size(image_size)
    if recorded_params and name == recorded_name:
        params = recorded_params
        same_size = image_size is None or tuple(image_size) == params["img_shape"]
        same_classes = num_classes is None or int(num_classes) == params["num_classes"]
        if same_size and same_classes:
            return nets_factory.get_network(name, **params)
        image_size = image_size or params["img_shape"]
        num_classes = num_classes or params["num_classes"]
    overrides = {}
    if image_size:
        overrides["img_shape"] = tuple(image_size)
    if num_classes:
        overrides["num_classes"] = int(num_classes)
    return nets_factory.get_network(name, **overrides)


def checkpoint_num_classes(checkpoint_prefix, net):
    """The class count (background included) of the class heads in a checkpoint, or None without them."""
    reader = tf.train.load_checkpoint(checkpoint_prefix)
    shapes = reader.get_variable_to_shape_map()
    for index, layer in enumerate(net.params.feat_layers):
        name = f"{net.name}/{layer}_box/conv_cls/weights"
        if name in shapes:
            outputs = shapes[name][-1]
            per_cell = anchors.num_anchors_per_cell(net.params.anchor_sizes[index], net.params.anchor_ratios[index])
            if outputs % per_cell:
                raise ClassMismatchError(
                    f"{checkpoint_prefix}: {name} has {outputs} outputs, not a multiple of the {per_cell} anchors "
                    f"per cell of {net.name} at {net.params.img_shape} (was it trained with another network?)")
            return outputs // per_cell
    return None


def check_checkpoint_classes(checkpoint_prefix, net, dataset_description="the dataset"):
    """Raises ClassMismatchError when the checkpoint's class heads do not fit ``net.params.num_classes``."""
    found = checkpoint_num_classes(checkpoint_prefix, net)
    expected = net.params.num_classes
    if found is None:
        raise ClassMismatchError(f"{checkpoint_prefix}: no class heads of {net.name} "
                                 f"({net.name}/<layer>_box/conv_cls/weights) in this checkpoint")
    if found != expected:
        raise ClassMismatchError(
            f"{dataset_description} has {expected - 1} object classes ({expected} with background) but the "
            f"checkpoint {checkpoint_prefix} was trained for {found - 1} ({found} with background): evaluate on "
            f"the dataset it was trained on, or fine-tune it first (train_ssd_network.py --checkpoint_path=...)")
    return found


def has_moving_averages(checkpoint_prefix):
    names = tf.train.load_checkpoint(checkpoint_prefix).get_variable_to_shape_map()
    return any(name.endswith("/" + EMA_SUFFIX) for name in names)


def restore_variables_map(checkpoint_prefix, variables=None, use_moving_averages=True):
    """({checkpoint name: variable}, used_moving_averages) for the model variables.

    With ``use_moving_averages`` and EMA names in the checkpoint, the names come from
    ``tf.train.ExponentialMovingAverage.variables_to_restore`` (its averages); a variable
    missing from the checkpoint is an error that names it.
    """
    variables = list(variables if variables is not None else slim.get_model_variables())
    if not variables:
        raise ValueError("no model variables in the graph to restore")
    names = tf.train.load_checkpoint(checkpoint_prefix).get_variable_to_shape_map()
    used_ema = bool(use_moving_averages) and has_moving_averages(checkpoint_prefix)
    if used_ema:
        ema = tf1.train.ExponentialMovingAverage(decay=0.0)
        wanted = {id(var) for var in variables}
        mapping = {name: var for name, var in ema.variables_to_restore(variables).items() if id(var) in wanted}
        # A variable without an average (not averaged in training) falls back to its own value.
        mapping = {(name if name in names else var.op.name): var for name, var in mapping.items()}
    else:
        mapping = {var.op.name: var for var in variables}
    missing = sorted(name for name in mapping if name not in names)
    if missing:
        raise ValueError(f"{checkpoint_prefix}: {len(missing)} model variables are missing from the checkpoint, "
                         f"first {missing[:3]}")
    wrong_shape = [(name, names[name], var.shape.as_list()) for name, var in mapping.items()
                   if list(names[name]) != var.shape.as_list()]
    if wrong_shape:
        name, stored, wanted = wrong_shape[0]
        raise ClassMismatchError(f"{checkpoint_prefix}: {name} has shape {stored}, the network needs {wanted} "
                                 f"({len(wrong_shape)} variables differ; another network or input size?)")
    return mapping, used_ema


def checkpoint_global_step(checkpoint_prefix):
    """global_step stored in the checkpoint, else the number after the last '-' in its name, else 0."""
    reader = tf.train.load_checkpoint(checkpoint_prefix)
    if reader.has_tensor("global_step"):
        return int(reader.get_tensor("global_step"))
    match = re.search(r"-(\d+)$", checkpoint_prefix)
    return int(match.group(1)) if match else 0


@dataclasses.dataclass(frozen=True)
class PostProcessing:
    select_threshold: float = DEFAULT_SELECT_THRESHOLD
    nms_threshold: float = DEFAULT_NMS_THRESHOLD
    top_k: int = DEFAULT_TOP_K
    keep_top_k: int = DEFAULT_KEEP_TOP_K

    def __post_init__(self):
        if not 0.0 <= self.select_threshold < 1.0:
            raise ValueError(f"select_threshold must lie in [0, 1), got {self.select_threshold}")
        if not 0.0 < self.nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold must lie in (0, 1], got {self.nms_threshold}")
        if self.top_k < 1 or self.keep_top_k < 1:
            raise ValueError(f"top_k and keep_top_k must be >= 1, got {self.top_k}, {self.keep_top_k}")


def detections_in_pixels(net, images, info, post=PostProcessing(), data_format="NHWC"):
    """Network + post-processing on preprocessed images [B, h, w, 3]; boxes in original pixels.

    ``info`` is :func:`preprocessing.ssd_vgg_preprocessing.preprocess_for_eval`'s, batched.
    Returns a dict: boxes [B, K, 4] float32 (ymin, xmin, ymax, xmax, original pixels),
    scores [B, K], classes [B, K] int64 (0 in padding), num_detections [B] int32.
    """
    predictions, localisations, _, _ = nets_factory.network_fn_of(net, data_format=data_format)(images)
    return detections_of_outputs(net, predictions, localisations, info, post)


def detections_of_outputs(net, predictions, localisations, info, post=PostProcessing()):
    """:func:`detections_in_pixels` from the network's outputs (for a caller that also needs its logits)."""
    detections = net.detected_bboxes(
        predictions, localisations, select_threshold=post.select_threshold, nms_threshold=post.nms_threshold,
        top_k=post.top_k, keep_top_k=post.keep_top_k, clip=True)
    boxes = ssd_vgg_preprocessing.boxes_to_original_pixels(detections.boxes, info)
    valid = tf.sequence_mask(detections.num_detections, post.keep_top_k)
    boxes = tf.where(valid[..., None], boxes, tf.zeros_like(boxes))
    return {"boxes": boxes, "scores": detections.scores, "classes": detections.classes,
            "num_detections": detections.num_detections}


def decode_and_preprocess(encoded, out_shape, resize_mode="warp"):
    """One encoded image (JPEG/PNG/BMP/GIF bytes) -> (preprocessed float32 [h, w, 3], info)."""
    image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    no_boxes = tf.zeros([0, 4], tf.float32)
    no_labels = tf.zeros([0], tf.int64)
    processed, _, _, _, info = ssd_vgg_preprocessing.preprocess_for_eval(
        image, no_labels, no_boxes, no_labels, out_shape, resize_mode=resize_mode)
    return processed, info


def class_name_table(labels_to_names, num_classes):
    """[num_classes] names by label; '' for label 0 (padding rows) and for labels without a name."""
    names = [""] + [str(labels_to_names.get(i, f"class_{i}")) for i in range(1, num_classes)]
    return np.array(names, dtype=object)


def build_serving_graph(net, encoded_images, labels_to_names, post=PostProcessing(), resize_mode="warp"):
    """From a batch of encoded images (string [B]) to detections in original image pixels.

    Returns a dict of tensors: boxes [B, K, 4] float32 (ymin, xmin, ymax, xmax pixels),
    classes [B, K] int64, class_names [B, K] string ('' in padding), scores [B, K] float32,
    num_detections [B] int32, image_shape [B, 2] int32 (original height, width).
    """
    out_shape = net.params.img_shape
    with tf.name_scope("decode_and_preprocess"):
        images, info = tf.map_fn(
            lambda encoded: decode_and_preprocess(encoded, out_shape, resize_mode),
            encoded_images,
            fn_output_signature=(
                tf.TensorSpec([out_shape[0], out_shape[1], 3], tf.float32),
                {"original_shape": tf.TensorSpec([2], tf.int32), "scale": tf.TensorSpec([2], tf.float32),
                 "offset": tf.TensorSpec([2], tf.float32), "output_shape": tf.TensorSpec([2], tf.int32)},
            ),
        )
    outputs = detections_in_pixels(net, images, info, post)
    table = tf.constant(class_name_table(labels_to_names, net.params.num_classes), tf.string)
    outputs["class_names"] = tf.gather(table, outputs["classes"])
    outputs["image_shape"] = info["original_shape"]
    return {name: tf.identity(tensor, name=name) for name, tensor in outputs.items()}


def labels_for(source, num_classes, dataset_labels=None):
    """Class names by label: the dataset's, else the training config's, else class_<i>."""
    labels = dataset_labels or (source.config_labels if source else None) or {}
    return {i: labels.get(i, "none" if i == 0 else f"class_{i}") for i in range(num_classes)}


def serving_num_classes(source, model_name=None, image_size=None, num_classes=None):
    """Classes (with background): as given, else the training config's, else the checkpoint's class heads."""
    if num_classes:
        return int(num_classes)
    recorded = (source.record.network or {}).get("num_classes") if source.record else None
    if recorded:
        return int(recorded)
    probe = build_network(source, model_name, 2, image_size)
    found = checkpoint_num_classes(source.checkpoint_prefix, probe)
    if not found:
        raise ValueError(f"{source.checkpoint_prefix}: cannot tell the class count (no {TRAINING_CONFIG}, no "
                         f"class heads of {probe.name}); pass --num_classes")
    return found


@dataclasses.dataclass(frozen=True)
class InferenceGraph:
    net: object
    labels: dict  # {label: name}, background included
    images: tf.Tensor  # string [B] placeholder: encoded images
    outputs: dict  # build_serving_graph's tensors
    saver: object  # restores the checkpoint's (EMA) weights into the graph
    used_moving_averages: bool


def build_inference_graph(source, model_name=None, image_size=None, num_classes=None, labels=None,
                          post=PostProcessing(), resize_mode="warp", use_moving_averages=True, input_name="images"):
    """In the default graph: a string placeholder, the serving graph, and the saver of ``source``'s checkpoint."""
    net = build_network(source, model_name, serving_num_classes(source, model_name, image_size, num_classes),
                        image_size)
    labels = labels_for(source, net.params.num_classes, labels)
    check_checkpoint_classes(source.checkpoint_prefix, net, f"the network ({len(labels) - 1} classes)")
    images = tf1.placeholder(tf.string, [None], name=input_name)
    outputs = build_serving_graph(net, images, labels, post, resize_mode)
    mapping, used_ema = restore_variables_map(source.checkpoint_prefix, use_moving_averages=use_moving_averages)
    return InferenceGraph(net, labels, images, outputs, tf1.train.Saver(mapping), used_ema)
