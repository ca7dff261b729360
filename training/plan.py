"""What a run trains on, from where it starts, and what trains when: decided before any graph is built.

* :func:`resolve_dataset`: ``--dataset_dir``, or the built-in sample dataset.
* :func:`starting_global_step`: the step a run resumes from (0 for a new run).
* :func:`resolve_batch_size`: ``--batch_size``, or the default for this machine (smaller without a GPU).
* :func:`resolve_training_plan`: which scopes stay frozen and for how many steps only some layers
  train (SSD's new layers: the recipe from ImageNet VGG-16 weights, see docs/accuracy.md; or
  ``--trainable_scopes`` until ``--unfreeze_at_step``): one two-phase mechanism, two ways to ask.
* :func:`last_global_step`: where the run ends (``--max_number_of_steps`` or ``--num_epochs``).
* :func:`initialization_arguments`: what the trainer (and the checkpoint inspector's dry run) give
  :func:`deployment.checkpoint_init.plan_initialization`.

Every worker of a cluster applies the same rules to the same files, so all train the same variables.
"""

import dataclasses

from absl import logging
import tensorflow as tf

from datasets import dataset_factory, sample_data
from deployment import checkpoint_init, devices, learning_rate as lr_lib
from deployment.scopes import split_scopes
from nets import ssd_vgg_common, vgg_checkpoint
from training.config import CPU_DEFAULT_BATCH_SIZE, DEFAULT_BATCH_SIZE, TrainingRecord

# The recipe from ImageNet VGG-16 weights: epochs of the training split during which only SSD's new layers train.
DEFAULT_NEW_LAYERS_ONLY_EPOCHS = 4.0


def resolve_dataset(config):
    """The :class:`datasets.dataset_factory.DatasetSpec` of ``--dataset_dir``, or of the built-in sample dataset."""
    dataset_dir = config.dataset_dir
    if not dataset_dir:
        dataset_dir = sample_data.ensure_sample_dataset()
        logging.info("No --dataset_dir: training on the built-in sample dataset in %s", dataset_dir)
    return dataset_factory.get_dataset(config.dataset_name, config.dataset_split_name, dataset_dir)


def resolve_batch_size(config, gpu_visible=None):
    """``config`` with ``--batch_size`` decided: the flag's value when given; else DEFAULT_BATCH_SIZE on a
    machine with a GPU, CPU_DEFAULT_BATCH_SIZE without one (said in one line: a CPU step at the GPU
    default takes about a minute and ~11 GiB, and a first run should show the loss falling within minutes).
    ``gpu_visible``: default, whether TensorFlow sees a GPU."""
    if config.batch_size is not None:
        return config
    if gpu_visible is None:
        gpu_visible = bool(devices.available_gpus())
    if gpu_visible:
        return config.replace(batch_size=DEFAULT_BATCH_SIZE)
    logging.info("No GPU visible and no --batch_size: training at batch %d on the CPU (%d with a GPU); "
                 "--batch_size sets it.", CPU_DEFAULT_BATCH_SIZE, DEFAULT_BATCH_SIZE)
    return config.replace(batch_size=CPU_DEFAULT_BATCH_SIZE)


def resolve_precision(config, gpu_visible=None, cpu_bfloat16=None):
    """``config`` with ``--precision=auto`` decided (said in one line): ``mixed_bf16`` on a machine without a
    GPU whose CPU computes bfloat16 (AVX-512 BF16 or AMX: faster at the same accuracy, BENCHMARKS.md), else
    ``fp32`` (on GPUs the choice is the user's: bench/bench_gpu.py measures it). Other values pass."""
    if config.precision != "auto":
        return config
    if gpu_visible is None:
        gpu_visible = bool(devices.available_gpus())
    if cpu_bfloat16 is None:
        cpu_bfloat16 = devices.cpu_computes_bfloat16()
    if not gpu_visible and cpu_bfloat16:
        logging.info("--precision=auto: mixed_bf16, this CPU computes bfloat16 and no GPU is visible "
                     "(--precision=fp32 for float32 towers)")
        return config.replace(precision="mixed_bf16")
    return config.replace(precision="fp32")


def last_global_step(config, num_samples, images_per_step):
    """The global step the run stops at: ``--max_number_of_steps``, or ``--num_epochs`` of the
    ``num_samples`` training images at ``images_per_step`` (at least 1 step); None: until interrupted."""
    if config.num_epochs is None:
        return config.max_number_of_steps
    return max(1, lr_lib.epochs_to_steps(config.num_epochs, num_samples, images_per_step))


def latest_checkpoint(train_dir):
    """The newest checkpoint in ``train_dir``, or None (also when the directory does not exist)."""
    return tf.train.latest_checkpoint(train_dir) if train_dir and tf.io.gfile.isdir(train_dir) else None


def starting_global_step(train_dir):
    """The global step of the checkpoint training will resume from (0 when there is none)."""
    latest = latest_checkpoint(train_dir)
    if not latest:
        return 0
    reader = tf.train.load_checkpoint(latest)
    return int(reader.get_tensor("global_step")) if reader.has_tensor("global_step") else 0


def data_seed_for(seed, start_step):
    """The seed of a run's data order and augmentations: a resumed run must not replay the first run's."""
    return seed if start_step == 0 else (seed * 1_000_003 + start_step) % 2**31


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """What trains when."""

    frozen_scopes: tuple  # scopes never trained
    # Global steps of the first phase (0: none), during which only the first phase's layers train: SSD's new
    # layers (--new_layers_only_epochs), or first_phase_scopes (--trainable_scopes until --unfreeze_at_step).
    new_layers_only_steps: int
    note: str  # the start-up line's note saying both
    # The scopes the first phase trains; None: SSD's own layers (everything but the VGG-16 base). When
    # given, the second phase trains the whole network (but frozen_scopes), not only --trainable_scopes.
    first_phase_scopes: tuple | None = None

    @property
    def second_phase_trains(self):
        """What starts training at the switch, for the log line."""
        return "the VGG-16 base" if self.first_phase_scopes is None else "the whole network"


def resolve_training_plan(config, model_scope, num_samples=None, images_per_step=None):
    """The :class:`TrainingPlan` for ``--freeze_conv1_conv2`` and ``--new_layers_only_epochs``.

    By default, training that starts from an ImageNet VGG-16 checkpoint follows the recipe: conv1
    and conv2 stay frozen (the paper), and only SSD's new layers train for the first
    ``DEFAULT_NEW_LAYERS_ONLY_EPOCHS`` epochs (a fresh conv6 and extra layers at a high learning
    rate would otherwise wreck the pretrained conv5 features). A resumed run keeps what it started
    with (its ``training_config.json``), so that its optimizer state still fits.
    ``num_samples`` (images in the training split) and ``images_per_step`` turn epochs into steps;
    without them (a dry run without a dataset) the note says it in epochs.
    """
    resuming = latest_checkpoint(config.train_dir) is not None
    recorded = (TrainingRecord.read(config.train_dir) if resuming else None) or TrainingRecord()
    from_imagenet = False
    if not resuming and config.checkpoint_path:
        checkpoint = checkpoint_init.resolve_checkpoint(config.checkpoint_path)
        if checkpoint is not None:
            names = tf.train.load_checkpoint(checkpoint).get_variable_to_shape_map()
            from_imagenet = vgg_checkpoint.is_imagenet_vgg16(names, config.checkpoint_model_scope or model_scope)
    start = ("as in the run being resumed" if resuming else
             "the recipe from ImageNet VGG-16 weights" if from_imagenet else "not starting from ImageNet VGG-16 weights")

    early_layers = ssd_vgg_common.vgg16_base_scopes(model_scope)[:2]
    if config.freeze_conv1_conv2 != "auto":
        frozen = early_layers if config.freeze_conv1_conv2 == "true" else []
        why = f"--freeze_conv1_conv2={config.freeze_conv1_conv2}"
    elif resuming:
        frozen, why = list(recorded.frozen_scopes), start
    elif from_imagenet:
        frozen, why = early_layers, "the paper's recipe from ImageNet VGG-16 weights; --freeze_conv1_conv2=false trains them"
    else:
        frozen, why = [], start
    note = (f"frozen (not trained): {', '.join(scope.split('/')[-1] for scope in frozen)} ({why})" if frozen
            else f"every layer trained ({why})")

    if config.unfreeze_at_step is not None or config.unfreeze_at_epoch is not None:
        return _unfreeze_plan(config, frozen, note, num_samples, images_per_step)
    if resuming and recorded.first_phase_scopes is not None and config.new_layers_only_epochs is None:
        steps = recorded.new_layers_only_steps
        return TrainingPlan(tuple(frozen), steps, note + _unfreeze_note(recorded.first_phase_scopes, steps, start),
                            tuple(recorded.first_phase_scopes))
    epochs = config.new_layers_only_epochs
    if epochs is not None and epochs < 0:
        raise ValueError(f"--new_layers_only_epochs must be >= 0, got {epochs}")
    if epochs is None and resuming:
        steps, why = recorded.new_layers_only_steps, start
    else:
        if epochs is None:
            epochs = DEFAULT_NEW_LAYERS_ONLY_EPOCHS if from_imagenet else 0.0
            why = start
        else:
            why = "--new_layers_only_epochs"
        if num_samples is None:
            if epochs:
                note += f"; only SSD's new layers train (conv1..conv5 frozen) for the first {epochs:g} epochs ({why})"
            return TrainingPlan(tuple(frozen), 0, note)
        steps = lr_lib.epochs_to_steps(epochs, num_samples, images_per_step)
    if steps:
        note += (f"; only SSD's new layers train (conv1..conv5 frozen) until global step {steps} "
                 f"({why}, at --new_layers_learning_rate={config.new_layers_learning_rate:g}), then the rest at "
                 f"--learning_rate={config.learning_rate:g}")
    return TrainingPlan(tuple(frozen), steps, note)


def _unfreeze_plan(config, frozen, note, num_samples, images_per_step):
    """--unfreeze_at_step/--unfreeze_at_epoch: --trainable_scopes (default: SSD's new layers) first, then all."""
    first_scopes = tuple(split_scopes(config.trainable_scopes)) or None
    if config.unfreeze_at_step is not None:
        steps, flag = config.unfreeze_at_step, "--unfreeze_at_step"
    elif num_samples is None:
        return TrainingPlan(tuple(frozen), 0, note + f"; the whole network trains from epoch "
                            f"{config.unfreeze_at_epoch:g} (--unfreeze_at_epoch)", first_scopes)
    else:
        steps = lr_lib.epochs_to_steps(config.unfreeze_at_epoch, num_samples, images_per_step)
        flag = f"--unfreeze_at_epoch={config.unfreeze_at_epoch:g}"
    return TrainingPlan(tuple(frozen), steps, note + _unfreeze_note(first_scopes, steps, flag), first_scopes)


def _unfreeze_note(first_scopes, steps, why):
    what = ", ".join(first_scopes) if first_scopes else "SSD's new layers (conv1..conv5 frozen)"
    return f"; only {what} train until global step {steps} ({why}), then the whole network"


def initialization_arguments(config, net):
    """The arguments the trainer gives ``checkpoint_init.plan_initialization`` (also used for dry runs)."""
    return dict(checkpoint_exclude_scopes=config.checkpoint_exclude_scopes,
                checkpoint_model_scope=config.checkpoint_model_scope, model_scope=net.name,
                ignore_missing_vars=config.ignore_missing_vars, derive_missing=vgg_checkpoint.derive_reduced_fc)
