#!/usr/bin/env python
"""Evaluates SSD checkpoints on a converted dataset split: VOC07 11-point and VOC area mAP, COCO AP.

    python eval_ssd_network.py --checkpoint_path=ckpt/fine_tuning --dataset_dir=data/voc07 \\
        --dataset_split_name=test                     # the latest checkpoint, once
    python eval_ssd_network.py --checkpoint_path=ckpt/fine_tuning --wait_for_checkpoints \\
        --timeout=3600 --keep_best                    # every new checkpoint while training runs

One pass over the split: evaluation preprocessing, network, post-processing (decode,
per-class NMS) in the graph; the boxes are mapped back to original image pixels and matched
to the ground truth per class on the host (:class:`evaluation.detection_metrics.DetectionEvaluator`,
VOC ``difficult`` boxes ignored). The network (input size, anchors, class names) is rebuilt
from the training directory's ``training_config.json``; flags override it. The dataset
defaults to the one training used. EMA weights are used when the checkpoint has them.

Results: the per-class table on stdout; TensorBoard summaries (per-class AP, mAPs, COCO
numbers, PR curves) in ``--eval_dir`` (default ``<train_dir>/eval_<split>``, next to the
training events); one JSON line per checkpoint appended to ``<eval_dir>/metrics.jsonl``;
with ``--keep_best`` a copy of the best checkpoint so far in ``<eval_dir>/best/``.
"""

import json
import math
import os
import sys

import package_guard

package_guard.ensure_project_packages()

import command_line  # noqa: E402

from absl import flags, logging  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from datasets import dataset_factory, sample_data  # noqa: E402
from deployment import checkpoint_integrity, devices  # noqa: E402
from evaluation import detection_metrics, progress as progress_lib, ssd_eval, summaries  # noqa: E402
from preprocessing import ssd_vgg_preprocessing  # noqa: E402
from tf_compat import tf1  # noqa: E402

METRICS_FILE = "metrics.jsonl"
BEST_DIR = "best"
BEST_RECORD = "best.json"
BEST_METRICS = ("voc07_map", "voc_area_map", "coco_ap", "coco_ap50")
VOC_BOX_CONVENTIONS = ("devkit", "continuous")


def define_flags(flag_values):
    """Defines the evaluation flags on ``flag_values`` (a fresh :class:`absl.flags.FlagValues`); returns it."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("checkpoint_path", None,
                        "A training directory (its latest checkpoint) or a checkpoint prefix.", required=True, **fv)
    flags.DEFINE_bool("wait_for_checkpoints", False,
                      "Follow the training directory --checkpoint_path: evaluate each new checkpoint once.", **fv)
    flags.DEFINE_float("timeout", 3600.0,
                       "With --wait_for_checkpoints: stop after this many seconds without a new checkpoint.", **fv)
    flags.DEFINE_float("eval_interval_secs", 60.0,
                       "With --wait_for_checkpoints: look for a new checkpoint at most this often.", **fv)
    flags.DEFINE_string("eval_dir", None, "Summaries, metrics.jsonl and best/; default <train_dir>/eval_<split>.",
                        **fv)
    flags.DEFINE_string("dataset_dir", None, "A converted dataset; default: the one in the training config, else "
                        "the built-in sample dataset.", **fv)
    flags.DEFINE_string("dataset_name", None, "Expected dataset name; default: what the directory holds.", **fv)
    flags.DEFINE_string("dataset_split_name", "test", "Split to evaluate.", **fv)
    flags.DEFINE_string("model_name", None, "Network; default: the training config's (else ssd_300_vgg).", **fv)
    flags.DEFINE_string("image_size", None, "Network input 'S' or 'H,W'; default: the training config's.", **fv)
    flags.DEFINE_enum("resize_mode", "warp", ssd_vgg_preprocessing.RESIZE_MODES,
                      "warp: stretch to the input size (as in training); pad: keep the aspect ratio.", **fv)
    flags.DEFINE_integer("batch_size", 8, "Images per forward pass.", **fv)
    flags.DEFINE_integer("num_preprocessing_threads", 4, "Parallel parsing and preprocessing.", **fv)
    flags.DEFINE_integer("max_num_images", None, "Evaluate only the first N images of the split.", **fv)
    flags.DEFINE_float("select_threshold", ssd_eval.DEFAULT_SELECT_THRESHOLD, "Minimum class score.", **fv)
    flags.DEFINE_float("nms_threshold", ssd_eval.DEFAULT_NMS_THRESHOLD, "Per-class NMS IoU.", **fv)
    flags.DEFINE_integer("top_k", ssd_eval.DEFAULT_TOP_K, "Candidates per class before NMS.", **fv)
    flags.DEFINE_integer("keep_top_k", ssd_eval.DEFAULT_KEEP_TOP_K, "Detections per image after NMS.", **fv)
    flags.DEFINE_float("matching_iou", 0.5, "IoU above which a detection matches (VOC: 0.5).", **fv)
    flags.DEFINE_enum("voc_box_convention", "devkit", VOC_BOX_CONVENTIONS,
                      "devkit: the VOC devkit's pixel-inclusive IoU and areas (a box is xmax - xmin + 1 pixels "
                      "wide), comparable with published VOC numbers; continuous: xmax - xmin.", **fv)
    flags.DEFINE_bool("no_coco", False, "Skip the COCO metrics (pycocotools).", **fv)
    flags.DEFINE_bool("no_moving_averages", False, "Use the raw weights even when the EMA is stored.", **fv)
    flags.DEFINE_bool("keep_best", False, "Copy the best checkpoint so far into <eval_dir>/best/.", **fv)
    flags.DEFINE_enum("best_metric", "voc07_map", BEST_METRICS, "What --keep_best compares.", **fv)
    flags.DEFINE_float("progress_every_secs", 10.0, "Progress line (rate, ETA) this often.", **fv)
    flags.DEFINE_float("gpu_memory_fraction", devices.DEFAULT_GPU_MEMORY_FRACTION,
                       "Share of each GPU's memory the session may take.", **fv)
    flags.DEFINE_bool("allow_growth", False, "Let GPU memory grow on demand.", **fv)
    return flag_values


def default_options(**overrides):
    """The defaults as a namespace with ``overrides`` (for tests and benchmarks)."""
    return command_line.flag_defaults(define_flags(flags.FlagValues()), overrides, "evaluation options")


def resolve_dataset_dir(opts, source):
    if opts.dataset_dir:
        return opts.dataset_dir
    recorded = source.record.dataset.dir if source.record else None
    if recorded and tf.io.gfile.exists(os.path.join(recorded, dataset_factory.DATASET_INFO)):
        logging.info("No --dataset_dir: evaluating on the training dataset %s", recorded)
        return recorded
    directory = sample_data.ensure_sample_dataset()
    logging.info("No --dataset_dir: evaluating on the built-in sample dataset in %s", directory)
    return directory


def default_eval_dir(opts, source):
    return opts.eval_dir or os.path.join(source.train_dir, f"eval_{opts.dataset_split_name}")


def build_eval_graph(net, spec, opts):
    """Input pipeline over the split and the detection graph; returns (iterator, fetches)."""
    out_shape = net.params.img_shape

    def prepare(example):
        image, _, _, _, info = ssd_vgg_preprocessing.preprocess_for_eval(
            example["image"], example["labels"], example["boxes"], example["difficult"], out_shape,
            resize_mode=opts.resize_mode)
        return {"image": image, "info": info, "gt_boxes": example["boxes"], "gt_labels": example["labels"],
                "gt_difficult": example["difficult"], "num_objects": tf.size(example["labels"]),
                "filename": example["filename"], "source_id": example["source_id"]}

    with tf1.device("/cpu:0"), tf.name_scope("eval_input"):
        dataset = dataset_factory.build_dataset(spec, is_training=False,
                                                num_parallel_calls=opts.num_preprocessing_threads)
        if opts.max_num_images:
            dataset = dataset.take(opts.max_num_images)
        dataset = dataset.map(prepare, num_parallel_calls=opts.num_preprocessing_threads, deterministic=True)
        dataset = dataset.padded_batch(opts.batch_size).prefetch(2)
        iterator = tf1.data.make_initializable_iterator(dataset)
        batch = iterator.get_next()
    post = ssd_eval.PostProcessing(opts.select_threshold, opts.nms_threshold, opts.top_k, opts.keep_top_k)
    detections = ssd_eval.detections_in_pixels(net, batch["image"], batch["info"], post)
    fetches = {"detections": detections, **{k: v for k, v in batch.items() if k != "image"}}
    return iterator, fetches


def _image_id(filename, source_id, index, seen):
    name = (filename or source_id or b"").decode("utf-8", "replace") or f"image_{index}"
    if name in seen:
        name = f"{name}#{index}"
    seen.add(name)
    return name


def add_batch(evaluator, values, seen, first_index):
    """Adds one fetched batch to the evaluator (ground truth scaled from relative to pixels)."""
    detections = values["detections"]
    count = len(values["num_objects"])
    for i in range(count):
        height, width = (float(v) for v in values["info"]["original_shape"][i])
        num_objects = int(values["num_objects"][i])
        scale = np.array([height, width, height, width])
        num_detections = int(detections["num_detections"][i])
        evaluator.add_image(
            _image_id(values["filename"][i], values["source_id"][i], first_index + i, seen),
            values["gt_boxes"][i][:num_objects] * scale,
            values["gt_labels"][i][:num_objects],
            values["gt_difficult"][i][:num_objects],
            detections["boxes"][i][:num_detections],
            detections["scores"][i][:num_detections],
            detections["classes"][i][:num_detections],
            image_height=height,
            image_width=width,
        )
    return count


class Evaluation:
    """The evaluation graph for one dataset split and network, run against any number of checkpoints."""

    def __init__(self, opts, source):
        self.opts = opts
        dataset_dir = resolve_dataset_dir(opts, source)
        self.spec = dataset_factory.get_dataset(opts.dataset_name, opts.dataset_split_name, dataset_dir)
        self.net = ssd_eval.build_network(source, opts.model_name, self.spec.num_classes, opts.image_size)
        self.labels = ssd_eval.labels_for(source, self.spec.num_classes, self.spec.labels_to_names)
        recorded = source.config_labels
        if recorded and len(recorded) == len(self.labels) and recorded != self.labels:
            logging.warning("The dataset's class names %s differ from those the checkpoint was trained with %s; "
                            "reporting the dataset's", list(self.labels.values()), list(recorded.values()))
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.iterator, self.fetches = build_eval_graph(self.net, self.spec, opts)
        self.num_images = min(self.spec.num_samples, opts.max_num_images or self.spec.num_samples)

    def run(self, checkpoint_prefix):
        """(EvaluationResult, CocoMetrics or None, used_moving_averages) of one checkpoint."""
        opts = self.opts
        class_names = [self.labels[i] for i in sorted(self.labels) if i]
        ssd_eval.check_checkpoint_classes(
            checkpoint_prefix, self.net, f"dataset '{self.spec.name}' ({self.spec.dataset_dir}, classes {class_names})")
        with self.graph.as_default():
            mapping, used_ema = ssd_eval.restore_variables_map(
                checkpoint_prefix, use_moving_averages=not opts.no_moving_averages)
            saver = tf1.train.Saver(mapping)
        evaluator = detection_metrics.DetectionEvaluator(
            self.spec.num_classes - 1, {i: n for i, n in self.labels.items() if i}, iou_threshold=opts.matching_iou,
            pixel_inclusive=opts.voc_box_convention == "devkit")
        config = devices.session_config(opts.gpu_memory_fraction, opts.allow_growth)
        logging.info("Evaluating %s (%s weights) on %s/%s (%d images)", checkpoint_prefix,
                     "EMA" if used_ema else "raw", self.spec.name, self.spec.split_name, self.num_images)
        progress = progress_lib.Progress("eval", self.num_images, opts.progress_every_secs)
        seen = set()
        with tf1.Session(graph=self.graph, config=config) as session:
            saver.restore(session, checkpoint_prefix)
            session.run(self.iterator.initializer)
            while True:
                try:
                    values = session.run(self.fetches)
                except tf.errors.OutOfRangeError:
                    break
                progress.update(add_batch(evaluator, values, seen, progress.done))
        progress.finish()
        result = evaluator.compute()
        coco = None
        if not opts.no_coco:
            try:
                from evaluation import coco_metrics

                coco = coco_metrics.compute_coco_metrics(evaluator)
            except ImportError as err:
                logging.warning("%s", err)
        return result, coco, used_ema


def _metric(record, name):
    value = record.get(name)
    return -math.inf if value is None else float(value)


def keep_if_best(eval_dir, checkpoint_prefix, record, metric, train_dir=None):
    """Copies the checkpoint into <eval_dir>/best/ when ``record[metric]`` beats the best so far."""
    best_dir = os.path.join(eval_dir, BEST_DIR)
    best_path = os.path.join(best_dir, BEST_RECORD)
    previous = None
    if tf.io.gfile.exists(best_path):
        with tf.io.gfile.GFile(best_path) as stream:
            previous = json.loads(stream.read())
    if previous is not None and _metric(record, metric) <= _metric(previous, metric):
        return False
    if tf.io.gfile.exists(best_dir):
        tf.io.gfile.rmtree(best_dir)
    tf.io.gfile.makedirs(best_dir)
    basename = os.path.basename(checkpoint_prefix)
    for path in tf.io.gfile.glob(checkpoint_prefix + ".*"):
        tf.io.gfile.copy(path, os.path.join(best_dir, os.path.basename(path)), overwrite=True)
    with tf.io.gfile.GFile(os.path.join(best_dir, "checkpoint"), "w") as stream:
        stream.write(f'model_checkpoint_path: "{basename}"\nall_model_checkpoint_paths: "{basename}"\n')
    config_path = os.path.join(train_dir or os.path.dirname(checkpoint_prefix), ssd_eval.TRAINING_CONFIG)
    if tf.io.gfile.exists(config_path):
        tf.io.gfile.copy(config_path, os.path.join(best_dir, ssd_eval.TRAINING_CONFIG), overwrite=True)
    with tf.io.gfile.GFile(best_path, "w") as stream:
        stream.write(json.dumps({**record, "metric": metric}, indent=2, allow_nan=False))
    logging.info("New best checkpoint by %s (%.4f): copied %s to %s", metric, _metric(record, metric),
                 checkpoint_prefix, best_dir)
    return True


def evaluate_checkpoint(evaluation, checkpoint_prefix, eval_dir, writer, opts, train_dir=None, out=None):
    out = out or sys.stdout
    # Free for the checkpoint load_model_source already read: checkpoint_integrity remembers sound ones.
    checkpoint_integrity.verify_checkpoint(checkpoint_prefix, "evaluate another checkpoint")
    result, coco, used_ema = evaluation.run(checkpoint_prefix)
    global_step = ssd_eval.checkpoint_global_step(checkpoint_prefix)
    print(f"\n{checkpoint_prefix} (global step {global_step}, {'EMA' if used_ema else 'raw'} weights) on "
          f"{evaluation.spec.name}/{evaluation.spec.split_name}: {result.num_images} images", file=out)
    print(summaries.format_table(result, coco), file=out)
    out.flush()
    summaries.write_summaries(writer, global_step, result, coco)
    record = summaries.metrics_record(global_step, result, coco, checkpoint_path=checkpoint_prefix)
    record["moving_averages"] = used_ema
    summaries.append_metrics_jsonl(os.path.join(eval_dir, METRICS_FILE), record)
    if opts.keep_best:
        keep_if_best(eval_dir, checkpoint_prefix, record, opts.best_metric, train_dir)
    return record


def evaluate(opts, out=None):
    """Runs the evaluation ``opts`` describe; returns the metrics records written (one per checkpoint)."""
    if opts.wait_for_checkpoints and not tf.io.gfile.isdir(opts.checkpoint_path):
        raise ValueError(f"--wait_for_checkpoints needs a training directory, got {opts.checkpoint_path}")
    validate_options(opts)
    if opts.wait_for_checkpoints:
        prefixes = tf.train.checkpoints_iterator(opts.checkpoint_path, min_interval_secs=opts.eval_interval_secs,
                                                 timeout=opts.timeout)
        first = next(prefixes, None)
        if first is None:
            logging.info("No checkpoint appeared in %s within %.0f s", opts.checkpoint_path, opts.timeout)
            return []
        source = ssd_eval.load_model_source(first)
        pending = [first]
    else:
        source = ssd_eval.load_model_source(opts.checkpoint_path)
        prefixes, pending = iter(()), [source.checkpoint_prefix]
    evaluation = Evaluation(opts, source)
    eval_dir = default_eval_dir(opts, source)
    tf.io.gfile.makedirs(eval_dir)
    records = []
    # A restarted follower goes on where it stopped: what metrics.jsonl has is not evaluated again.
    done = evaluated_checkpoints(eval_dir) if opts.wait_for_checkpoints else set()
    writer = tf1.summary.FileWriter(eval_dir)
    try:
        for prefix in _chain(pending, prefixes):
            if prefix in done:
                logging.info("Skipping %s: already in %s", prefix, os.path.join(eval_dir, METRICS_FILE))
                continue
            try:
                records.append(evaluate_checkpoint(evaluation, prefix, eval_dir, writer, opts, source.train_dir, out))
            except tf.errors.NotFoundError as err:
                if not opts.wait_for_checkpoints:
                    raise
                # Training may delete an old checkpoint (max_to_keep) before its turn comes.
                logging.warning("Skipping %s, which disappeared: %s", prefix, err.message.splitlines()[0])
            except checkpoint_integrity.CorruptCheckpointError as err:
                if not opts.wait_for_checkpoints:
                    raise
                # A training run killed during a write leaves a damaged checkpoint; the next one will do.
                logging.warning("Skipping %s", err)
    finally:
        writer.close()
    logging.info("Evaluation results in %s (%s)", eval_dir, METRICS_FILE)
    return records


def evaluated_checkpoints(eval_dir):
    """The checkpoint prefixes ``<eval_dir>/metrics.jsonl`` has a record of."""
    path = os.path.join(eval_dir, METRICS_FILE)
    if not tf.io.gfile.exists(path):
        return set()
    return {record.get("checkpoint_path") for record in summaries.read_metrics_jsonl(path)}


def _chain(first, rest):
    yield from first
    yield from rest


OPTION_RULES = {
    "timeout": command_line.positive(), "eval_interval_secs": command_line.non_negative(),
    "batch_size": command_line.positive_int(), "num_preprocessing_threads": command_line.positive_int(),
    "max_num_images": command_line.positive_int(optional=True),
    "matching_iou": command_line.unit_interval(low_inclusive=False),
    "progress_every_secs": command_line.positive(),
    "gpu_memory_fraction": command_line.unit_interval(low_inclusive=False),
    **ssd_eval.POST_PROCESSING_RULES,
}


def validate_options(opts):
    """Raises command_line.UsageError naming every flag with a value evaluation cannot use."""
    command_line.check_options(opts, OPTION_RULES, [command_line.image_size_problem(opts.image_size)])


def main(argv=None):
    return command_line.run_graph_command(define_flags(flags.FlagValues()), argv, __doc__, evaluate,
                                          [(dataset_factory.DatasetError, command_line.EXIT_USAGE, None)])


if __name__ == "__main__":
    sys.exit(main())
