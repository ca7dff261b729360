#!/usr/bin/env python
"""Exports an SSD checkpoint as a SavedModel that detects objects in encoded images.

    python export_ssd_network.py --checkpoint_path=ckpt/fine_tuning --output_dir=export/1

The serving signature (``serving_default``) takes ``images``: a batch of encoded image
files (string [B]: JPEG, PNG, BMP or GIF bytes, any sizes) and returns, per image,
``boxes`` [B, K, 4] float32 (ymin, xmin, ymax, xmax in pixels of the original image),
``classes`` [B, K] int64, ``class_names`` [B, K] string, ``scores`` [B, K] float32,
``num_detections`` [B] int32 and ``image_shape`` [B, 2] int32 (rows past num_detections
are padding: class 0, name '', score 0). K is ``--keep_top_k``. The network, its input size
and class names come from the training directory's ``training_config.json`` (flags
override); the EMA weights are exported when the checkpoint has them. ``labels.txt`` and
``export_config.json`` (thresholds, network, source checkpoint) are written as assets.
"""

import json
import os
import sys
import tempfile

import package_guard

package_guard.ensure_project_packages()

import command_line  # noqa: E402

from absl import flags, logging  # noqa: E402
import tensorflow as tf  # noqa: E402

from datasets import label_map  # noqa: E402
from evaluation import detectors, ssd_eval  # noqa: E402
from preprocessing import ssd_vgg_preprocessing  # noqa: E402
from tf_compat import tf1  # noqa: E402

# The serving contract is defined once, where the SavedModel is read back.
SIGNATURE_NAME = detectors.SIGNATURE_NAME
INPUT_NAME = detectors.INPUT_NAME
OUTPUT_NAMES = ("boxes", "classes", "class_names", "scores", "num_detections", "image_shape")
EXPORT_CONFIG = "export_config.json"
LABELS_FILE = "labels.txt"


def define_flags(flag_values):
    """Defines the export flags on ``flag_values`` (a fresh :class:`absl.flags.FlagValues`); returns it."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("checkpoint_path", None,
                        "A training directory (its latest checkpoint) or a checkpoint prefix.", required=True, **fv)
    flags.DEFINE_string("output_dir", None, "SavedModel folder to create (must not exist, see --overwrite).",
                        required=True, **fv)
    flags.DEFINE_bool("overwrite", False, "Replace --output_dir if it exists.", **fv)
    flags.DEFINE_string("model_name", None, "Network; default: the training config's (else ssd_300_vgg).", **fv)
    flags.DEFINE_string("image_size", None, "Network input 'S' or 'H,W'; default: the training config's.", **fv)
    flags.DEFINE_integer("num_classes", None, "Classes with background; default: the training config's, else read "
                         "from the checkpoint.", **fv)
    flags.DEFINE_string("labels_file", None,
                        "A labels.txt (id:name) for the class names; default: the training config's.", **fv)
    flags.DEFINE_enum("resize_mode", "warp", ssd_vgg_preprocessing.RESIZE_MODES, "Input resizing.", **fv)
    flags.DEFINE_float("select_threshold", ssd_eval.DEFAULT_SELECT_THRESHOLD, "Minimum class score.", **fv)
    flags.DEFINE_float("nms_threshold", ssd_eval.DEFAULT_NMS_THRESHOLD, "Per-class NMS IoU.", **fv)
    flags.DEFINE_integer("top_k", ssd_eval.DEFAULT_TOP_K, "Candidates per class before NMS.", **fv)
    flags.DEFINE_integer("keep_top_k", ssd_eval.DEFAULT_KEEP_TOP_K, "Detections per image (K).", **fv)
    flags.DEFINE_bool("no_moving_averages", False, "Export the raw weights even when the EMA is stored.", **fv)
    return flag_values


def default_options(**overrides):
    """The defaults as a namespace with ``overrides`` (--checkpoint_path and --output_dir have none)."""
    return command_line.flag_defaults(define_flags(flags.FlagValues()), overrides, "export options")


def build_inference_graph(source, opts):
    """In the default graph: the serving graph of ``source`` as ``opts`` (this script's flags) say."""
    labels = label_map.read_label_map(opts.labels_file) if opts.labels_file else None
    return ssd_eval.build_inference_graph(
        source, model_name=opts.model_name, image_size=opts.image_size, num_classes=opts.num_classes,
        labels=label_map.labels_to_names(labels) if labels else None,
        post=ssd_eval.PostProcessing(opts.select_threshold, opts.nms_threshold, opts.top_k, opts.keep_top_k),
        resize_mode=opts.resize_mode, use_moving_averages=not opts.no_moving_averages, input_name=INPUT_NAME)


# --num_classes counts the background: at least 2.
OPTION_RULES = {"num_classes": command_line.Rule(low=2, integer=True, optional=True), **ssd_eval.POST_PROCESSING_RULES}


def validate_options(opts):
    """Raises command_line.UsageError naming every flag with a value export cannot use."""
    command_line.check_options(opts, OPTION_RULES, [command_line.image_size_problem(opts.image_size)])


def export(opts):
    """Writes the SavedModel; returns its directory.

    The model is written into a temporary sibling folder and renamed into place at the end, so a
    failure (a damaged checkpoint, a full disk) leaves neither a half-written ``--output_dir`` nor,
    with ``--overwrite``, a lost previous export."""
    validate_options(opts)
    output_dir = opts.output_dir.rstrip("/") or opts.output_dir
    if tf.io.gfile.exists(output_dir) and not opts.overwrite:
        raise FileExistsError(f"{output_dir} exists; choose a new --output_dir (e.g. export/2) or pass --overwrite")
    source = ssd_eval.load_model_source(opts.checkpoint_path)
    parent = os.path.dirname(os.path.abspath(output_dir))
    tf.io.gfile.makedirs(parent)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.partial-", dir=parent)
    tf.io.gfile.rmtree(staging)  # the SavedModel builder creates its folder itself
    try:
        config = _write_saved_model(source, opts, staging)
        _replace(staging, output_dir)
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
    logging.info("Exported %s (step %d, %s weights, %s %s, %d classes) to %s", source.checkpoint_prefix,
                 config["global_step"], "EMA" if config["moving_averages"] else "raw", config["model_name"],
                 tuple(config["image_size"]), config["num_classes"], output_dir)
    return output_dir


def _replace(staging, output_dir):
    """Moves the finished ``staging`` folder to ``output_dir``; an existing one is removed only after."""
    previous = None
    if tf.io.gfile.exists(output_dir):
        previous = f"{staging}.previous"
        tf.io.gfile.rename(output_dir, previous)
    tf.io.gfile.rename(staging, output_dir)
    if previous:
        tf.io.gfile.rmtree(previous)


def _write_saved_model(source, opts, output_dir):
    """Builds the serving graph of ``source`` and saves it as a SavedModel in ``output_dir``; returns
    the export configuration written as an asset."""
    graph = tf.Graph()
    with graph.as_default():
        inference = build_inference_graph(source, opts)
        net, labels, images, outputs = inference.net, inference.labels, inference.images, inference.outputs
        saver, used_ema = inference.saver, inference.used_moving_averages
        config = {
            "checkpoint": source.checkpoint_prefix,
            "global_step": ssd_eval.checkpoint_global_step(source.checkpoint_prefix),
            "moving_averages": used_ema,
            "model_name": net.name,
            "image_size": list(net.params.img_shape),
            "num_classes": net.params.num_classes,
            "labels": {str(k): v for k, v in labels.items()},
            "resize_mode": opts.resize_mode,
            "select_threshold": opts.select_threshold,
            "nms_threshold": opts.nms_threshold,
            "top_k": opts.top_k,
            "keep_top_k": opts.keep_top_k,
            "signature": SIGNATURE_NAME,
            "inputs": {INPUT_NAME: "string [B]: encoded JPEG/PNG/BMP/GIF images"},
            "outputs": list(OUTPUT_NAMES),
        }
        assets_dir = tempfile.mkdtemp(prefix="ssd_export_assets_")
        try:
            asset_paths = _write_assets(assets_dir, labels, config)
            asset_tensors = [tf.constant(path, name=f"asset_{os.path.basename(path).replace('.', '_')}")
                             for path in asset_paths]
            for tensor in asset_tensors:
                tf1.add_to_collection(tf1.GraphKeys.ASSET_FILEPATHS, tensor)
            signature = tf1.saved_model.signature_def_utils.predict_signature_def(
                inputs={INPUT_NAME: images}, outputs={name: outputs[name] for name in OUTPUT_NAMES})
            builder = tf1.saved_model.Builder(output_dir)
            with tf1.Session(graph=graph) as session:
                saver.restore(session, source.checkpoint_prefix)
                builder.add_meta_graph_and_variables(
                    session, [tf1.saved_model.tag_constants.SERVING],
                    signature_def_map={SIGNATURE_NAME: signature},
                    assets_collection=tf1.get_collection(tf1.GraphKeys.ASSET_FILEPATHS),
                    strip_default_attrs=True,
                )
            builder.save()
        finally:
            tf.io.gfile.rmtree(assets_dir)
    return config


def _write_assets(directory, labels, config):
    labels_path = os.path.join(directory, LABELS_FILE)
    label_map.write_label_map(labels_path, {i: n for i, n in labels.items() if i})
    config_path = os.path.join(directory, EXPORT_CONFIG)
    with open(config_path, "w", encoding="utf-8") as stream:
        json.dump(config, stream, indent=2)
    return [labels_path, config_path]


def main(argv=None):
    return command_line.run_graph_command(define_flags(flags.FlagValues()), argv, __doc__, export)


if __name__ == "__main__":
    sys.exit(main())
