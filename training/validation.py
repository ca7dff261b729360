"""Validation inside a training run: the evaluator's metrics on a held-out split, the best checkpoint, early stopping.

The trainer (:func:`training.trainer.train`) builds, on the chief only and before the session starts:

* :func:`build_validation_graph`: in the training graph, an input pipeline over the validation split
  (the evaluator's own, :func:`evaluation.evaluator.eval_input_dataset`) and one network
  (``is_training=False``, through :func:`nets.nets_factory.network_fn_of`, on the first tower's
  device: once, however many towers train) that shares the trained variables. With
  ``--moving_average_decay`` the network reads the moving averages instead, through a custom
  getter that hands it each weight's average variable (so nothing is assigned or restored around a
  validation, and the weights that train are never touched). Besides the detections it computes the
  multibox loss of the validation images (added to no collection: it is measured, not trained).
* :class:`ValidationHook`: an after-step hook of :func:`deployment.train_op.make_train_step_fn`.
  Every ``--validate_every_n_steps`` (or epochs) and at the last step it runs one pass over the split
  in the training session and scores it with the evaluator's code (:func:`evaluation.evaluator.run_pass`,
  :func:`~evaluation.evaluator.compute_results`), so the numbers are those ``eval_ssd_network.py``
  prints for a checkpoint of the same weights. It writes the evaluator's TensorBoard tags and
  ``metrics.jsonl`` line to ``<train_dir>/eval_<split>/`` (plus the validation loss and pictures of the
  first ``--num_visualized_images`` images' detections beside their ground truth), logs one line,
  saves the weights into ``<train_dir>/best/`` (a full checkpoint, with ``best.json``) when
  ``--best_metric`` improves, and asks the run to stop when :class:`EarlyStopping` says so (a resumed
  run first replays the earlier run's validations from ``metrics.jsonl``, :func:`resume_early_stopping`,
  so that its patience goes on counting where the stopped run was). With
  ``--restore_best_at_end``, when the run stops (its last step, early stopping or the time limit:
  the hook's ``at_end``) the best weights are loaded (the model variables and their averages; the
  optimizer state and the global step stay) before the trainer's final save.
"""

import dataclasses
import os
import time

from absl import logging
import tensorflow as tf

from deployment import learning_rate as lr_lib
from datasets import dataset_factory
from evaluation import evaluator as evaluator_lib, progress as progress_lib, ssd_eval, summaries as evaluation_summaries
from nets import matching, multibox_loss, nets_factory
from tf_compat import slim, tf1

# The split validated when --validation_split is not given, if the dataset has it.
DEFAULT_VALIDATION_SPLIT = "test"
# Validation interval when neither --validate_every_n_steps nor --validate_every_n_epochs is given.
DEFAULT_VALIDATE_EVERY_N_EPOCHS = 1.0
BEST_CHECKPOINT_NAME = "model.ckpt"


# ----------------------------------------------------------------------------- what and when


def resolve_validation_split(requested, dataset_splits):
    """(split name or None, the start-up line saying why). ``requested``: --validation_split (None: the
    default, 'test' when the dataset has it; '': off); ``dataset_splits``: the dataset's split names."""
    if requested == "":
        return None, "Validation off (--validation_split='')"
    if requested is None:
        if DEFAULT_VALIDATION_SPLIT in dataset_splits:
            return DEFAULT_VALIDATION_SPLIT, (
                f"Validating on the dataset's '{DEFAULT_VALIDATION_SPLIT}' split (the default; --validation_split='' "
                "switches it off)")
        return None, (f"Validation off: the dataset has no '{DEFAULT_VALIDATION_SPLIT}' split (it has "
                      f"{sorted(dataset_splits)}); --validation_split=<split> names one")
    if requested not in dataset_splits:
        raise ValueError(f"--validation_split={requested}: the dataset has no such split (it has "
                         f"{sorted(dataset_splits)})")
    return requested, f"Validating on the '{requested}' split (--validation_split)"


def validation_interval(every_n_steps, every_n_epochs, num_samples, images_per_step):
    """Global steps between validations: --validate_every_n_steps, or --validate_every_n_epochs of the
    training split (``num_samples`` images) at ``images_per_step``, default one epoch; at least 1."""
    if every_n_steps is not None and every_n_epochs is not None:
        raise ValueError("give --validate_every_n_steps or --validate_every_n_epochs, not both")
    if every_n_steps is not None:
        return int(every_n_steps)
    epochs = DEFAULT_VALIDATE_EVERY_N_EPOCHS if every_n_epochs is None else every_n_epochs
    return max(1, int(round(epochs * lr_lib.steps_per_epoch(num_samples, images_per_step))))


def validation_due(global_step, previous_step, every_n_steps, last_step=None):
    """Whether the step that just ended at ``global_step`` (the one before ended at ``previous_step``, None
    for a run's first) validates: when the global step reached or passed a multiple of ``every_n_steps`` (in
    an asynchronous cluster other workers move it too, so the chief may never see the multiple itself), and
    at ``last_step``."""
    if last_step is not None and global_step >= last_step:
        return True
    if previous_step is None:
        return global_step % every_n_steps == 0
    return global_step // every_n_steps > previous_step // every_n_steps


class EarlyStopping:
    """Stops after ``patience`` validations without an improvement of more than ``min_delta`` over the
    best value so far (higher is better; Keras' rule: ``value > best + min_delta``). An undefined value
    (None, NaN) never improves. ``patience`` 0 or None: never stops. ``best``: a value to beat from
    an earlier run (a resumed run's best checkpoint)."""

    def __init__(self, patience, min_delta=0.0, best=None):
        if min_delta < 0:
            raise ValueError(f"--early_stopping_min_delta must be >= 0, got {min_delta}")
        self.patience = patience or 0
        self.min_delta = float(min_delta)
        self.best = best
        self.without_improvement = 0

    def update(self, value):
        """Takes one validation's value; returns True when it is an improvement."""
        defined = value is not None and value == value
        if defined and (self.best is None or value > self.best + self.min_delta):
            self.best = float(value)
            self.without_improvement = 0
            return True
        self.without_improvement += 1
        return False

    @property
    def should_stop(self):
        return bool(self.patience) and self.without_improvement >= self.patience

    def reason(self, metric):
        return (f"early stopping: {self.without_improvement} validations without an improvement of {metric} by "
                f"more than {self.min_delta:g} (best {self.best if self.best is None else round(self.best, 6)}, "
                f"--early_stopping_patience={self.patience})")


def resume_early_stopping(patience, min_delta, records, metric, before_step, best_so_far=None):
    """The EarlyStopping state of a run resumed at ``before_step``: the earlier run's in-run validations
    (``metrics.jsonl`` records that have a ``validation_loss``; the evaluator command's records in the
    same file have none) at global steps before it, replayed oldest first. Validations of later steps
    are left out: those steps are trained again and validated anew. ``best_so_far`` (best.json's value)
    still has to be beaten when it is higher than the replayed best (a best saved after the checkpoint
    the run resumes from)."""
    rule = EarlyStopping(patience, min_delta)
    for record in records:
        step = record.get("global_step")
        if "validation_loss" in record and isinstance(step, int) and step < before_step:
            rule.update(record.get(metric))
    if best_so_far is not None and best_so_far == best_so_far and (rule.best is None or best_so_far > rule.best):
        rule.best = float(best_so_far)
    return rule


# ----------------------------------------------------------------------------- the graph


@dataclasses.dataclass(frozen=True)
class ValidationGraph:
    """The validation's part of the training graph."""

    iterator: object  # initialised before each pass
    fetches: dict  # what evaluator.add_batch reads, plus loss_sum and positives
    used_moving_averages: bool


def moving_average_getter(moving_average):
    """A variable-scope custom getter returning each variable's moving average (the variable itself when it
    has none), so that a network built under it computes with the averaged weights."""

    # TensorFlow calls a custom getter with keywords, the next getter as ``getter``.
    def averaged(getter, *args, **kwargs):
        variable = getter(*args, **kwargs)
        average = moving_average.average(variable)
        return variable if average is None else average

    return averaged


def build_validation_graph(net, spec, *, batch_size, resize_mode="warp", post=ssd_eval.PostProcessing(),
                           data_format="NHWC", moving_average=None, match_threshold=0.5, negative_threshold=None,
                           negative_ratio=3.0, loss_alpha=1.0, label_smoothing=0.0, num_threads=4,
                           inputs_device="/cpu:0", network_device=None):
    """Builds the validation of ``net`` on the split ``spec`` in the default graph (which holds the trained
    variables); returns a :class:`ValidationGraph`. ``moving_average``: the training's
    ``tf.train.ExponentialMovingAverage`` (its averages are validated), or None (the weights)."""
    out_shape = net.params.img_shape

    def loss_targets(labels, boxes):
        return matching.targets_to_dict(net.bboxes_encode(labels, boxes, match_threshold=match_threshold,
                                                          negative_threshold=negative_threshold))

    with tf1.device(inputs_device), tf.name_scope("validation_input"):
        dataset = evaluator_lib.eval_input_dataset(spec, out_shape, resize_mode, batch_size, num_threads,
                                                   more=loss_targets)
        iterator = tf1.data.make_initializable_iterator(dataset)
        batch = iterator.get_next()
    custom_getter = moving_average_getter(moving_average) if moving_average is not None else None
    with tf1.device(network_device), tf.name_scope("validation"), \
            tf1.variable_scope(tf1.get_variable_scope(), reuse=True, custom_getter=custom_getter):
        network_fn = nets_factory.network_fn_of(net, is_training=False, data_format=data_format)
        predictions, localisations, logits, _ = network_fn(batch["image"])
        detections = ssd_eval.detections_of_outputs(net, predictions, localisations, batch["info"], post)
        targets = matching.targets_from_dict(batch)
        # Normalised by 1: the sums over the batch, divided by the positives of the whole split on the host.
        terms = multibox_loss.multibox_loss(logits, localisations, targets, negative_ratio=negative_ratio,
                                            alpha=loss_alpha, label_smoothing=label_smoothing, normaliser=1.0,
                                            loss_collection=None)
        loss_sum = tf.add_n(list(terms))
        positives = multibox_loss.count_positives(targets)
    shown = {k: v for k, v in batch.items() if k not in matching.TARGET_KEYS}
    fetches = {**evaluator_lib.fetches_of(shown, detections), "loss_sum": loss_sum, "positives": positives}
    return ValidationGraph(iterator, fetches, moving_average is not None)


# ----------------------------------------------------------------------------- the hook


@dataclasses.dataclass(frozen=True)
class ValidationSettings:
    """What a validation measures and keeps (plain values from the training config)."""

    split_name: str
    every_n_steps: int
    last_step: int | None  # the run's last global step, validated too (None: until interrupted)
    best_metric: str = "voc07_map"
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float = 0.0
    restore_best_at_end: bool = False
    num_visualized_images: int = 0
    matching_iou: float = 0.5
    voc_box_convention: str = "devkit"
    with_coco: bool = True


class ValidationHook:
    """``hook(session, global_step) -> None or the reason to stop``: see the module docstring."""

    def __init__(self, graph, settings, spec, labels, train_dir):
        self.graph = graph
        self.settings = settings
        self.spec = spec
        self.labels = labels
        self.train_dir = train_dir
        self.eval_dir = os.path.join(train_dir, f"eval_{settings.split_name}")
        self.best_dir = os.path.join(train_dir, evaluator_lib.BEST_DIR)
        previous = evaluator_lib.read_best_record(self.best_dir)
        self.best_record = previous
        previous_best = None if previous is None else evaluator_lib.metric_value(previous, settings.best_metric)
        self.early_stopping = EarlyStopping(settings.early_stopping_patience, settings.early_stopping_min_delta,
                                            None if previous_best in (None, float("-inf")) else previous_best)
        # Built now: the Supervisor finalises the graph before the first step.
        self.best_saver = tf1.train.Saver(max_to_keep=1, save_relative_paths=True,
                                          write_version=tf1.train.SaverDef.V2)
        self.weights_saver = tf1.train.Saver(_weights_and_averages(), save_relative_paths=True)
        self.writer = None
        self.original_images = None
        self.previous_step = None
        self.last_validated_step = None
        self.history_replayed = False

    def _replay_history(self, global_step):
        """Once, at the run's first step: the patience count of an earlier run in this train_dir."""
        self.history_replayed = True
        path = os.path.join(self.eval_dir, evaluator_lib.METRICS_FILE)
        if not self.settings.early_stopping_patience or not tf.io.gfile.exists(path):
            return
        try:
            records = evaluation_summaries.read_metrics_jsonl(path)
        except (OSError, ValueError) as error:
            logging.warning("Early stopping counts from this run only: %s", error)
            return
        rule = resume_early_stopping(self.settings.early_stopping_patience, self.settings.early_stopping_min_delta,
                                     records, self.settings.best_metric, global_step, self.early_stopping.best)
        if rule.without_improvement or rule.best != self.early_stopping.best:
            logging.info("Early stopping goes on from the earlier run: %d validations without an improvement of %s "
                         "(best %s), patience %d", rule.without_improvement, self.settings.best_metric,
                         _number(rule.best), rule.patience)
        self.early_stopping = rule

    def due(self, global_step):
        previous, self.previous_step = self.previous_step, global_step
        if global_step == self.last_validated_step:
            return False
        return validation_due(global_step, previous, self.settings.every_n_steps, self.settings.last_step)

    def __call__(self, session, global_step):
        if not self.history_replayed:
            self._replay_history(global_step)
        if not self.due(global_step):
            return None
        self._validate_and_keep(session, global_step)
        metric = self.settings.best_metric
        return self.early_stopping.reason(metric) if self.early_stopping.should_stop else None

    def at_end(self, session, global_step):
        """The run stops after this step, for whatever reason (its last step, early stopping, the time
        limit): the final weights are validated if they were not, then, with --restore_best_at_end,
        the best weights are loaded for the trainer's final save."""
        if not self.history_replayed:
            self._replay_history(global_step)
        if global_step != self.last_validated_step:
            self._validate_and_keep(session, global_step)
        if self.settings.restore_best_at_end:
            self.restore_best(session, global_step)

    def _validate_and_keep(self, session, global_step):
        record = self.validate(session, global_step)
        value = record.get(self.settings.best_metric)
        if self._beats_best(value):
            self._save_best(session, global_step, record)
        self.early_stopping.update(value)

    def validate(self, session, global_step):
        """One pass over the split with the current weights; writes and logs it; returns the metrics record."""
        start = time.time()
        evaluator = evaluator_lib.new_detection_evaluator(self.spec.num_classes, self.labels,
                                                          self.settings.matching_iou, self.settings.voc_box_convention)
        loss = {"sum": 0.0, "positives": 0.0}

        first_images = evaluator_lib.FirstImages(self.settings.num_visualized_images)

        def add_loss_and_pictures(values):
            loss["sum"] += float(values["loss_sum"])
            loss["positives"] += float(values["positives"])
            first_images.add_batch(values)

        # The evaluator's progress lines stay out of the training log: a validation logs one line.
        quiet = progress_lib.Progress("validation", self.spec.num_samples, log=lambda *args: None)
        session.run(self.graph.iterator.initializer)
        evaluator_lib.run_pass(session, self.graph.fetches, evaluator, quiet, add_loss_and_pictures)
        result, coco = evaluator_lib.compute_results(evaluator, self.settings.with_coco)
        # The multibox loss of the whole split as one batch: the sums over the batches by all their positives.
        validation_loss = loss["sum"] / max(loss["positives"], 1.0)
        if self.writer is None:
            self.writer = tf1.summary.FileWriter(self.eval_dir)
        record = evaluator_lib.write_results(self.eval_dir, self.writer, global_step, result, coco, None,
                                             self.graph.used_moving_averages, {"validation_loss": validation_loss})
        if first_images.detections:
            if self.original_images is None:  # read once: the split does not change
                self.original_images = evaluator_lib.read_first_images(self.spec, len(first_images.detections))
            evaluator_lib.write_pictures(self.writer, global_step, self.original_images, first_images, self.labels)
        seconds = time.time() - start
        per_class = ", ".join(f"{cls.name} {_number(cls.voc07_ap)}" for cls in result.per_class)
        logging.info("Validation at global step %d on %s (%d images, %s weights): %s %s, VOC07 AP by class: %s; "
                     "validation loss %.4f; %.1f s", global_step, self.settings.split_name, result.num_images,
                     "EMA" if self.graph.used_moving_averages else "raw", self.settings.best_metric,
                     _number(record.get(self.settings.best_metric)), per_class, validation_loss, seconds)
        self.last_validated_step = global_step
        return record

    def _beats_best(self, value):
        if value is None or value != value:
            return False
        previous = self.best_record
        return previous is None or value > evaluator_lib.metric_value(previous, self.settings.best_metric)

    def _save_best(self, session, global_step, record):
        """The validated weights (the whole training state, as the trainer saves it) into best/."""
        tf.io.gfile.makedirs(self.best_dir)
        prefix = self.best_saver.save(session, os.path.join(self.best_dir, BEST_CHECKPOINT_NAME),
                                      global_step=global_step, write_meta_graph=False)
        record = {**record, "checkpoint_path": prefix}
        evaluator_lib.write_best_record(self.best_dir, record, self.settings.best_metric, self.train_dir)
        self.best_record = record
        # Only once best.json names the new checkpoint: a run killed in between keeps a consistent best/.
        kept = os.path.basename(prefix)
        for path in tf.io.gfile.glob(os.path.join(self.best_dir, BEST_CHECKPOINT_NAME + "-*")):
            if not os.path.basename(path).startswith(kept + "."):
                tf.io.gfile.remove(path)  # an earlier best, maybe of an earlier run
        logging.info("New best by %s (%s) at global step %d: saved in %s", self.settings.best_metric,
                     _number(record.get(self.settings.best_metric)), global_step, self.best_dir)

    def restore_best(self, session, global_step):
        """Loads the best checkpoint's weights (and averages) so that the final checkpoint holds them."""
        if self.best_record is None:
            logging.info("--restore_best_at_end: no best checkpoint yet; the final checkpoint keeps the last "
                         "weights")
            return
        best_step = self.best_record.get("global_step")
        prefix = tf.train.latest_checkpoint(self.best_dir)
        if best_step == global_step or prefix is None:
            logging.info("--restore_best_at_end: the last weights (global step %d) are the best", global_step)
            return
        self.weights_saver.restore(session, prefix)
        logging.info("--restore_best_at_end: the final checkpoint holds the best weights, of global step %s "
                     "(%s %s), restored from %s", best_step, self.settings.best_metric,
                     _number(self.best_record.get(self.settings.best_metric)), prefix)


def _weights_and_averages():
    """The model variables and, when training keeps them, their moving averages (what best weights are)."""
    variables = list(slim.get_model_variables())
    names = {variable.op.name for variable in variables}
    averages = [v for v in tf1.global_variables()
                if v.op.name.endswith("/" + ssd_eval.EMA_SUFFIX) and v.op.name.rsplit("/", 1)[0] in names]
    return variables + averages


def _number(value):
    return "-" if value is None or value != value else f"{value:.4f}"


def describe(settings, num_images):
    """The start-up line's tail: how often and what is kept."""
    parts = [f"every {settings.every_n_steps} global steps ({num_images} images)", f"best by {settings.best_metric} "
             "in best/"]
    if settings.early_stopping_patience:
        parts.append(f"early stopping after {settings.early_stopping_patience} validations without an "
                     f"improvement > {settings.early_stopping_min_delta:g}")
    if settings.restore_best_at_end:
        parts.append("the final checkpoint holds the best weights")
    return ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class ValidationPlan:
    """What the run validates, decided before any graph is built (a bad --validation_split fails then)."""

    spec: object  # the validation split's datasets.dataset_factory.DatasetSpec
    settings: ValidationSettings
    why: str  # the start-up line's reason


def plan_validation(config, train_spec, images_per_step, last_step):
    """The :class:`ValidationPlan` of the options, or None when validation is off (logged, with why)."""
    split, why = resolve_validation_split(config.validation_split, (train_spec.info or {}).get("splits", {}))
    if split is None:
        logging.info("%s", why)
        return None
    spec = dataset_factory.get_dataset(train_spec.name, split, train_spec.dataset_dir)
    settings = ValidationSettings(
        split_name=split,
        every_n_steps=validation_interval(config.validate_every_n_steps, config.validate_every_n_epochs,
                                          train_spec.num_samples, images_per_step),
        last_step=last_step, best_metric=config.best_metric,
        early_stopping_patience=config.early_stopping_patience,
        early_stopping_min_delta=config.early_stopping_min_delta, restore_best_at_end=config.restore_best_at_end,
        num_visualized_images=config.num_visualized_images)
    return ValidationPlan(spec, settings, why)


def validation_hook_for(plan, config, net, deploy_config, moving_average):
    """The trainer's :class:`ValidationHook` for ``plan`` (its graph built in the default graph)."""
    spec = plan.spec
    graph = build_validation_graph(
        net, spec, batch_size=config.batch_size, data_format=config.data_format, moving_average=moving_average,
        match_threshold=config.match_threshold, negative_threshold=config.negative_threshold,
        negative_ratio=config.negative_ratio, loss_alpha=config.loss_alpha, label_smoothing=config.label_smoothing,
        num_threads=config.num_preprocessing_threads, inputs_device=deploy_config.inputs_device(),
        network_device=deploy_config.clone_device(0))
    logging.info("%s: %s", plan.why, describe(plan.settings, spec.num_samples))
    return ValidationHook(graph, plan.settings, spec,
                          ssd_eval.labels_for(None, spec.num_classes, spec.labels_to_names), config.train_dir)
