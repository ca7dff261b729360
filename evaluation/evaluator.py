"""The evaluator as a library: one pass over a dataset split, the metrics, and what they are written to.

Used by ``eval_ssd_network.py`` (a checkpoint, or each new checkpoint of a training directory) and by
the validation inside a training run (:mod:`training.validation`), so that both produce the same
numbers, the same TensorBoard tags and the same ``metrics.jsonl`` lines.

One pass over the split: evaluation preprocessing, network, post-processing (decode, per-class NMS)
in the graph (:func:`eval_input_dataset`, :func:`build_eval_graph`); the boxes are mapped back to
original image pixels and matched to the ground truth per class on the host (:func:`add_batch`,
:class:`evaluation.detection_metrics.DetectionEvaluator`, VOC ``difficult`` boxes ignored);
:func:`compute_results` adds the COCO numbers. :func:`write_results` writes the TensorBoard
summaries and appends the ``metrics.jsonl`` line; :func:`keep_if_best` copies a checkpoint into
``best/`` when it beats the best so far (:func:`write_best_record` writes ``best.json``);
:func:`write_pictures` draws the first images' detections beside their ground truth for TensorBoard;
:meth:`Evaluation.write_detections` writes the detections as a COCO results file (:mod:`evaluation.coco_results`).
"""

import json
import math
import os
import sys

from absl import logging
import numpy as np
import tensorflow as tf

import command_line
from datasets import dataset_factory, sample_data
from deployment import checkpoint_integrity, devices
from evaluation import coco_results, detection_metrics, progress as progress_lib, ssd_eval, summaries
from preprocessing import ssd_vgg_preprocessing
from tf_compat import tf1

METRICS_FILE = "metrics.jsonl"
BEST_DIR = "best"
BEST_RECORD = "best.json"
BEST_METRICS = summaries.BEST_METRICS
VOC_BOX_CONVENTIONS = ("devkit", "continuous")

OPTION_RULES = {
    "timeout": command_line.positive(), "eval_interval_secs": command_line.non_negative(),
    "batch_size": command_line.positive_int(), "num_preprocessing_threads": command_line.positive_int(),
    "max_num_images": command_line.positive_int(optional=True),
    "matching_iou": command_line.unit_interval(low_inclusive=False),
    "progress_every_secs": command_line.positive(),
    "num_visualized_images": command_line.non_negative_int(),
    "gpu_memory_fraction": command_line.unit_interval(low_inclusive=False),
    **ssd_eval.POST_PROCESSING_RULES,
}


def validate_options(opts):
    """Raises command_line.UsageError naming every flag with a value evaluation cannot use."""
    command_line.check_options(opts, OPTION_RULES, [command_line.image_size_problem(opts.image_size),
                                                     coco_results.detections_path_problem(detections_file_of(opts))])


def detections_file_of(opts):
    """The --detections_file (None for callers whose options have none, e.g. a training run's validation)."""
    return getattr(opts, "detections_file", None)


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


# ----------------------------------------------------------------------------- the graph


def eval_input_dataset(spec, out_shape, resize_mode, batch_size, num_threads, max_num_images=None, more=None):
    """Batches of the split in file order, preprocessed for evaluation: dicts of image, info (see
    :func:`preprocessing.ssd_vgg_preprocessing.preprocess_for_eval`), the ground truth in relative
    coordinates of the original image (gt_boxes, gt_labels, gt_difficult, num_objects), filename and
    source_id. ``more(labels, boxes)``, given the labels and the boxes relative to the network input,
    returns further per-image entries (e.g. the loss targets of a validation)."""

    def prepare(example):
        image, labels, boxes, _, info = ssd_vgg_preprocessing.preprocess_for_eval(
            example["image"], example["labels"], example["boxes"], example["difficult"], out_shape,
            resize_mode=resize_mode)
        prepared = {"image": image, "info": info, "gt_boxes": example["boxes"], "gt_labels": example["labels"],
                    "gt_difficult": example["difficult"], "num_objects": tf.size(example["labels"]),
                    "filename": example["filename"], "source_id": example["source_id"]}
        if more is not None:
            prepared.update(more(labels, boxes))
        return prepared

    dataset = dataset_factory.build_dataset(spec, is_training=False, num_parallel_calls=num_threads)
    if max_num_images:
        dataset = dataset.take(max_num_images)
    dataset = dataset.map(prepare, num_parallel_calls=num_threads, deterministic=True)
    return dataset.padded_batch(batch_size).prefetch(2)


def post_processing_of(opts):
    return ssd_eval.PostProcessing(opts.select_threshold, opts.nms_threshold, opts.top_k, opts.keep_top_k)


def build_eval_graph(net, spec, opts):
    """Input pipeline over the split and the detection graph; returns (iterator, fetches)."""
    with tf1.device("/cpu:0"), tf.name_scope("eval_input"):
        dataset = eval_input_dataset(spec, net.params.img_shape, opts.resize_mode, opts.batch_size,
                                     opts.num_preprocessing_threads, opts.max_num_images)
        iterator = tf1.data.make_initializable_iterator(dataset)
        batch = iterator.get_next()
    detections = ssd_eval.detections_in_pixels(net, batch["image"], batch["info"], post_processing_of(opts))
    return iterator, fetches_of(batch, detections)


def fetches_of(batch, detections):
    """What :func:`add_batch` reads of a batch: its detections and everything but the images."""
    return {"detections": detections, **{k: v for k, v in batch.items() if k != "image"}}


# ----------------------------------------------------------------------------- the host side


def new_detection_evaluator(num_classes, labels, matching_iou, voc_box_convention):
    """A DetectionEvaluator for ``num_classes`` (background included) named by ``labels`` ({id: name})."""
    return detection_metrics.DetectionEvaluator(
        num_classes - 1, {i: n for i, n in labels.items() if i}, iou_threshold=matching_iou,
        pixel_inclusive=voc_box_convention == "devkit")


def _image_id(filename, source_id, index, seen):
    name = (filename or source_id or b"").decode("utf-8", "replace") or f"image_{index}"
    if name in seen:
        name = f"{name}#{index}"
    seen.add(name)
    return name


def add_batch(evaluator, values, seen, first_index, source_ids=None):
    """Adds one fetched batch to the evaluator (ground truth scaled from relative to pixels); appends each
    image's source_id to ``source_ids`` (a list, if given) in the order the images were added."""
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
        if source_ids is not None:
            source_ids.append(values["source_id"][i])
    return count


def run_pass(session, fetches, evaluator, progress, on_batch=None, source_ids=None):
    """Runs ``fetches`` until the (initialised) input is exhausted, adding each batch to ``evaluator``;
    ``on_batch(values)`` sees every fetched batch too; ``source_ids`` (a list) gets the images' source_ids.
    Returns the number of images."""
    seen = set()
    while True:
        try:
            values = session.run(fetches)
        except tf.errors.OutOfRangeError:
            break
        if on_batch is not None:
            on_batch(values)
        progress.update(add_batch(evaluator, values, seen, progress.done, source_ids))
    progress.finish()
    return progress.done


def compute_results(evaluator, with_coco=True):
    """(EvaluationResult, CocoMetrics or None): the VOC metrics and, with pycocotools, the COCO ones."""
    result = evaluator.compute()
    coco = None
    if with_coco:
        try:
            from evaluation import coco_metrics

            coco = coco_metrics.compute_coco_metrics(evaluator)
        except ImportError as err:
            logging.warning("%s", err)
    return result, coco


def write_results(eval_dir, writer, global_step, result, coco, checkpoint_path, used_ema, more=None):
    """TensorBoard summaries (``writer``) and the ``<eval_dir>/metrics.jsonl`` line; returns the record.
    ``more``: further {name: number} fields, each also a scalar ``eval/<name>``."""
    summary = summaries.evaluation_summary(result, coco)
    for name, value in (more or {}).items():
        summary.value.add(tag=f"eval/{name}", simple_value=float(value))
    writer.add_summary(summary, int(global_step))
    writer.flush()
    record = summaries.metrics_record(global_step, result, coco, checkpoint_path=checkpoint_path)
    record["moving_averages"] = used_ema
    record.update(more or {})
    summaries.append_metrics_jsonl(os.path.join(eval_dir, METRICS_FILE), record)
    return record


# ----------------------------------------------------------------------------- pictures

# The least score of a detection drawn in the pictures (the metrics use every detection above --select_threshold).
PICTURE_SCORE_THRESHOLD = 0.5


class FirstImages:
    """The detections and ground truth (original pixels) of the first ``max_images`` images of a pass:
    give :meth:`add_batch` to :func:`run_pass` as ``on_batch``."""

    def __init__(self, max_images):
        self.max_images = int(max_images or 0)
        self.detections = []
        self.ground_truth = []

    def add_batch(self, values):
        detections = values["detections"]
        for i in range(len(values["num_objects"])):
            if len(self.detections) >= self.max_images:
                return
            height, width = (float(v) for v in values["info"]["original_shape"][i])
            scale = np.array([height, width, height, width])
            count, found = int(values["num_objects"][i]), int(detections["num_detections"][i])
            self.ground_truth.append({"boxes": values["gt_boxes"][i][:count] * scale,
                                      "labels": values["gt_labels"][i][:count],
                                      "difficult": values["gt_difficult"][i][:count]})
            self.detections.append({"boxes": detections["boxes"][i][:found],
                                    "scores": detections["scores"][i][:found],
                                    "classes": detections["classes"][i][:found]})


def read_first_images(spec, count):
    """The first ``count`` images of the split (uint8 [H, W, 3], original pixels), in the order of a pass."""
    if not count:
        return []
    images = []
    with tf.Graph().as_default():
        dataset = dataset_factory.build_dataset(spec, is_training=False).take(count)
        image = tf1.data.make_one_shot_iterator(dataset).get_next()["image"]
        with tf1.Session() as session:
            while True:
                try:
                    images.append(np.asarray(session.run(image), np.uint8))
                except tf.errors.OutOfRangeError:
                    return images


def write_pictures(writer, global_step, images, first, labels, tag="eval/detections",
                   score_threshold=PICTURE_SCORE_THRESHOLD):
    """Each of ``first``'s images (:class:`FirstImages`) with its detections beside its ground truth, as image
    summaries ``<tag>/<i>`` at ``global_step`` (:mod:`evaluation.detection_images`)."""
    if not first.detections:
        return
    from evaluation import detection_images

    count = len(first.detections)
    pictures = detection_images.comparison_images(images[:count], first.detections, first.ground_truth, labels,
                                                  score_threshold, count)
    writer.add_summary(detection_images.image_summary(tag, pictures), int(global_step))
    writer.flush()


# ----------------------------------------------------------------------------- best checkpoint


def metric_value(record, name):
    """``record[name]`` as a float; -inf when undefined (so that it never counts as better)."""
    value = record.get(name)
    return -math.inf if value is None else float(value)


def read_best_record(best_dir):
    """``<best_dir>/best.json`` as a dict, or None (also, with a warning, when it cannot be read: the next
    best replaces it)."""
    path = os.path.join(best_dir, BEST_RECORD)
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path) as stream:
            record = json.loads(stream.read())
    except (OSError, ValueError, tf.errors.OpError) as error:
        logging.warning("%s is unreadable (%s): the next best checkpoint replaces it", path, error)
        return None
    return record if isinstance(record, dict) else None


def write_best_record(best_dir, record, metric, train_dir):
    """``<best_dir>/best.json`` (the record, with ``metric`` and ``value``) and a copy of the training
    directory's ``training_config.json`` (so the evaluator, export and detect rebuild the network)."""
    config_path = os.path.join(train_dir, ssd_eval.TRAINING_CONFIG)
    if tf.io.gfile.exists(config_path):
        tf.io.gfile.copy(config_path, os.path.join(best_dir, ssd_eval.TRAINING_CONFIG), overwrite=True)
    document = {**record, "metric": metric, "value": record.get(metric)}
    path = os.path.join(best_dir, BEST_RECORD)
    # Written aside and renamed: a run killed during the write leaves the previous best.json whole.
    with tf.io.gfile.GFile(path + ".tmp", "w") as stream:
        stream.write(json.dumps(document, indent=2, allow_nan=False))
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def keep_if_best(eval_dir, checkpoint_prefix, record, metric, train_dir=None):
    """Copies the checkpoint into <eval_dir>/best/ when ``record[metric]`` beats the best so far."""
    best_dir = os.path.join(eval_dir, BEST_DIR)
    previous = read_best_record(best_dir)
    if previous is not None and metric_value(record, metric) <= metric_value(previous, metric):
        return False
    if tf.io.gfile.exists(best_dir):
        tf.io.gfile.rmtree(best_dir)
    tf.io.gfile.makedirs(best_dir)
    basename = os.path.basename(checkpoint_prefix)
    for path in tf.io.gfile.glob(checkpoint_prefix + ".*"):
        tf.io.gfile.copy(path, os.path.join(best_dir, os.path.basename(path)), overwrite=True)
    with tf.io.gfile.GFile(os.path.join(best_dir, "checkpoint"), "w") as stream:
        stream.write(f'model_checkpoint_path: "{basename}"\nall_model_checkpoint_paths: "{basename}"\n')
    write_best_record(best_dir, record, metric, train_dir or os.path.dirname(checkpoint_prefix))
    logging.info("New best checkpoint by %s (%.4f): copied %s to %s", metric, metric_value(record, metric),
                 checkpoint_prefix, best_dir)
    return True


# ----------------------------------------------------------------------------- checkpoints


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
        self.first_images = FirstImages(0)  # of the last run, for the pictures
        self.coco_roots = coco_results.coco_root_labels(self.spec.info)
        self.last_evaluator, self.last_source_ids = None, []  # of the last run, for --detections_file
        self._original_images = None

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
        evaluator = new_detection_evaluator(self.spec.num_classes, self.labels, opts.matching_iou,
                                            opts.voc_box_convention)
        config = devices.session_config(opts.gpu_memory_fraction, opts.allow_growth)
        logging.info("Evaluating %s (%s weights) on %s/%s (%d images)", checkpoint_prefix,
                     "EMA" if used_ema else "raw", self.spec.name, self.spec.split_name, self.num_images)
        progress = progress_lib.Progress("eval", self.num_images, opts.progress_every_secs)
        self.first_images = FirstImages(opts.num_visualized_images)
        self.last_evaluator, self.last_source_ids = evaluator, []
        with tf1.Session(graph=self.graph, config=config) as session:
            saver.restore(session, checkpoint_prefix)
            session.run(self.iterator.initializer)
            run_pass(session, self.fetches, evaluator, progress, self.first_images.add_batch, self.last_source_ids)
        return (*compute_results(evaluator, not opts.no_coco), used_ema)

    def write_detections(self, path):
        """The last run's detections as a COCO results file at ``path`` (:mod:`evaluation.coco_results`);
        returns how many were written."""
        detections = coco_results.results_of(self.last_evaluator, self.last_source_ids, self.coco_roots,
                                             self.spec.coco_category_ids)
        coco_results.write_results(path, detections)
        logging.info("Wrote %d detections of %d images to %s", len(detections), len(self.last_source_ids), path)
        return len(detections)

    def original_images(self):
        """The original pixels of the pictured images (read once: the split does not change)."""
        if self._original_images is None:
            self._original_images = read_first_images(self.spec, min(self.opts.num_visualized_images,
                                                                     self.num_images))
        return self._original_images


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
    record = write_results(eval_dir, writer, global_step, result, coco, checkpoint_prefix, used_ema)
    if detections_file_of(opts):
        evaluation.write_detections(coco_results.path_for_step(detections_file_of(opts), global_step))
    write_pictures(writer, global_step, evaluation.original_images(), evaluation.first_images, evaluation.labels)
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
