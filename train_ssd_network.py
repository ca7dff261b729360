#!/usr/bin/env python
"""Trains an SSD network on a converted dataset, one tower per GPU, with slim.learning.train.

    python train_ssd_network.py --train_dir=ckpt/fine_tuning --checkpoint_path=ckpt/pre_trained \
        [--dataset_dir=data/voc07] [--num_clones=2] ...
    tensorboard --logdir=ckpt/fine_tuning

Without ``--dataset_dir`` it trains on the built-in synthetic sample dataset (generated once
into a cache directory). Start-up precedence (logged in one line): a checkpoint already in
``--train_dir`` resumes; else ``--checkpoint_path`` is restored (class heads of another class
count are skipped); else training starts from scratch with a warning.

The graph, as DESIGN.md section 3 draws it: the input pipeline (read, parse, augment, [encode
targets], batch) and every variable on the CPU (or the ps tasks); each clone dequeues its own
batch and builds the network and the multibox loss on its device; the clone gradients are
averaged on the optimizer device and applied there.
"""

import collections
import contextlib
import json
import os
import sys
import types

import package_guard

package_guard.ensure_project_packages()

import command_line  # noqa: E402
from command_line import Rule, non_negative, non_negative_int, positive, positive_int, unit_interval  # noqa: E402

from absl import app, flags, logging  # noqa: E402
import tensorflow as tf  # noqa: E402

from datasets import dataset_factory, sample_data  # noqa: E402
from deployment import checkpoint_init, checkpoint_integrity, cluster, devices, learning_rate as lr_lib, model_deploy  # noqa: E402
from deployment import optimizers, summaries, train_op as train_op_lib  # noqa: E402
from nets import anchor_coverage, matching, multibox_loss, nets_factory, ssd_vgg_common, vgg_checkpoint  # noqa: E402
from preprocessing import preprocessing_factory, seeds, visualization  # noqa: E402
from preprocessing.ssd_vgg_preprocessing import TrainAugmentation  # noqa: E402
from tf_compat import slim, tf1  # noqa: E402

FLAGS = flags.FLAGS
_FLAG_NAMES = []


def _define(kind, name, default, help_text, enum_values=None):
    if kind == "enum":
        flags.DEFINE_enum(name, default, enum_values, help_text)
    else:
        getattr(flags, f"DEFINE_{kind}")(name, default, help_text)
    _FLAG_NAMES.append(name)


# Directories and start-up.
_define("string", "train_dir", "ckpt/fine_tuning", "Training directory: checkpoints, events, the effective configuration.")
_define("string", "checkpoint_path", checkpoint_init.DEFAULT_CHECKPOINT_PATH,
        "Weights to start from (file prefix or directory) when --train_dir has no checkpoint. A path that does not "
        "exist is an error, except this default (then: scratch, with a warning).")
_define("string", "checkpoint_model_scope", None,
        "Scope of the model in the checkpoint when it differs from the network's, e.g. vgg_16 for an ImageNet "
        "VGG-16 checkpoint.")
_define("string", "checkpoint_exclude_scopes", None, "Comma-separated scopes not restored from --checkpoint_path.")
_define("string", "trainable_scopes", None, "Comma-separated scopes to train; the rest stay frozen. Default: all.")
_define("bool", "ignore_missing_vars", False, "Restore what --checkpoint_path has and leave the rest fresh.")
_define("enum", "freeze_conv1_conv2", "auto",
        "Keep conv1_x and conv2_x fixed (no backward pass runs through them), the paper's recipe from ImageNet "
        "weights. auto: when training starts from an ImageNet VGG-16 checkpoint, and on resume as the run "
        "being resumed did.", enum_values=["auto", "true", "false"])

# Dataset and input pipeline.
_define("string", "dataset_dir", None, "A converted dataset (tf_convert_data.py output). Default: the sample dataset.")
_define("string", "dataset_name", None, "Expected dataset name (e.g. pascalvoc_2007); default: what the dir holds.")
_define("string", "dataset_split_name", "trainval", "Split to train on.")
_define("integer", "batch_size", 32, "Images per clone per step (the global batch is batch_size x num_clones).")
_define("integer", "num_readers", 4, "Shards read in parallel.")
_define("integer", "num_preprocessing_threads", 4, "Parallel calls of parsing and augmentation.")
_define("integer", "shuffle_buffer_size", 2048, "Examples in the shuffle buffer.")
_define("enum", "augmentation", "ssd", "Training augmentation: 'ssd' (the paper's recipe) or 'none' (resize only).",
        enum_values=["ssd", "none"])
_define("float", "zoom_out_max_ratio", 4.0,
        "--augmentation=ssd: the zoom-out stage places the image in a canvas up to this many times its size "
        "(the paper's 4); 1 switches zoom-out off (objects never get smaller than in the data).")
_define("enum", "encode_targets_in", "input",
        "Where anchor matching runs: 'input' (CPU input pipeline, per image) or 'tower' (each clone, batched).",
        enum_values=["input", "tower"])
_define("integer", "seed", 0, "Seed of every random choice (data order, augmentation, initialisers, dropout).")

# Network and loss.
_define("string", "model_name", "ssd_300_vgg", f"Network: {', '.join(nets_factory.list_networks())}.")
_define("string", "image_size", None, "Network input 'H,W' or 'S' (default: the network's, 300 or 512).")
_define("enum", "data_format", "NHWC", "NHWC, or NCHW (GPU only).", enum_values=["NHWC", "NCHW"])
_define("float", "weight_decay", 0.0005, "L2 weight decay.")
_define("float", "dropout_keep_prob", 1.0, "Keep probability of dropout after conv6/conv7 (the paper uses none).")
_define("float", "match_threshold", 0.5, "IoU from which an anchor is positive.")
_define("float", "negative_threshold", None, "IoU below which an anchor may be a negative (default: match_threshold).")
_define("float", "negative_ratio", 3.0, "Hard negatives mined per positive, per image.")
_define("float", "loss_alpha", 1.0, "Weight of the localisation loss.")
_define("float", "label_smoothing", 0.0, "Label smoothing of the classification loss.")
_define("enum", "loss_normalization", "step",
        "What the multibox loss is divided by: 'step', the positives of all clones' batches of the step (N clones "
        "x batch B train exactly as one tower on N*B images), or 'clone', each clone's own positives "
        "(SSD-Tensorflow's; what each worker does with --sync_replicas).", enum_values=["step", "clone"])

# Optimisation.
_define("enum", "optimizer", "adam",
        "Optimizer. Adam with the default rates follows the recipe in docs/accuracy.md; the paper's schedule is "
        "--optimizer=momentum --learning_rate=0.001 with piecewise decay and --new_layers_only_epochs=0.",
        enum_values=list(optimizers.OPTIMIZER_NAMES))
_define("float", "learning_rate", 0.00005,
        "Learning rate of the whole network (after --new_layers_only_epochs, if any), before decay.")
_define("float", "new_layers_learning_rate", 0.001,
        "Learning rate while only SSD's new layers train (--new_layers_only_epochs).")
_define("float", "new_layers_only_epochs", None,
        "Train only SSD's own layers (the VGG-16 base conv1..conv5 frozen: no backward pass through it) for this "
        "many epochs of the training split, at --new_layers_learning_rate; then the whole network (but what "
        "--freeze_conv1_conv2 keeps frozen) at --learning_rate, warmed up again over --warmup_steps. Default: "
        "4 epochs when training starts from ImageNet VGG-16 weights, 0 otherwise; a resumed run keeps its own.")
_define("enum", "learning_rate_decay_type", "fixed", "Learning-rate schedule.", enum_values=list(lr_lib.DECAY_TYPES))
_define("float", "learning_rate_decay_factor", 0.94, "Decay factor (exponential).")
_define("float", "num_epochs_per_decay", 2.0, "Epochs per decay period (exponential, polynomial, cosine).")
_define("float", "end_learning_rate", 0.0001, "Final learning rate (polynomial) / floor (cosine).")
_define("list", "learning_rate_boundaries", None, "Piecewise: global steps where the rate changes.")
_define("list", "learning_rate_values", None, "Piecewise: the rates (one more than the boundaries).")
_define("integer", "warmup_steps", 50,
        "Linear warmup from 0 over this many global steps (again when the VGG-16 base starts training).")
_define("float", "momentum", 0.9, "Momentum (momentum, rmsprop).")
_define("float", "adam_beta1", 0.9, "Adam/AdamW beta1.")
_define("float", "adam_beta2", 0.999, "Adam/AdamW beta2.")
_define("float", "opt_epsilon", 1e-8, "Adam/AdamW epsilon.")
_define("float", "adamw_weight_decay", 0.01, "AdamW decoupled weight decay.")
_define("float", "rmsprop_decay", 0.9, "RMSProp decay.")
_define("float", "rmsprop_epsilon", 1.0, "RMSProp epsilon.")
_define("float", "adagrad_initial_accumulator_value", 0.1, "Adagrad initial accumulator.")
_define("float", "adadelta_rho", 0.95, "Adadelta rho.")
_define("float", "ftrl_learning_rate_power", -0.5, "FTRL learning-rate power.")
_define("float", "ftrl_initial_accumulator_value", 0.1, "FTRL initial accumulator.")
_define("float", "ftrl_l1", 0.0, "FTRL L1.")
_define("float", "ftrl_l2", 0.0, "FTRL L2.")
_define("float", "clip_gradient_norm", 0.0, "Clip the averaged gradients to this global norm (0: off).")
_define("float", "moving_average_decay", None, "Keep an EMA of the weights (used by eval and export).")
_define("integer", "max_number_of_steps", None, "Stop at this global step (default: train until interrupted).")
_define("float", "max_train_minutes", None,
        "Stop after this many minutes of training in this run (from its first step), with a final checkpoint.")

# Devices.
_define("integer", "num_clones", 1, "Towers: one per GPU.")
_define("bool", "clone_on_cpu", False, "Put the towers on the CPU (split into num_clones logical devices).")
_define("float", "gpu_memory_fraction", devices.DEFAULT_GPU_MEMORY_FRACTION, "GPU memory each process may take.")
_define("bool", "allow_growth", False, "Let GPU memory grow on demand instead of reserving it up front.")

# Logging, summaries, checkpoints.
_define("integer", "log_every_n_steps", 10, "Log step, losses, learning rate and images/s this often.")
_define("integer", "save_summaries_secs", 60, "Write TensorBoard summaries this often (0: after every step).")
_define("integer", "save_interval_secs", 600, "Write a checkpoint this often (0: only the final one).")
_define("integer", "max_to_keep", 5, "Checkpoints kept.")
_define("float", "keep_checkpoint_every_n_hours", 10000.0, "Also keep one checkpoint per this many hours.")
_define("integer", "num_summary_images", 3, "Training images (after augmentation, with boxes) shown in TensorBoard.")
_define("bool", "summarize_activations", True, "Histograms and sparsity of the feature layers.")
_define("bool", "summarize_variables", True, "Histograms of the model variables.")

# Distributed: TensorFlow's own runtime, ps tasks + workers (deployment/cluster.py). Empty host lists: one machine.
_define("string", "ps_hosts", "", "Comma-separated host:port of the parameter-server tasks.")
_define("string", "worker_hosts", "", "Comma-separated host:port of the workers; worker 0 is the chief.")
_define("string", "job_name", "", "This task's job: 'ps' or 'worker' (with --ps_hosts/--worker_hosts).")
_define("integer", "task_index", 0, "This task's index in its job.")
_define("bool", "sync_replicas", False, "Synchronous training: each step averages the gradients of "
        "--replicas_to_aggregate workers (SyncReplicasOptimizer). Default: asynchronous.")
_define("integer", "replicas_to_aggregate", None, "Sync mode: worker gradients per step (default: all workers).")
_define("float", "dist_startup_timeout_secs", cluster.DEFAULT_STARTUP_TIMEOUT_SECS,
        "A worker fails if the ps tasks (or, for non-chief workers, the chief's model) are not up within this.")
_define("float", "dist_operation_timeout_secs", cluster.DEFAULT_OPERATION_TIMEOUT_SECS,
        "A distributed session.run (a step) fails after this long, e.g. when a ps died (<= 0: never).")
_define("float", "dist_lost_ps_secs", cluster.DEFAULT_LOST_PS_SECS,
        "A worker exits (status 3) when a ps task refuses connections this long, or a step fails because the "
        "cluster is unreachable (<= 0: only the latter).")

CONFIG_FILE = "training_config.json"
# The recipe from ImageNet VGG-16 weights: epochs of the training split during which only SSD's new layers train.
DEFAULT_NEW_LAYERS_ONLY_EPOCHS = 4.0
# Images of the training split the start-up's anchor coverage line reads (a few seconds).
ANCHOR_COVERAGE_IMAGES = 1000


# Every numeric option's allowed values, checked (all at once) before anything is built.
OPTION_RULES = {
    "batch_size": positive_int(), "num_readers": positive_int(), "num_preprocessing_threads": positive_int(),
    "shuffle_buffer_size": positive_int(), "zoom_out_max_ratio": Rule(low=1), "seed": non_negative_int(),
    "weight_decay": non_negative(), "dropout_keep_prob": unit_interval(low_inclusive=False),
    "match_threshold": unit_interval(low_inclusive=False),
    "negative_threshold": unit_interval(low_inclusive=False, optional=True),
    "negative_ratio": non_negative(), "loss_alpha": non_negative(),
    "label_smoothing": unit_interval(high_inclusive=False),
    "learning_rate": positive(), "new_layers_learning_rate": positive(),
    "new_layers_only_epochs": non_negative(optional=True),
    "learning_rate_decay_factor": unit_interval(low_inclusive=False), "num_epochs_per_decay": positive(),
    "end_learning_rate": non_negative(), "warmup_steps": non_negative_int(),
    "momentum": unit_interval(high_inclusive=False), "adam_beta1": unit_interval(high_inclusive=False),
    "adam_beta2": unit_interval(high_inclusive=False), "opt_epsilon": positive(),
    "adamw_weight_decay": non_negative(), "rmsprop_decay": unit_interval(), "rmsprop_epsilon": positive(),
    "adagrad_initial_accumulator_value": positive(), "adadelta_rho": unit_interval(),
    "ftrl_learning_rate_power": Rule(high=0), "ftrl_initial_accumulator_value": positive(),
    "ftrl_l1": non_negative(), "ftrl_l2": non_negative(), "clip_gradient_norm": non_negative(),
    "moving_average_decay": unit_interval(low_inclusive=False, high_inclusive=False, optional=True),
    "max_number_of_steps": positive_int(optional=True), "max_train_minutes": positive(optional=True),
    "num_clones": positive_int(), "gpu_memory_fraction": unit_interval(low_inclusive=False),
    # 0: summaries after every step / no periodic checkpoints (the final one is still written).
    "log_every_n_steps": positive_int(), "save_summaries_secs": non_negative_int(),
    "save_interval_secs": non_negative_int(), "max_to_keep": non_negative_int(),
    "keep_checkpoint_every_n_hours": positive(), "num_summary_images": non_negative_int(),
    "task_index": non_negative_int(), "replicas_to_aggregate": positive_int(optional=True),
    "dist_startup_timeout_secs": positive(), "dist_operation_timeout_secs": Rule(),
    "dist_lost_ps_secs": Rule(),
}


def validate_options(opts):
    """Raises command_line.UsageError naming every flag of ``opts`` with a value training cannot use."""
    problems = [command_line.image_size_problem(opts.image_size)]
    for name in ("learning_rate_boundaries", "learning_rate_values"):
        try:
            _float_list(getattr(opts, name), name)
        except ValueError as error:
            problems.append(str(error))
    if (OPTION_RULES["negative_threshold"].allows(opts.negative_threshold) and opts.negative_threshold is not None
            and opts.negative_threshold > opts.match_threshold):
        problems.append(f"--negative_threshold ({opts.negative_threshold}) must not exceed --match_threshold "
                        f"({opts.match_threshold})")
    command_line.check_options(opts, OPTION_RULES, problems)


def default_options(**overrides):
    """The flags' defaults as a namespace, with ``overrides`` (for tests and benchmarks)."""
    values = {name: FLAGS[name].default for name in _FLAG_NAMES}
    unknown = set(overrides) - set(values)
    if unknown:
        raise ValueError(f"unknown training options {sorted(unknown)}")
    values.update(overrides)
    return types.SimpleNamespace(**values)


def options_from_flags():
    return types.SimpleNamespace(**{name: FLAGS[name].value for name in _FLAG_NAMES})


def resolve_dataset(opts):
    """(DatasetSpec, dataset_dir): ``--dataset_dir``, or the built-in sample dataset."""
    dataset_dir = opts.dataset_dir
    if not dataset_dir:
        dataset_dir = sample_data.ensure_sample_dataset()
        logging.info("No --dataset_dir: training on the built-in sample dataset in %s", dataset_dir)
    return dataset_factory.get_dataset(opts.dataset_name, opts.dataset_split_name, dataset_dir)


def build_network(opts, num_classes):
    overrides = {"num_classes": num_classes}
    image_size = nets_factory.parse_image_size(opts.image_size)
    if image_size:
        overrides["img_shape"] = image_size
    return nets_factory.get_network(opts.model_name, **overrides)


def _augmentation(opts):
    if opts.augmentation == "none":
        return TrainAugmentation.none()
    return TrainAugmentation(expand=opts.zoom_out_max_ratio > 1.0, expand_max_ratio=max(opts.zoom_out_max_ratio, 1.0))


def starting_global_step(train_dir):
    """The global step of the checkpoint training will resume from (0 when there is none)."""
    latest = tf.train.latest_checkpoint(train_dir) if train_dir and tf.io.gfile.isdir(train_dir) else None
    if not latest:
        return 0
    reader = tf.train.load_checkpoint(latest)
    return int(reader.get_tensor("global_step")) if reader.has_tensor("global_step") else 0


def build_input_dataset(opts, spec, net, data_seed, num_shards=1, shard_index=0):
    """Batches for the towers: dicts of image [B,H,W,3] float32, labels [B,N], boxes [B,N,4]
    (padded with label 0 / empty boxes) and, with targets encoded in the input pipeline, the
    :class:`nets.matching.Targets` fields under ``matching.TARGET_KEYS``. Replica ``shard_index``
    of ``num_shards`` keeps every ``num_shards``-th batch (:func:`deployment.cluster.shard_batches`)."""
    preprocess = preprocessing_factory.get_preprocessing(opts.model_name, is_training=True)
    augmentation = _augmentation(opts)
    out_shape = net.params.img_shape
    encode_in_input = opts.encode_targets_in == "input"

    def prepare(index, example):
        image, labels, boxes, _ = preprocess(
            example["image"], example["labels"], example["boxes"], example["difficult"], out_shape,
            seed=seeds.example_seed(data_seed, index), options=augmentation,
        )
        prepared = {"image": image, "labels": labels, "boxes": boxes}
        if encode_in_input:
            prepared.update(matching.targets_to_dict(net.bboxes_encode(
                labels, boxes, match_threshold=opts.match_threshold, negative_threshold=opts.negative_threshold)))
        return prepared

    dataset = dataset_factory.build_dataset(
        spec, is_training=True, seed=data_seed, num_readers=opts.num_readers,
        num_parallel_calls=opts.num_preprocessing_threads, shuffle_buffer_size=opts.shuffle_buffer_size,
    )
    dataset = cluster.shard_batches(dataset.enumerate(), opts.batch_size, num_shards, shard_index)
    dataset = dataset.map(prepare, num_parallel_calls=opts.num_preprocessing_threads, deterministic=True)
    dataset = dataset.padded_batch(opts.batch_size, drop_remainder=True)
    return dataset.prefetch(max(2, opts.num_clones))


CloneInputs = collections.namedtuple("CloneInputs", ["batch", "targets", "normaliser"])
CloneInputs.__doc__ = """What one tower trains on: its batch (dict), its :class:`nets.matching.Targets` and the
normaliser of its multibox loss (None: its own positives)."""


def dequeue_clone_inputs(opts, net, iterator, deploy_config):
    """One :class:`CloneInputs` per clone: each clone's batch (dequeued on the inputs device), its
    targets (from the batch, or matched on the clone's device with ``--encode_targets_in=tower``)
    and, with ``--loss_normalization=step``, the normaliser shared by all clones: the positives of
    every clone's batch, summed on the optimizer device (so N towers x B images train exactly as
    one tower on the N*B images)."""
    num_clones = deploy_config.num_clones
    with tf1.device(deploy_config.inputs_device()), tf.name_scope("clone_inputs"):
        batches = [iterator.get_next() for _ in range(num_clones)]
    targets = []
    for index, batch in enumerate(batches):
        if opts.encode_targets_in == "input":
            targets.append(matching.targets_from_dict(batch))
        else:
            with tf1.device(deploy_config.clone_device(index)), tf.name_scope(f"clone_targets_{index}"):
                targets.append(net.bboxes_encode(batch["labels"], batch["boxes"], match_threshold=opts.match_threshold,
                                                 negative_threshold=opts.negative_threshold))
    normaliser = None
    if opts.loss_normalization == "step":
        with tf1.device(deploy_config.optimizer_device()):
            normaliser = multibox_loss.step_normaliser([multibox_loss.count_positives(t) for t in targets])
    return [CloneInputs(batch, target, normaliser) for batch, target in zip(batches, targets)]


def make_clone_fn(opts, net, clone_inputs):
    """The model_fn for ``model_deploy.create_clones``: SSD net and multibox loss on the next
    clone's inputs (the i-th call trains on ``clone_inputs[i]``, as each call of a TF-Slim clone
    function dequeues its own batch)."""
    pending = list(clone_inputs)

    def clone_fn():
        if not pending:
            raise ValueError(f"clone_fn called more often than the {len(clone_inputs)} clone inputs prepared")
        batch, targets, normaliser = pending.pop(0)
        images = batch["image"]
        if opts.data_format == "NCHW":
            images = tf.transpose(images, [0, 3, 1, 2])
        with slim.arg_scope(net.arg_scope(weight_decay=opts.weight_decay, data_format=opts.data_format)):
            _, localisations, logits, end_points = net.net(
                images, is_training=True, dropout_keep_prob=opts.dropout_keep_prob, data_format=opts.data_format,
                dropout_seed=opts.seed,
            )
        net.losses(logits, localisations, targets, negative_ratio=opts.negative_ratio, alpha=opts.loss_alpha,
                   label_smoothing=opts.label_smoothing, normaliser=normaliser)
        end_points = dict(end_points)
        end_points["_batch"] = batch
        return end_points

    return clone_fn


def build_clones(opts, net, iterator, deploy_config):
    """The towers (``model_deploy.create_clones``) on batches from ``iterator``; returns the clones."""
    clone_inputs = dequeue_clone_inputs(opts, net, iterator, deploy_config)
    return model_deploy.create_clones(deploy_config, make_clone_fn(opts, net, clone_inputs))


def _float_list(values, name):
    try:
        return [float(v) for v in values] if values else None
    except ValueError:
        raise ValueError(f"--{name} must be a comma-separated list of numbers, got {values!r}") from None


def build_training_graph(opts, spec, deploy_config=None, data_seed=None, frozen_scopes=(), new_layers_only_steps=0):
    """Builds the whole training graph in the default graph; returns a namespace of its parts.

    Variables under ``frozen_scopes`` (see :func:`resolve_training_plan`) are not trained. With
    ``new_layers_only_steps`` the graph has a second train tensor (``train.first_phase``) for the
    steps before it, which trains SSD's new layers only, at ``--new_layers_learning_rate``."""
    deploy_config = deploy_config or model_deploy.DeploymentConfig(
        num_clones=opts.num_clones, clone_on_cpu=opts.clone_on_cpu)
    data_seed = opts.seed if data_seed is None else data_seed
    tf1.set_random_seed(opts.seed)
    net = build_network(opts, spec.num_classes)
    global_step = model_deploy.get_or_create_global_step(deploy_config)

    with tf1.device(deploy_config.inputs_device()), tf.name_scope("input"):
        dataset = build_input_dataset(opts, spec, net, data_seed, deploy_config.num_replicas, deploy_config.replica_id)
        iterator = tf1.data.make_one_shot_iterator(dataset)

    clones = build_clones(opts, net, iterator, deploy_config)
    first_clone = clones[0]

    if new_layers_only_steps and deploy_config.num_ps_tasks > 0 and opts.sync_replicas:
        raise ValueError("--new_layers_only_epochs cannot be combined with --sync_replicas (SyncReplicasOptimizer "
                         "applies one train op); pass --new_layers_only_epochs=0, or train the two phases as two runs")
    with tf1.device(deploy_config.optimizer_device()):
        def schedule(rate, warmup_steps):
            return lr_lib.configure_learning_rate(
                global_step, learning_rate=rate, decay_type=opts.learning_rate_decay_type,
                decay_rate=opts.learning_rate_decay_factor, end_learning_rate=opts.end_learning_rate,
                boundaries=[int(b) for b in _float_list(opts.learning_rate_boundaries, "learning_rate_boundaries")
                            or []] or None,
                values=_float_list(opts.learning_rate_values, "learning_rate_values"),
                warmup_steps=warmup_steps, num_samples_per_epoch=spec.num_samples,
                num_epochs_per_decay=opts.num_epochs_per_decay, batch_size=opts.batch_size,
                num_clones=deploy_config.num_clones, num_replicas=_replicas_per_step(opts, deploy_config),
            )

        if new_layers_only_steps:
            learning_rate = lr_lib.two_phase_learning_rate(
                global_step, new_layers_only_steps, schedule(opts.new_layers_learning_rate, opts.warmup_steps),
                schedule(opts.learning_rate, 0), opts.warmup_steps)
        else:
            learning_rate = schedule(opts.learning_rate, opts.warmup_steps)
        optimizer = optimizers.configure_optimizer(
            opts.optimizer, learning_rate, momentum=opts.momentum, rmsprop_decay=opts.rmsprop_decay,
            rmsprop_momentum=opts.momentum, rmsprop_epsilon=opts.rmsprop_epsilon, adam_beta1=opts.adam_beta1,
            adam_beta2=opts.adam_beta2, adam_epsilon=opts.opt_epsilon, adamw_weight_decay=opts.adamw_weight_decay,
            adagrad_initial_accumulator_value=opts.adagrad_initial_accumulator_value,
            adadelta_rho=opts.adadelta_rho, ftrl_learning_rate_power=opts.ftrl_learning_rate_power,
            ftrl_initial_accumulator_value=opts.ftrl_initial_accumulator_value, ftrl_l1=opts.ftrl_l1,
            ftrl_l2=opts.ftrl_l2,
        )
        sync_optimizer = None
        if deploy_config.num_ps_tasks > 0 and opts.sync_replicas:
            sync_optimizer = optimizer = cluster.SyncReplicasOptimizer(
                optimizer, replicas_to_aggregate=_replicas_per_step(opts, deploy_config),
                total_num_replicas=deploy_config.num_replicas)

    first_phase_variables = None
    if new_layers_only_steps:
        first_phase_variables = train_op_lib.get_variables_to_train(
            opts.trainable_scopes, list(frozen_scopes) + ssd_vgg_common.vgg16_base_scopes(net.name))
    train = train_op_lib.build_train_op(
        deploy_config, clones, optimizer, global_step=global_step,
        variables_to_train=train_op_lib.get_variables_to_train(opts.trainable_scopes, frozen_scopes),
        clip_gradient_norm=opts.clip_gradient_norm, moving_average_decay=opts.moving_average_decay,
        first_phase_variables=first_phase_variables,
    )

    summaries.add_loss_summaries(train.total_loss, clones)
    summaries.add_learning_rate_summary(learning_rate)
    end_points = {k: v for k, v in first_clone.outputs.items() if not k.startswith("_")}
    if opts.summarize_activations:
        summaries.add_activation_summaries(end_points)
    if opts.summarize_variables:
        summaries.add_variable_summaries(slim.get_model_variables())
    batch = first_clone.outputs["_batch"]
    if opts.num_summary_images > 0:
        with tf1.device(deploy_config.inputs_device()):
            visualization.ground_truth_image_summary(
                batch["image"], batch["boxes"], batch["labels"], spec.labels_to_names,
                max_images=opts.num_summary_images, name="training_images")

    loss_terms = _loss_terms_of(first_clone)
    return types.SimpleNamespace(
        net=net, deploy_config=deploy_config, global_step=global_step, clones=clones, train=train,
        learning_rate=learning_rate, optimizer=optimizer, iterator=iterator, loss_terms=loss_terms,
        sync_optimizer=sync_optimizer, new_layers_only_steps=new_layers_only_steps,
    )


def _replicas_per_step(opts, deploy_config):
    """Replica batches one global step trains on: all aggregated ones in sync mode, one when async."""
    if deploy_config.num_ps_tasks > 0 and opts.sync_replicas:
        return opts.replicas_to_aggregate or deploy_config.num_replicas
    return 1


def _loss_terms_of(clone):
    """A clone's multibox loss terms for the log line, named without the clone and loss scopes
    (``cross_entropy_pos/value``, ...)."""
    terms = {}
    for loss in tf1.losses.get_losses(scope=clone.scope):
        name = loss.op.name[len(clone.scope):] if clone.scope else loss.op.name
        terms[name.strip("/").split("/", 1)[-1]] = loss
    return terms


def effective_configuration(opts, spec, net, deploy_config, data_seed, plan=None):
    return {
        "flags": {name: getattr(opts, name) for name in _FLAG_NAMES},
        "frozen_scopes": list(plan.frozen_scopes) if plan else [],
        "new_layers_only_steps": plan.new_layers_only_steps if plan else 0,
        "network": {k: (list(v) if isinstance(v, tuple) else v) for k, v in net.params._asdict().items()},
        "num_anchors": net.num_anchors,
        "deployment": repr(deploy_config),
        "data_seed": data_seed,
        "dataset": {"dir": spec.dataset_dir, "split": spec.split_name, "num_samples": spec.num_samples,
                    "num_classes": spec.num_classes, "labels": {str(k): v for k, v in spec.labels_to_names.items()},
                    "info": spec.info},
    }


def read_configuration(train_dir):
    """The ``training_config.json`` a run wrote into ``train_dir`` ({} if there is none)."""
    path = os.path.join(train_dir, CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path, "r") as f:
        try:
            return json.loads(f.read())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); remove it or use another --train_dir") from None


TrainingPlan = collections.namedtuple("TrainingPlan", ["frozen_scopes", "new_layers_only_steps", "note"])
TrainingPlan.__doc__ = """What trains when: scopes never trained, the global steps during which only SSD's new layers
train (0: none), and the start-up line's note saying both."""


def resolve_training_plan(opts, model_scope, num_samples=None, images_per_step=None):
    """The :class:`TrainingPlan` for ``--freeze_conv1_conv2`` and ``--new_layers_only_epochs``.

    By default, training that starts from an ImageNet VGG-16 checkpoint follows the recipe: conv1
    and conv2 stay frozen (the paper), and only SSD's new layers train for the first
    ``DEFAULT_NEW_LAYERS_ONLY_EPOCHS`` epochs (a fresh conv6 and extra layers at a high learning
    rate would otherwise wreck the pretrained conv5 features). A resumed run keeps what it started
    with (its ``training_config.json``), so that its optimizer state still fits. Every worker of a
    cluster applies the same rule to the same files, so all train the same variables.
    ``num_samples`` (images in the training split) and ``images_per_step`` turn epochs into steps.
    """
    resuming = bool(opts.train_dir and tf.io.gfile.isdir(opts.train_dir) and tf.train.latest_checkpoint(opts.train_dir))
    recorded = read_configuration(opts.train_dir) if resuming else {}
    from_imagenet = False
    if not resuming and opts.checkpoint_path:
        checkpoint = checkpoint_init.resolve_checkpoint(opts.checkpoint_path)
        if checkpoint is not None:
            names = tf.train.load_checkpoint(checkpoint).get_variable_to_shape_map()
            from_imagenet = vgg_checkpoint.is_imagenet_vgg16(names, opts.checkpoint_model_scope or model_scope)
    start = ("as in the run being resumed" if resuming else
             "the recipe from ImageNet VGG-16 weights" if from_imagenet else "not starting from ImageNet VGG-16 weights")

    early_layers = ssd_vgg_common.vgg16_base_scopes(model_scope)[:2]
    if opts.freeze_conv1_conv2 != "auto":
        frozen, why = (early_layers if opts.freeze_conv1_conv2 == "true" else []), f"--freeze_conv1_conv2={opts.freeze_conv1_conv2}"
    elif resuming:
        frozen, why = recorded.get("frozen_scopes", []), start
    elif from_imagenet:
        frozen, why = early_layers, "the paper's recipe from ImageNet VGG-16 weights; --freeze_conv1_conv2=false trains them"
    else:
        frozen, why = [], start
    note = (f"frozen (not trained): {', '.join(scope.split('/')[-1] for scope in frozen)} ({why})" if frozen
            else f"every layer trained ({why})")

    epochs = opts.new_layers_only_epochs
    if epochs is not None and epochs < 0:
        raise ValueError(f"--new_layers_only_epochs must be >= 0, got {epochs}")
    if epochs is None and resuming:
        steps, why = int(recorded.get("new_layers_only_steps", 0)), start
    else:
        if epochs is None:
            epochs = DEFAULT_NEW_LAYERS_ONLY_EPOCHS if from_imagenet else 0.0
            why = start
        else:
            why = "--new_layers_only_epochs"
        if num_samples is None:  # a dry run without a dataset: say it in epochs
            if epochs:
                note += f"; only SSD's new layers train (conv1..conv5 frozen) for the first {epochs:g} epochs ({why})"
            return TrainingPlan(list(frozen), 0, note)
        steps = int(round(epochs * lr_lib.steps_per_epoch(num_samples, images_per_step)))
    if steps:
        note += (f"; only SSD's new layers train (conv1..conv5 frozen) until global step {steps} "
                 f"({why}, at --new_layers_learning_rate={opts.new_layers_learning_rate:g}), then the rest at "
                 f"--learning_rate={opts.learning_rate:g}")
    return TrainingPlan(list(frozen), steps, note)


def initialization_arguments(opts, net):
    """The arguments the trainer gives ``checkpoint_init.plan_initialization`` (also used for dry runs)."""
    return dict(checkpoint_exclude_scopes=opts.checkpoint_exclude_scopes,
                checkpoint_model_scope=opts.checkpoint_model_scope, model_scope=net.name,
                ignore_missing_vars=opts.ignore_missing_vars, derive_missing=vgg_checkpoint.derive_reduced_fc)


def write_configuration(train_dir, config):
    tf.io.gfile.makedirs(train_dir)
    path = os.path.join(train_dir, CONFIG_FILE)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(config, indent=2, sort_keys=True, default=str))
    return path


def train(opts):
    """Runs training as the flags in ``opts`` say; returns the final total loss (a ps task serves until killed)."""
    validate_options(opts)
    dist = cluster.settings_from_options(opts)
    if dist is not None and dist.job_name == cluster.PS_JOB:
        return cluster.start_server(dist).join()
    if opts.clone_on_cpu and opts.num_clones > 1:
        devices.split_cpu_into_logical_devices(opts.num_clones)
    session_config = devices.session_config(opts.gpu_memory_fraction, opts.allow_growth)
    if dist is None:
        server = None
        deploy_config = model_deploy.DeploymentConfig(num_clones=opts.num_clones, clone_on_cpu=opts.clone_on_cpu)
    else:
        server, deploy_config, session_config = _join_cluster(opts, dist, session_config)
        lost_cluster_guard = cluster.LostClusterGuard(dist.ps_hosts, lost_ps_secs=opts.dist_lost_ps_secs).start()
    is_chief = dist is None or dist.is_chief
    if not devices.available_gpus() and opts.batch_size * opts.num_clones >= 16:
        logging.warning("No GPU: on a CPU one step of %s at batch %d takes tens of seconds (and many GB of memory); "
                        "--batch_size and --image_size make it faster.", opts.model_name,
                        opts.batch_size * opts.num_clones)
    spec = resolve_dataset(opts)
    if is_chief:
        # A newest checkpoint cut short (a kill or a full disk during its write) must not end the run;
        # a damaged --checkpoint_path is named now, not after minutes of graph building.
        if not checkpoint_integrity.recover_train_dir(opts.train_dir) and opts.checkpoint_path:
            start_from = checkpoint_init.resolve_checkpoint(opts.checkpoint_path)
            if start_from:
                checkpoint_integrity.verify_checkpoint(start_from, "pass another --checkpoint_path")
    start_step = starting_global_step(opts.train_dir)
    # A resumed run must not replay the first run's data order and augmentations.
    data_seed = opts.seed if start_step == 0 else (opts.seed * 1_000_003 + start_step) % 2**31

    # Every worker of a cluster applies the same rule to the same files, so all train the same variables.
    network = build_network(opts, spec.num_classes)
    training_plan = resolve_training_plan(
        opts, network.name, spec.num_samples,
        opts.batch_size * deploy_config.num_clones * _replicas_per_step(opts, deploy_config))
    if is_chief:
        logging.info("%s", anchor_coverage.coverage_report(
            network, spec, opts.match_threshold, opts.negative_threshold,
            max_images=ANCHOR_COVERAGE_IMAGES).summary_line())

    graph = tf.Graph()
    with graph.as_default():
        parts = build_training_graph(opts, spec, deploy_config, data_seed, training_plan.frozen_scopes,
                                     training_plan.new_layers_only_steps)
        config = effective_configuration(opts, spec, parts.net, deploy_config, data_seed, training_plan)
        path = write_configuration(opts.train_dir, config) if is_chief else "the chief's train_dir"
        logging.info("Training %s on %s/%s (%d images, %d classes incl. background), %d clone(s) x batch %d, "
                     "%d anchors; configuration in %s", parts.net.name, spec.name, spec.split_name, spec.num_samples,
                     spec.num_classes, deploy_config.num_clones, opts.batch_size, parts.net.num_anchors, path)
        init_fn = None
        if is_chief:
            plan = checkpoint_init.plan_initialization(opts.train_dir, opts.checkpoint_path,
                                                       **initialization_arguments(opts, parts.net))
            checkpoint_init.log_plan(plan, note=training_plan.note)
            init_fn = checkpoint_init.init_fn_from_plan(plan)
        saver = tf1.train.Saver(max_to_keep=opts.max_to_keep,
                                keep_checkpoint_every_n_hours=opts.keep_checkpoint_every_n_hours,
                                write_version=tf1.train.SaverDef.V2)
        # Summaries run inside the chief's train step (see make_train_step_fn), not in a thread of their own.
        summary_writer = tf1.summary.FileWriter(opts.train_dir) if is_chief else None
        # With two phases each summary op carries its own phase's gradient summaries only.
        summary_op = _merge_summaries(parts.train.summaries) if is_chief else None
        first_phase = None
        if parts.train.first_phase is not None:
            but = f" (but {', '.join(s.split('/')[-1] for s in training_plan.frozen_scopes)})" \
                if training_plan.frozen_scopes else ""
            first_phase = train_op_lib.FirstPhase(
                parts.new_layers_only_steps, parts.train.first_phase.train_tensor,
                _merge_summaries(parts.train.first_phase.summaries) if is_chief else None,
                f"the VGG-16 base{but} starts training, at learning rate {opts.learning_rate:g} after a "
                f"{opts.warmup_steps}-step warmup")
        train_step_fn = train_op_lib.make_train_step_fn(
            tensors_to_log={"learning_rate": parts.learning_rate, **parts.loss_terms},
            images_per_step=opts.batch_size * deploy_config.num_clones,
            summary_op=summary_op, summary_writer=summary_writer,
            save_summaries_secs=opts.save_summaries_secs,
            max_train_seconds=None if opts.max_train_minutes is None else 60.0 * opts.max_train_minutes,
            first_phase=first_phase,
        )
        if server is not None:
            train_step_fn = lost_cluster_guard.wrap_train_step(train_step_fn)
        if server is not None:
            with tf1.device(deploy_config.variables_device()):
                chief_ready = cluster.ChiefReadyFlag()
        if server is not None and not is_chief:
            cluster.wait_for_chief_model(server.target, session_config, opts.dist_startup_timeout_secs, chief_ready)
        sync_chief = parts.sync_optimizer is not None and is_chief
        with cluster.sync_chief_stop_grace() if sync_chief else contextlib.nullcontext():
            final_loss = slim.learning.train(
                parts.train.train_tensor, logdir=opts.train_dir, init_fn=init_fn, train_step_fn=train_step_fn,
                number_of_steps=opts.max_number_of_steps, log_every_n_steps=opts.log_every_n_steps,
                summary_op=None, summary_writer=summary_writer,
                save_interval_secs=opts.save_interval_secs,
                saver=saver, session_config=session_config, master=server.target if server else "",
                is_chief=is_chief, sync_optimizer=parts.sync_optimizer, ignore_live_threads=sync_chief,
                session_wrapper=chief_ready.session_wrapper if server is not None and is_chief else None,
            )
        if server is not None:
            lost_cluster_guard.stop()
        return final_loss


def _merge_summaries(extra):
    summaries_to_merge = tf1.get_collection(tf1.GraphKeys.SUMMARIES) + list(extra)
    return tf1.summary.merge(summaries_to_merge) if summaries_to_merge else None


def _join_cluster(opts, dist, session_config):
    """A worker: starts its server, waits for the ps tasks; returns (server, DeploymentConfig, session config)."""
    session_config = cluster.distributed_session_config(dist, session_config, opts.dist_operation_timeout_secs)
    server = cluster.start_server(dist, session_config)
    cluster.wait_for_tasks(dist.ps_hosts, opts.dist_startup_timeout_secs)
    deploy_config = model_deploy.DeploymentConfig(
        num_clones=opts.num_clones, clone_on_cpu=opts.clone_on_cpu, replica_id=dist.task_index,
        num_replicas=dist.num_workers, num_ps_tasks=dist.num_ps_tasks, cluster=dist.cluster_spec())
    logging.info("Joined the cluster as %s: %s training", dist.describe(), "sync" if opts.sync_replicas else "async")
    return server, deploy_config, session_config


# Failures of training with their own exit status, before the common mapping (command_line.run_command).
_FAILURES = (
    (train_op_lib.NonFiniteLossError, command_line.EXIT_STOPPED, None),
    ((dataset_factory.DatasetError, cluster.ClusterError), command_line.EXIT_USAGE, None),
    (cluster.LOST_CLUSTER_ERRORS, cluster.LOST_CLUSTER_EXIT_CODE,
     lambda error: cluster.lost_cluster_message(f"{type(error).__name__}: {command_line.first_line(error)}")),
)


def main(argv=None):
    def run(unused_argv):
        tf1.disable_eager_execution()
        logging.set_verbosity(logging.INFO)
        return command_line.run_command(lambda: train(options_from_flags()), _FAILURES)

    app.run(lambda argv: sys.exit(run(argv)), argv=argv)


if __name__ == "__main__":
    main()
