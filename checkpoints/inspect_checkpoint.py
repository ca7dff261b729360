"""The trainer's init_fn as a dry run: what a checkpoint would give the network, before training.

    python -m checkpoints.inspect_checkpoint --checkpoint_path=ckpt/pre_trained \\
        --checkpoint_model_scope=vgg_16 --dataset_dir=data/bccd --image_size=300

lists the checkpoint's variables and shapes, says for each whether the network restores it,
skips it (shape differs: class heads of another class count) or does not use it, lists the
network's variables that start fresh, and ends with the line the trainer logs.

It takes the trainer's own flags (:class:`training.config.TrainingConfig`: ``--train_dir``, ``--model_name``,
``--image_size``, ``--checkpoint_exclude_scopes``, ``--ignore_missing_vars``, ``--optimizer``, ...)
and builds what the trainer builds, then asks ``deployment.checkpoint_init.plan_initialization``
with the arguments the trainer passes, so its counts are the trainer's by construction:

- by default the whole training graph (:func:`training.graph.build_training_graph`) for the
  dataset of ``--dataset_dir`` (or the built-in sample dataset, as the trainer): every count of
  the summary line, "initialised fresh" included, is what the trainer logs;
- with ``--num_classes=N`` (background included) no dataset is needed: the network function the
  trainer's towers use is built on a stand-in batch of images. Restored, skipped,
  excluded and missing are the trainer's; "initialised fresh" then counts model variables only
  (the trainer adds ``global_step``, optimizer slots and the other training state).

Exit status: 0 when the trainer would start, 1 when it would stop on the checkpoint (the
reason is printed after the listing), 2 for unusable arguments.
"""

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import package_guard  # noqa: E402

package_guard.ensure_project_packages()

from absl import flags, logging  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import command_line  # noqa: E402
from datasets import dataset_factory  # noqa: E402
from deployment import checkpoint_init, model_deploy  # noqa: E402
from nets import nets_factory  # noqa: E402
from tf_compat import slim, tf1  # noqa: E402
from training import graph as graph_lib, plan as plan_lib  # noqa: E402
from training.config import TrainingConfig, define_flags  # noqa: E402


RESTORE = "restore"
SKIP = "skip"
UNUSED = "unused"
DERIVE = "derive"


@dataclasses.dataclass
class Inspection:
    """The dry run's result.

    Attributes:
      plan: the :class:`deployment.checkpoint_init.InitializationPlan` the trainer would follow
        (computed with ``ignore_missing_vars`` when the trainer would stop, to list everything).
      error: why the trainer would stop on this checkpoint, or None.
      network: description of the network built.
      model_variables: {name: shape} of the network's model variables.
      num_global_variables: all global variables of the graph built.
      training_graph: whether the whole training graph was built (else the network only).
      checkpoint_shapes: {name: shape} of the checkpoint planned from ({} for scratch).
      training_note: what the trainer trains when, as its start-up line says (TrainingPlan.note).
    """

    plan: checkpoint_init.InitializationPlan
    error: str | None
    network: str
    model_variables: dict
    num_global_variables: int
    training_graph: bool
    checkpoint_shapes: dict
    training_note: str = ""

    def checkpoint_status(self):
        """[(checkpoint name, shape, status, network variable or None, network shape or None)] by name."""
        restored = {ckpt_name: name for name, ckpt_name in self.plan.restore}
        skipped = {ckpt_name: name for name, ckpt_name, _, _ in self.plan.skipped}
        derived_from = {source.split(" ", 1)[0]: name for name, _, source in self.plan.derived}
        rows = []
        for ckpt_name in sorted(self.checkpoint_shapes):
            shape = list(self.checkpoint_shapes[ckpt_name])
            if ckpt_name in derived_from:
                name = derived_from[ckpt_name]
                rows.append((ckpt_name, shape, DERIVE, name, list(self.model_variables[name])))
            elif ckpt_name in restored:
                rows.append((ckpt_name, shape, RESTORE, restored[ckpt_name], shape))
            elif ckpt_name in skipped:
                name = skipped[ckpt_name]
                rows.append((ckpt_name, shape, SKIP, name, list(self.model_variables[name])))
            else:
                rows.append((ckpt_name, shape, UNUSED, None, None))
        return rows

    def startup_line(self):
        """The trainer's start-up line: where it starts and what it trains."""
        return self.plan.summary_line() + (f"; {self.training_note}" if self.training_note else "")

    def lines(self):
        """The report, one line each (the last is the trainer's start-up line)."""
        plan = self.plan
        lines = [f"network: {self.network}, {len(self.model_variables)} model variables, "
                 f"{self.num_global_variables} global variables "
                 f"({'the whole training graph' if self.training_graph else 'the network only'})"]
        if plan.source == checkpoint_init.RESUME:
            lines.append(f"the trainer resumes from {plan.checkpoint} (its whole training state) and ignores "
                         "--checkpoint_path; use another --train_dir to start from --checkpoint_path")
        elif self.checkpoint_shapes:
            rows = self.checkpoint_status()
            parameters = sum(int(np.prod(shape, dtype=np.int64)) for _, shape, *_ in rows)
            lines.append(f"checkpoint {plan.checkpoint}: {len(rows)} variables, {parameters:,} parameters")
            for ckpt_name, shape, status, name, shape_in_network in rows:
                if status == RESTORE:
                    target = "" if name == ckpt_name else f" -> {name}"
                    lines.append(f"  restore  {ckpt_name} {shape}{target}")
                elif status == SKIP:
                    lines.append(f"  skip     {ckpt_name} {shape} -> {name} {shape_in_network} (shape differs)")
                elif status == DERIVE:
                    lines.append(f"  derive   {ckpt_name} {shape} -> {name} {shape_in_network} (reduced)")
                else:
                    lines.append(f"  unused   {ckpt_name} {shape}")
            fresh = [(name, "skipped: shape differs") for name, _, _, _ in plan.skipped]
            fresh += [(name, "excluded by --checkpoint_exclude_scopes") for name in plan.excluded]
            fresh += [(name, f"not in checkpoint as {ckpt_name}") for name, ckpt_name in plan.missing]
            lines.append(f"network variables initialised fresh: {len(fresh)} model variables")
            for name, why in sorted(fresh):
                lines.append(f"  fresh    {name} {list(self.model_variables[name])} ({why})")
            others = len(plan.fresh) - len(fresh)
            if others:
                lines.append(f"  and {others} other variables (global_step, optimizer slots, moving averages)")
        if self.error:
            lines.append(f"the trainer would stop: {self.error}")
        else:
            lines.append(self.startup_line())
        return lines


def build_network_only(config, num_classes):
    """The network's model variables, as the trainer's towers create them (the network function on a
    stand-in batch of images; the loss and the other towers create no variables)."""
    tf1.set_random_seed(config.seed)
    net = graph_lib.build_network(config, num_classes)
    height, width = net.params.img_shape
    images = tf1.placeholder(tf.float32, [config.batch_size, height, width, 3], name="image")
    nets_factory.network_fn_of(net, weight_decay=config.weight_decay, is_training=True,
                               data_format=config.data_format, dropout_keep_prob=config.dropout_keep_prob)(images)
    return net


def build_training_graph(config, model_scope):
    """The trainer's whole training graph for the dataset the options name; returns (net, TrainingPlan)."""
    spec = plan_lib.resolve_dataset(config)
    plan = plan_lib.resolve_training_plan(config, model_scope, spec.num_samples, config.images_per_clone_step)
    deploy_config = model_deploy.DeploymentConfig(num_clones=config.num_clones, clone_on_cpu=config.clone_on_cpu)
    graph = graph_lib.build_training_graph(config, spec, deploy_config, frozen_scopes=plan.frozen_scopes,
                                           new_layers_only_steps=plan.new_layers_only_steps,
                                           first_phase_scopes=plan.first_phase_scopes)
    return graph.net, plan


def inspect(opts, num_classes=None):
    """Builds the graph (see the module docstring) and plans the initialisation; returns :class:`Inspection`.

    ``opts`` is the trainer's :class:`training.config.TrainingConfig`.

    Raises:
      FileNotFoundError: ``checkpoint_path`` names no checkpoint (as in the trainer).
      dataset_factory.DatasetError: no usable dataset (whole-graph mode).
    """
    opts = plan_lib.resolve_batch_size(opts)  # as the trainer does: the same graph, the same plan
    model_scope = nets_factory.get_network(opts.model_name).name
    with tf.Graph().as_default():
        if num_classes:
            training_plan = plan_lib.resolve_training_plan(opts, model_scope)
            net = build_network_only(opts, num_classes)
        else:
            net, training_plan = build_training_graph(opts, model_scope)
        model_variables = {v.op.name: tuple(v.shape.as_list()) for v in slim.get_model_variables()}
        num_global_variables = len(tf1.global_variables())
        arguments = plan_lib.initialization_arguments(opts, net)
        error = None
        try:
            plan = checkpoint_init.plan_initialization(opts.train_dir, opts.checkpoint_path, **arguments)
        except ValueError as stop:
            if opts.ignore_missing_vars:
                raise
            error = str(stop)
            plan = checkpoint_init.plan_initialization(
                opts.train_dir, opts.checkpoint_path, **dict(arguments, ignore_missing_vars=True))
    checkpoint_shapes = {}
    if plan.source == checkpoint_init.CHECKPOINT or (plan.checkpoint and plan.source == checkpoint_init.SCRATCH):
        reader = tf.train.load_checkpoint(plan.checkpoint)
        checkpoint_shapes = {name: tuple(shape) for name, shape in reader.get_variable_to_shape_map().items()}
    height, width = net.params.img_shape
    description = f"{net.name}, {net.params.num_classes} classes, input {height}x{width}"
    training_note = training_plan.note
    return Inspection(plan=plan, error=error, network=description, model_variables=model_variables,
                      num_global_variables=num_global_variables, training_graph=not num_classes,
                      checkpoint_shapes=checkpoint_shapes, training_note=training_note)


FLAGS = define_flags(flags.FlagValues())
flags.DEFINE_integer("num_classes", None,
                     "Class count (background included) to build the network for, instead of the dataset's; then no "
                     "dataset is read and 'initialised fresh' counts model variables only.", flag_values=FLAGS)


def main(argv=None):
    command_line.parse_flags(FLAGS, argv, __doc__)
    tf1.disable_eager_execution()
    logging.set_verbosity(logging.WARNING)
    try:
        result = inspect(TrainingConfig.from_flags(FLAGS), num_classes=FLAGS.num_classes)
    except (FileNotFoundError, ValueError, dataset_factory.DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(result.lines()))
    sys.exit(1 if result.error else 0)


if __name__ == "__main__":
    main()
