"""The one schema of a training run: :class:`TrainingConfig` (every option) and :class:`TrainingRecord`
(``training_config.json``, what a run wrote about itself).

* Each field of :class:`TrainingConfig` carries its flag's help text and, for numbers, the
  :class:`command_line.Rule` of the values it allows. :func:`define_flags` generates the absl flags
  from the fields (name, type, default, help, enum choices), :meth:`TrainingConfig.from_flags` reads
  them back, :meth:`TrainingConfig.check` validates every field at once. Tests and benchmarks build a
  config directly: ``TrainingConfig(batch_size=2, image_size="96")``.
* :class:`TrainingRecord` is ``training_config.json``: the options, the network's parameters, the
  dataset (classes and names), the deployment and the training plan. The trainer writes it; a resumed
  run, evaluation, export, detection and the checkpoint tools read it back through
  :meth:`TrainingRecord.read` (files written by older runs, with fewer or more keys, still read).
"""

import dataclasses
import json
import os
import typing

from absl import flags
import tensorflow as tf

import command_line
from command_line import Rule, non_negative, non_negative_int, positive, positive_int, unit_interval
from deployment import checkpoint_init, cluster, devices, learning_rate as lr_lib, mixed_precision, optimizers
from evaluation import summaries as evaluation_summaries
from nets import nets_factory

CONFIG_FILE = "training_config.json"

# --batch_size when the flag is not given (training.plan.resolve_batch_size): on a GPU, and on a CPU, where
# SSD300 at batch 32 takes about a minute a step (docs: README, "The first run on a CPU").
DEFAULT_BATCH_SIZE = 32
CPU_DEFAULT_BATCH_SIZE = 4


def _option(default, help_text, rule=None, choices=None):
    metadata = {"help": help_text, "rule": rule, "choices": tuple(choices) if choices else None}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Every option of a training run (the flags of ``train_ssd_network.py``, one field each)."""

    # Directories and start-up.
    train_dir: str = _option("ckpt/fine_tuning",
                             "Training directory: checkpoints, events, the effective configuration.")
    checkpoint_path: str | None = _option(
        checkpoint_init.DEFAULT_CHECKPOINT_PATH,
        "Weights to start from (file prefix or directory) when --train_dir has no checkpoint. A path that does "
        "not exist is an error, except this default (then: scratch, with a warning).")
    checkpoint_model_scope: str | None = _option(
        None, "Scope of the model in the checkpoint when it differs from the network's, e.g. vgg_16 for an "
        "ImageNet VGG-16 checkpoint.")
    checkpoint_exclude_scopes: str | None = _option(
        None, "Comma-separated scopes not restored from --checkpoint_path.")
    trainable_scopes: str | None = _option(
        None, "Comma-separated scopes to train; the rest stay frozen. Default: all.")
    ignore_missing_vars: bool = _option(False, "Restore what --checkpoint_path has and leave the rest fresh.")
    freeze_conv1_conv2: str = _option(
        "auto", "Keep conv1_x and conv2_x fixed (no backward pass runs through them), the paper's recipe from "
        "ImageNet weights. auto: when training starts from an ImageNet VGG-16 checkpoint, and on resume as the "
        "run being resumed did.", choices=["auto", "true", "false"])

    # Dataset and input pipeline.
    dataset_dir: str | None = _option(
        None, "A converted dataset (tf_convert_data.py output). Default: the sample dataset.")
    dataset_name: str | None = _option(
        None, "Expected dataset name (e.g. pascalvoc_2007); default: what the dir holds.")
    dataset_split_name: str = _option("trainval", "Split to train on.")
    batch_size: int | None = _option(
        None, f"Images per clone per step (the global batch is batch_size x num_clones). Default: "
        f"{DEFAULT_BATCH_SIZE}, or {CPU_DEFAULT_BATCH_SIZE} when no GPU is visible (a CPU step at "
        f"{DEFAULT_BATCH_SIZE} takes about a minute and ~11 GiB with SSD300).", positive_int(optional=True))
    num_readers: int = _option(4, "Shards read in parallel.", positive_int())
    num_preprocessing_threads: int = _option(4, "Parallel calls of parsing and augmentation.", positive_int())
    shuffle_buffer_size: int = _option(2048, "Examples in the shuffle buffer.", positive_int())
    augmentation: str = _option("ssd", "Training augmentation: 'ssd' (the paper's recipe) or 'none' (resize only).",
                                choices=["ssd", "none"])
    zoom_out_max_ratio: float = _option(
        4.0, "--augmentation=ssd: the zoom-out stage places the image in a canvas up to this many times its size "
        "(the paper's 4); 1 switches zoom-out off (objects never get smaller than in the data).", Rule(low=1))
    encode_targets_in: str = _option(
        "input", "Where anchor matching runs: 'input' (CPU input pipeline, per image) or 'tower' (each clone, "
        "batched).", choices=["input", "tower"])
    seed: int = _option(0, "Seed of every random choice (data order, augmentation, initialisers, dropout).",
                        non_negative_int())

    # Network and loss.
    model_name: str = _option("ssd_300_vgg", f"Network: {', '.join(nets_factory.list_networks())}.")
    image_size: str | None = _option(None, "Network input 'H,W' or 'S' (default: the network's, 300 or 512).")
    data_format: str = _option("NHWC", "NHWC, or NCHW (GPU only).", choices=["NHWC", "NCHW"])
    weight_decay: float = _option(0.0005, "L2 weight decay.", non_negative())
    dropout_keep_prob: float = _option(
        1.0, "Keep probability of dropout after conv6/conv7 (the paper uses none).",
        unit_interval(low_inclusive=False))
    match_threshold: float = _option(0.5, "IoU from which an anchor is positive.", unit_interval(low_inclusive=False))
    negative_threshold: float | None = _option(
        None, "IoU below which an anchor may be a negative (default: match_threshold).",
        unit_interval(low_inclusive=False, optional=True))
    negative_ratio: float = _option(3.0, "Hard negatives mined per positive, per image.", non_negative())
    loss_alpha: float = _option(1.0, "Weight of the localisation loss.", non_negative())
    label_smoothing: float = _option(0.0, "Label smoothing of the classification loss.",
                                     unit_interval(high_inclusive=False))
    loss_normalization: str = _option(
        "step", "What the multibox loss is divided by: 'step', the positives of all clones' batches of the step "
        "(N clones x batch B train exactly as one tower on N*B images), or 'clone', each clone's own positives "
        "(SSD-Tensorflow's; what each worker does with --sync_replicas).", choices=["step", "clone"])

    # Optimisation.
    optimizer: str = _option(
        "adam", "Optimizer. Adam with the default rates follows the recipe in docs/accuracy.md; the paper's "
        "schedule is --optimizer=momentum --learning_rate=0.001 with piecewise decay and "
        "--new_layers_only_epochs=0.", choices=optimizers.OPTIMIZER_NAMES)
    learning_rate: float = _option(
        0.00005, "Learning rate of the whole network (after --new_layers_only_epochs, if any), before decay.",
        positive())
    new_layers_learning_rate: float = _option(
        0.001, "Learning rate while only SSD's new layers train (--new_layers_only_epochs).", positive())
    new_layers_only_epochs: float | None = _option(
        None, "Train only SSD's own layers (the VGG-16 base conv1..conv5 frozen: no backward pass through it) for "
        "this many epochs of the training split, at --new_layers_learning_rate; then the whole network (but "
        "what --freeze_conv1_conv2 keeps frozen) at --learning_rate, warmed up again over --warmup_steps. "
        "Default: 4 epochs when training starts from ImageNet VGG-16 weights, 0 otherwise; a resumed run keeps "
        "its own. Not with --unfreeze_at_step/--unfreeze_at_epoch (the same two phases, other layers first).",
        non_negative(optional=True))
    unfreeze_at_step: int | None = _option(
        None, "Train only --trainable_scopes (default: SSD's own layers, the VGG-16 base frozen) until this "
        "global step, at --new_layers_learning_rate, then the whole network (but what --freeze_conv1_conv2 "
        "keeps frozen) at --learning_rate, warmed up again; the optimizer slots exist for every variable from "
        "the start, so the switch needs no restart. The same two phases as --new_layers_only_epochs (not with "
        "it); a resumed run keeps its own.", positive_int(optional=True))
    unfreeze_at_epoch: float | None = _option(
        None, "--unfreeze_at_step in epochs of the training split.", positive(optional=True))
    learning_rate_decay_type: str = _option("fixed", "Learning-rate schedule.", choices=lr_lib.DECAY_TYPES)
    learning_rate_decay_factor: float = _option(0.94, "Decay factor (exponential).",
                                                unit_interval(low_inclusive=False))
    num_epochs_per_decay: float = _option(2.0, "Epochs per decay period (exponential, polynomial, cosine).",
                                          positive())
    end_learning_rate: float = _option(0.0001, "Final learning rate (polynomial) / floor (cosine).", non_negative())
    learning_rate_boundaries: list | None = _option(
        None, "Piecewise: global steps where the rate changes.")
    learning_rate_boundaries_epochs: list | None = _option(
        None, "Piecewise: --learning_rate_boundaries in epochs of the training split (e.g. 40,50).")
    learning_rate_values: list | None = _option(None, "Piecewise: the rates (one more than the boundaries).")
    warmup_steps: int = _option(
        50, "Linear warmup from 0 over this many global steps (again when the VGG-16 base starts training).",
        non_negative_int())
    warmup_epochs: float | None = _option(
        None, "--warmup_steps in epochs of the training split (replaces --warmup_steps).", non_negative(optional=True))
    momentum: float = _option(0.9, "Momentum (momentum, rmsprop).", unit_interval(high_inclusive=False))
    adam_beta1: float = _option(0.9, "Adam/AdamW beta1.", unit_interval(high_inclusive=False))
    adam_beta2: float = _option(0.999, "Adam/AdamW beta2.", unit_interval(high_inclusive=False))
    opt_epsilon: float = _option(1e-8, "Adam/AdamW epsilon.", positive())
    adamw_weight_decay: float = _option(0.01, "AdamW decoupled weight decay.", non_negative())
    rmsprop_decay: float = _option(0.9, "RMSProp decay.", unit_interval())
    rmsprop_epsilon: float = _option(1.0, "RMSProp epsilon.", positive())
    adagrad_initial_accumulator_value: float = _option(0.1, "Adagrad initial accumulator.", positive())
    adadelta_rho: float = _option(0.95, "Adadelta rho.", unit_interval())
    ftrl_learning_rate_power: float = _option(-0.5, "FTRL learning-rate power.", Rule(high=0))
    ftrl_initial_accumulator_value: float = _option(0.1, "FTRL initial accumulator.", positive())
    ftrl_l1: float = _option(0.0, "FTRL L1.", non_negative())
    ftrl_l2: float = _option(0.0, "FTRL L2.", non_negative())
    clip_gradient_norm: float = _option(0.0, "Clip the averaged gradients to this global norm (0: off); with "
                                        "--accumulate_steps, the accumulated gradient.", non_negative())
    accumulate_steps: int = _option(
        1, "Gradient accumulation: accumulate the gradients of this many micro-batches and apply them as one "
        "update, so that one global step trains on an effective batch of accumulate_steps x num_clones x "
        "batch_size images at the memory of batch_size (a step takes accumulate_steps times as long). The "
        "micro-batches' gradients are weighted by their positives, as the loss normalisation divides them, so "
        "the update is the big batch's; the learning-rate schedule, --num_epochs, the moving average, logs and "
        "summaries count applied updates. 1: off. Not with --sync_replicas.", positive_int())
    moving_average_decay: float | None = _option(
        None, "Keep an EMA of the weights (used by eval and export).",
        unit_interval(low_inclusive=False, high_inclusive=False, optional=True))
    max_number_of_steps: int | None = _option(
        None, "Stop at this global step (default: train until interrupted).", positive_int(optional=True))
    num_epochs: float | None = _option(
        None, "Stop after this many epochs of the training split, counted from global step 0 at the global batch "
        "(batch_size x num_clones x accumulate_steps x replicas per step): the alternative to --max_number_of_steps.",
        positive(optional=True))
    max_train_minutes: float | None = _option(
        None, "Stop after this many minutes of training in this run (from its first step), with a final "
        "checkpoint.", positive(optional=True))

    # Devices.
    num_clones: int = _option(1, "Towers: one per GPU.", positive_int())
    clone_on_cpu: bool = _option(False, "Put the towers on the CPU (split into num_clones logical devices).")
    gpu_memory_fraction: float = _option(devices.DEFAULT_GPU_MEMORY_FRACTION, "GPU memory each process may take.",
                                         unit_interval(low_inclusive=False))
    allow_growth: bool = _option(False, "Let GPU memory grow on demand instead of reserving it up front.")
    precision: str = _option(
        "fp32", "Arithmetic of the towers: fp32; mixed_bf16 (convolutions and activations in bfloat16, variables, "
        "losses and gradient averaging in float32); mixed_fp16 (the same in float16, with dynamic loss scaling); "
        "auto (mixed_bf16 on a CPU with bfloat16 instructions and no GPU, else fp32). Checkpoints are float32 "
        "whatever the precision (deployment/mixed_precision.py).", choices=mixed_precision.PRECISIONS + ("auto",))
    xla: bool = _option(
        False, "Compile each tower's forward and backward pass with XLA (jit scopes around the towers).")

    # Logging, summaries, checkpoints.
    log_every_n_steps: int = _option(10, "Log step, losses, learning rate and images/s this often.", positive_int())
    # 0: summaries after every step / no periodic checkpoints (the final one is still written).
    save_summaries_secs: int = _option(60, "Write TensorBoard summaries this often (0: after every step).",
                                       non_negative_int())
    save_interval_secs: int = _option(600, "Write a checkpoint this often (0: only the final one).",
                                      non_negative_int())
    max_to_keep: int = _option(5, "Checkpoints kept.", non_negative_int())
    keep_checkpoint_every_n_hours: float = _option(10000.0, "Also keep one checkpoint per this many hours.",
                                                   positive())
    num_summary_images: int = _option(
        3, "Training images (after augmentation, with boxes) shown in TensorBoard.", non_negative_int())
    summarize_activations: bool = _option(True, "Histograms and sparsity of the feature layers.")
    summarize_variables: bool = _option(True, "Histograms of the model variables.")

    # Validation during training (training/validation.py): the evaluator's metrics on a held-out split, by the chief.
    validation_split: str | None = _option(
        None, "Split validated during training (the evaluator's metrics on the current weights, the EMA with "
        "--moving_average_decay), into <train_dir>/eval_<split>/. Default: 'test' when the dataset has such a "
        "split, else none; '' switches validation off.")
    validate_every_n_steps: int | None = _option(
        None, "Validate every this many global steps (and at the last step). Default: every epoch "
        "(--validate_every_n_epochs).", positive_int(optional=True))
    validate_every_n_epochs: float | None = _option(
        None, "Validate every this many epochs of the training split at the global batch (default 1; not with "
        "--validate_every_n_steps).", positive(optional=True))
    best_metric: str = _option(
        "voc07_map", "The validation metric (higher is better) whose best weights are kept in <train_dir>/best/ "
        "(with best.json) and that early stopping watches.", choices=evaluation_summaries.BEST_METRICS)
    early_stopping_patience: int | None = _option(
        None, "Stop after this many validations without an improvement of --best_metric by more than "
        "--early_stopping_min_delta (0 or none: never).", non_negative_int(optional=True))
    early_stopping_min_delta: float = _option(
        0.0, "The smallest gain of --best_metric that counts as an improvement for early stopping.", non_negative())
    restore_best_at_end: bool = _option(
        False, "When the run ends (early stopping or the last step), the final checkpoint in --train_dir holds "
        "the best validated weights (and their moving averages) instead of the last ones.")
    num_visualized_images: int = _option(
        3, "Each validation shows the first N validation images in TensorBoard (eval_<split>/, eval/detections/<i>): "
        "detections scoring at least 0.5 beside the ground truth (0: none).", non_negative_int())

    # Distributed: TensorFlow's own runtime, ps tasks + workers (deployment/cluster.py). Empty host lists: one machine.
    ps_hosts: str = _option("", "Comma-separated host:port of the parameter-server tasks.")
    worker_hosts: str = _option("", "Comma-separated host:port of the workers; worker 0 is the chief.")
    job_name: str = _option("", "This task's job: 'ps' or 'worker' (with --ps_hosts/--worker_hosts).")
    task_index: int = _option(0, "This task's index in its job.", non_negative_int())
    sync_replicas: bool = _option(
        False, "Synchronous training: each step averages the gradients of --replicas_to_aggregate workers "
        "(SyncReplicasOptimizer). Default: asynchronous.")
    replicas_to_aggregate: int | None = _option(
        None, "Sync mode: worker gradients per step (default: all workers).", positive_int(optional=True))
    dist_startup_timeout_secs: float = _option(
        cluster.DEFAULT_STARTUP_TIMEOUT_SECS,
        "A worker fails if the ps tasks (or, for non-chief workers, the chief's model) are not up within this.",
        positive())
    dist_operation_timeout_secs: float = _option(
        cluster.DEFAULT_OPERATION_TIMEOUT_SECS,
        "A distributed session.run (a step) fails after this long, e.g. when a ps died (<= 0: never).", Rule())
    dist_lost_ps_secs: float = _option(
        cluster.DEFAULT_LOST_PS_SECS,
        "A worker exits (status 3) when a ps task refuses connections this long, or a step fails because the "
        "cluster is unreachable (<= 0: only the latter).", Rule())

    # ------------------------------------------------------------------------------------------------

    @classmethod
    def option_names(cls):
        return [field.name for field in dataclasses.fields(cls)]

    @classmethod
    def from_flags(cls, flag_values=flags.FLAGS):
        """The options given on the command line (flags defined by :func:`define_flags`)."""
        return cls(**{name: flag_values[name].value for name in cls.option_names()})

    @classmethod
    def from_dict(cls, values, *, ignore_unknown=False):
        """A config from ``{option: value}`` (missing options take their defaults). Unknown names are an error
        unless ``ignore_unknown`` (a record written by another version of the trainer)."""
        known = set(cls.option_names())
        unknown = set(values) - known
        if unknown and not ignore_unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}")
        return cls(**{name: value for name, value in values.items() if name in known})

    def replace(self, **changes):
        unknown = set(changes) - set(self.option_names())
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def as_dict(self):
        return {name: getattr(self, name) for name in self.option_names()}

    def check(self):
        """Raises command_line.UsageError naming every option with a value training cannot use (all at once)."""
        problems = [command_line.image_size_problem(self.image_size)]
        for name in ("learning_rate_boundaries", "learning_rate_boundaries_epochs", "learning_rate_values"):
            try:
                float_list(getattr(self, name), name)
            except ValueError as error:
                problems.append(str(error))
        if (self.negative_threshold is not None and OPTION_RULES["negative_threshold"].allows(self.negative_threshold)
                and self.negative_threshold > self.match_threshold):
            problems.append(f"--negative_threshold ({self.negative_threshold}) must not exceed --match_threshold "
                            f"({self.match_threshold})")
        problems += self._one_form_problems()
        if self.validate_every_n_steps is not None and self.validate_every_n_epochs is not None:
            problems.append("give --validate_every_n_steps or --validate_every_n_epochs, not both")
        if self.precision == "mixed_fp16" and self.sync_replicas:
            problems.append("--precision=mixed_fp16 cannot be combined with --sync_replicas (its loss scaling skips "
                            "overflowing steps, which SyncReplicasOptimizer's aggregation cannot); use "
                            "--precision=mixed_bf16, which needs no loss scaling")
        if self.sync_replicas and isinstance(self.accumulate_steps, int) and self.accumulate_steps > 1:
            problems.append("--accumulate_steps cannot be combined with --sync_replicas (SyncReplicasOptimizer "
                            "aggregates one update per worker run); --replicas_to_aggregate already makes the "
                            "batch of a step bigger")
        command_line.check_options(self, OPTION_RULES, problems)
        return self

    def _one_form_problems(self):
        """Options a run takes in steps or in epochs, or two ways of asking for the same phases: not both."""
        given = {name: getattr(self, name) not in (None, [], ()) for name in (
            "max_number_of_steps", "num_epochs", "learning_rate_boundaries", "learning_rate_boundaries_epochs",
            "unfreeze_at_step", "unfreeze_at_epoch", "warmup_epochs")}
        given["warmup_steps"] = self.warmup_steps != _default("warmup_steps")
        given["new_layers_only_epochs"] = bool(self.new_layers_only_epochs)
        problems = []
        for first, second in (("max_number_of_steps", "num_epochs"), ("warmup_steps", "warmup_epochs"),
                              ("learning_rate_boundaries", "learning_rate_boundaries_epochs"),
                              ("unfreeze_at_step", "unfreeze_at_epoch"),
                              ("new_layers_only_epochs", "unfreeze_at_step"),
                              ("new_layers_only_epochs", "unfreeze_at_epoch")):
            if given[first] and given[second]:
                problems.append(f"give --{first} or --{second}, not both")
        return problems

    @property
    def image_shape(self):
        """--image_size as (H, W), or None for the network's own."""
        return nets_factory.parse_image_size(self.image_size)

    @property
    def learning_rate_piecewise(self):
        """(boundaries as ints, values as floats) of the piecewise schedule, each None when not given."""
        boundaries = float_list(self.learning_rate_boundaries, "learning_rate_boundaries")
        return ([int(b) for b in boundaries] if boundaries else None,
                float_list(self.learning_rate_values, "learning_rate_values"))

    @property
    def images_per_clone_step(self):
        """Images of one global step on this replica: batch_size x num_clones x accumulate_steps."""
        return self.batch_size * self.num_clones * self.accumulate_steps


def _default(name):
    return next(field.default for field in dataclasses.fields(TrainingConfig) if field.name == name)


# Every numeric option's allowed values, from the fields (checked before anything is built).
OPTION_RULES = {field.name: field.metadata["rule"] for field in dataclasses.fields(TrainingConfig)
          if field.metadata.get("rule") is not None}


def float_list(values, name):
    """A list flag's values as floats (None when not given); ValueError naming the flag otherwise."""
    try:
        return [float(v) for v in values] if values else None
    except (TypeError, ValueError):
        raise ValueError(f"--{name} must be a comma-separated list of numbers, got {values!r}") from None


def _flag_kind(field):
    annotation = typing.get_args(field.type) or (field.type,)
    base = next(t for t in annotation if t is not type(None))
    if field.metadata.get("choices"):
        return "enum"
    return {str: "string", int: "integer", float: "float", bool: "bool", list: "list"}[base]


def define_flags(flag_values=flags.FLAGS):
    """Defines one absl flag per :class:`TrainingConfig` field on ``flag_values``."""
    for field in dataclasses.fields(TrainingConfig):
        kind = _flag_kind(field)
        help_text = field.metadata["help"]
        if kind == "enum":
            flags.DEFINE_enum(field.name, field.default, list(field.metadata["choices"]), help_text,
                              flag_values=flag_values)
        else:
            getattr(flags, f"DEFINE_{kind}")(field.name, field.default, help_text, flag_values=flag_values)
    return flag_values


# ----------------------------------------------------------------------------- training_config.json


@dataclasses.dataclass(frozen=True)
class DatasetRecord:
    """The dataset a run trained on."""

    dir: str | None = None
    split: str | None = None
    num_samples: int | None = None
    num_classes: int | None = None
    labels: dict = dataclasses.field(default_factory=dict)  # {str(label id): name}, background included
    info: dict | None = None

    @classmethod
    def of(cls, spec):
        return cls(dir=spec.dataset_dir, split=spec.split_name, num_samples=spec.num_samples,
                   num_classes=spec.num_classes, labels={str(k): v for k, v in spec.labels_to_names.items()},
                   info=spec.info)


@dataclasses.dataclass(frozen=True)
class TrainingRecord:
    """``training_config.json``: what a run trained, as its readers need it.

    Attributes:
      config: the run's :class:`TrainingConfig` (stored under ``flags``).
      network: the network's :class:`nets.ssd_net.SSDParams` as JSON (lists for tuples).
      num_anchors: anchors of the network.
      deployment: the deployment plan, as text.
      data_seed: the seed of this run's data order and augmentations.
      dataset: :class:`DatasetRecord`.
      frozen_scopes: scopes never trained (a resumed run keeps them).
      new_layers_only_steps: global steps of the first phase (0: none), during which only SSD's new layers
        train, or ``first_phase_scopes`` when given.
      first_phase_scopes: what the first phase trains with --unfreeze_at_step (None: SSD's new layers).
    """

    config: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    network: dict | None = None
    num_anchors: int | None = None
    deployment: str | None = None
    data_seed: int | None = None
    dataset: DatasetRecord = dataclasses.field(default_factory=DatasetRecord)
    frozen_scopes: tuple = ()
    new_layers_only_steps: int = 0
    first_phase_scopes: tuple | None = None

    @property
    def model_name(self):
        return self.config.model_name

    @property
    def labels(self):
        """{label id: name} recorded by training (background included), or None."""
        return {int(k): v for k, v in self.dataset.labels.items()} if self.dataset.labels else None

    def network_params(self):
        """The recorded network parameters as :func:`nets.nets_factory.get_network` overrides, or None."""
        if not self.network:
            return None
        out = dict(self.network)
        out["img_shape"] = tuple(out["img_shape"])
        out["feat_shapes"] = [tuple(v) for v in out["feat_shapes"]]
        out["anchor_sizes"] = [tuple(v) for v in out["anchor_sizes"]]
        out["anchor_steps"] = [tuple(v) if isinstance(v, list) else v for v in out["anchor_steps"]]
        return out

    def to_json(self):
        document = {
            "flags": self.config.as_dict(),
            "network": self.network,
            "num_anchors": self.num_anchors,
            "deployment": self.deployment,
            "data_seed": self.data_seed,
            "dataset": dataclasses.asdict(self.dataset),
            "frozen_scopes": list(self.frozen_scopes),
            "new_layers_only_steps": self.new_layers_only_steps,
            "first_phase_scopes": None if self.first_phase_scopes is None else list(self.first_phase_scopes),
        }
        return json.dumps(document, indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text, source="training_config.json"):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{source} is not valid JSON ({error}); remove it or use another --train_dir") from None
        if not isinstance(document, dict):
            raise ValueError(f"{source} is not a training configuration (a JSON object); remove it or use "
                             "another --train_dir")
        dataset_fields = {field.name for field in dataclasses.fields(DatasetRecord)}
        return cls(
            config=TrainingConfig.from_dict(document.get("flags") or {}, ignore_unknown=True),
            network=document.get("network"),
            num_anchors=document.get("num_anchors"),
            deployment=document.get("deployment"),
            data_seed=document.get("data_seed"),
            dataset=DatasetRecord(**{k: v for k, v in (document.get("dataset") or {}).items()
                                     if k in dataset_fields}),
            frozen_scopes=tuple(document.get("frozen_scopes") or ()),
            new_layers_only_steps=int(document.get("new_layers_only_steps") or 0),
            first_phase_scopes=(None if document.get("first_phase_scopes") is None
                                else tuple(document["first_phase_scopes"])),
        )

    def write(self, train_dir):
        """Writes ``<train_dir>/training_config.json``; returns its path."""
        tf.io.gfile.makedirs(train_dir)
        path = os.path.join(train_dir, CONFIG_FILE)
        with tf.io.gfile.GFile(path, "w") as stream:
            stream.write(self.to_json())
        return path

    @classmethod
    def read(cls, directory):
        """The record in ``directory`` (a training directory), or None when it has none."""
        path = os.path.join(directory, CONFIG_FILE)
        if not tf.io.gfile.exists(path):
            return None
        try:
            with tf.io.gfile.GFile(path, "r") as stream:
                text = stream.read()
        except (OSError, tf.errors.OpError) as error:
            raise ValueError(f"{path}: cannot read the training configuration ({error})") from None
        return cls.from_json(text, path)
