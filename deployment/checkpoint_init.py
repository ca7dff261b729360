"""Where training starts: resume, a pre-trained checkpoint, or scratch (docs/design.md, "Start-up").

Precedence, decided by :func:`plan_initialization` (which builds nothing, so checkpoint
inspection uses it for a dry run), logged in one line by :func:`log_plan`; the ``init_fn`` of
``slim.learning.train`` is :func:`init_fn_from_plan`:

1. a checkpoint in ``train_dir``: resume. There is no ``init_fn``: the Supervisor of
   ``slim.learning.train`` restores the whole training state itself.
2. ``checkpoint_path`` (a checkpoint prefix or a directory holding one): restore the
   model variables, renaming ``model_scope`` to ``checkpoint_model_scope`` (e.g. a
   ``vgg_16`` ImageNet checkpoint into ``ssd_300_vgg``), leaving out
   ``checkpoint_exclude_scopes``, and skipping with a warning the variables whose shape
   differs from the checkpoint's (class heads for another class count). Variables the
   checkpoint lacks are an error unless ``ignore_missing_vars``, except, with a
   ``checkpoint_model_scope`` other than ``model_scope`` (a checkpoint of another network,
   e.g. ``vgg_16``), whole layers that network does not have (``conv6``, ``block8``, the
   ``*_box`` heads): those start fresh, listed as missing. A variable missing from a layer the
   checkpoint does have (``vgg_16/conv5/conv5_3/biases`` without its weights) is still an error.
3. scratch, with a warning.

A ``derive_missing`` hook fills variables the checkpoint lacks from variables it has: the trainer
passes :func:`nets.vgg_checkpoint.derive_reduced_fc`, which gives SSD's conv6/conv7 the paper's
reduced fc6/fc7 of an ImageNet VGG-16 checkpoint. Such variables are counted as derived.

A ``checkpoint_path`` that does not exist is an error, unless it is the default
(``ckpt/pre_trained``), which starts from scratch with a warning: a typo never trains
from scratch silently.
"""

import dataclasses
import os

from absl import logging
import tensorflow as tf

from deployment import checkpoint_integrity
from deployment.scopes import in_scope, split_scopes
from tf_compat import slim, tf1

DEFAULT_CHECKPOINT_PATH = "ckpt/pre_trained"

RESUME = "resume"
CHECKPOINT = "checkpoint"
SCRATCH = "scratch"


@dataclasses.dataclass
class InitializationPlan:
    """Where training starts and what it restores, decided but not done (usable for a dry run).

    Attributes:
      source: 'resume', 'checkpoint' or 'scratch'.
      checkpoint: the checkpoint file prefix resumed or restored from (None for scratch).
      restore: (variable name, name in checkpoint) pairs restored.
      skipped: (variable name, name in checkpoint, variable shape, checkpoint shape)
        for variables left fresh because the shapes (or dtypes) differ.
      excluded: variable names left fresh by ``checkpoint_exclude_scopes``.
      missing: (variable name, name in checkpoint) the checkpoint lacks (left fresh
        with ``ignore_missing_vars``, or as layers another network's checkpoint does not have).
      derived: (variable name, value, where the value came from) for variables the checkpoint
        lacks but ``derive_missing`` made from other checkpoint variables.
      fresh: names of all global variables initialised by their initializers.
      reason: why this source was chosen (a path, a warning).
    """

    source: str
    checkpoint: str | None = None
    restore: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    excluded: list = dataclasses.field(default_factory=list)
    missing: list = dataclasses.field(default_factory=list)
    derived: list = dataclasses.field(default_factory=list)
    fresh: list = dataclasses.field(default_factory=list)
    reason: str = ""

    def summary_line(self):
        """The one log line that says where training starts."""
        if self.source == RESUME:
            return f"Initialization: resuming from {self.checkpoint} ({self.reason})"
        if self.source == SCRATCH:
            return (
                f"Initialization: training FROM SCRATCH, {len(self.fresh)} variables initialised fresh "
                f"({self.reason})"
            )
        derived = f"{len(self.derived)} derived ({', '.join(self.derived_layers())}), " if self.derived else ""
        return (
            f"Initialization: restoring from {self.checkpoint}: {len(self.restore)} restored, {derived}"
            f"{len(self.skipped)} skipped (shape differs), {len(self.excluded)} excluded, "
            f"{len(self.missing)} missing from checkpoint, {len(self.fresh)} initialised fresh"
        )

    def derived_layers(self):
        """'conv6 from vgg_16/fc6'-style descriptions of the derived layers, in order."""
        layers = []
        for name, _, source in self.derived:
            text = f"{name.split('/')[-2]} from {source.rsplit('/', 1)[0]}"
            if text not in layers:
                layers.append(text)
        return layers

    def details(self):
        """Per-variable lines for the skipped, excluded and missing variables."""
        lines = [
            f"skipped {name} (checkpoint {ckpt_name}): shape {list(shape)} vs checkpoint {list(ckpt_shape)}"
            for name, ckpt_name, shape, ckpt_shape in self.skipped
        ]
        lines += [f"excluded {name}" for name in self.excluded]
        lines += [f"missing {name} (checkpoint {ckpt_name})" for name, ckpt_name in self.missing]
        lines += [f"derived {name} from {source}" for name, _, source in self.derived]
        return lines


def _map_name(name, model_scope, checkpoint_model_scope, var_name_map_fn):
    if checkpoint_model_scope is not None:
        if in_scope(name, model_scope):
            rest = name[len(model_scope) :].lstrip("/")
            name = f"{checkpoint_model_scope}/{rest}" if checkpoint_model_scope else rest
    if var_name_map_fn is not None:
        name = var_name_map_fn(name)
    return name


def _layer_of(ckpt_name, checkpoint_model_scope):
    """The layer scope of a checkpoint name: the model scope and one more component."""
    depth = len(checkpoint_model_scope.split("/")) if checkpoint_model_scope else 0
    return "/".join(ckpt_name.split("/")[: depth + 1])


def _missing_from_covered_layers(missing, ckpt_shapes, checkpoint, checkpoint_model_scope):
    """The missing variables of layers the checkpoint's network has; with a checkpoint of another
    network (``vgg_16``), layers it never had (SSD's extra blocks and heads) are fresh, not errors.
    A checkpoint with nothing under ``checkpoint_model_scope`` is an error (a wrong scope)."""
    if checkpoint_model_scope:
        names = [name for name in ckpt_shapes if in_scope(name, checkpoint_model_scope)]
    else:
        names = list(ckpt_shapes)
    if not names:
        scopes = ", ".join(sorted({name.split("/", 1)[0] for name in ckpt_shapes}))
        raise ValueError(
            f"checkpoint {checkpoint} has no variables under --checkpoint_model_scope={checkpoint_model_scope} "
            f"(its top-level scopes: {scopes})"
        )
    covered = {_layer_of(name, checkpoint_model_scope) for name in names}
    return [(name, ckpt_name) for name, ckpt_name in missing if _layer_of(ckpt_name, checkpoint_model_scope) in covered]


def resolve_checkpoint(path):
    """A checkpoint prefix for ``path`` (prefix or directory), or None if there is none."""
    if tf.io.gfile.isdir(path):
        return tf.train.latest_checkpoint(path)
    if tf.io.gfile.exists(path + ".index") or tf.io.gfile.exists(path):
        return path
    return None


def _same_path(a, b):
    return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


def plan_initialization(
    train_dir,
    checkpoint_path,
    checkpoint_exclude_scopes=None,
    checkpoint_model_scope=None,
    model_scope=None,
    ignore_missing_vars=False,
    default_checkpoint_path=DEFAULT_CHECKPOINT_PATH,
    var_name_map_fn=None,
    variables_to_restore=None,
    derive_missing=None,
):
    """Decides where training starts; see the module docstring. Builds nothing in the graph.

    Args:
      train_dir: the training directory (resume source); may be None.
      checkpoint_path: checkpoint prefix or directory to fine-tune from; may be None.
      checkpoint_exclude_scopes: comma-separated string or list of scopes not restored.
      checkpoint_model_scope: the model scope name inside the checkpoint ('' for none).
      model_scope: the model scope in this graph, replaced by ``checkpoint_model_scope``.
      ignore_missing_vars: leave variables the checkpoint lacks fresh instead of failing.
      default_checkpoint_path: the path whose absence only warns.
      var_name_map_fn: optional ``name -> checkpoint name`` applied after the scope mapping.
      variables_to_restore: candidates; default ``slim.get_model_variables()``.
      derive_missing: optional ``(name in checkpoint, checkpoint reader) -> (value, source) or
        None`` for variables the checkpoint lacks (a value of another shape is ignored).

    Returns:
      :class:`InitializationPlan`.

    Raises:
      FileNotFoundError: ``checkpoint_path`` names no checkpoint (and is not the default).
      ValueError: variables missing from the checkpoint without ``ignore_missing_vars`` (see
        the module docstring for another network's layers); ``checkpoint_model_scope`` without
        ``model_scope``, or naming no scope of the checkpoint.
    """
    all_names = [v.op.name for v in tf1.global_variables()]
    if train_dir:
        resume = tf.train.latest_checkpoint(train_dir)
        if resume:
            return InitializationPlan(
                RESUME, checkpoint=resume, reason=f"checkpoint found in train_dir {train_dir}"
            )
    if not checkpoint_path:
        return InitializationPlan(SCRATCH, fresh=all_names, reason="no checkpoint_path given")
    checkpoint = resolve_checkpoint(checkpoint_path)
    if checkpoint is None:
        if default_checkpoint_path and _same_path(checkpoint_path, default_checkpoint_path):
            return InitializationPlan(
                SCRATCH,
                fresh=all_names,
                reason=f"the default checkpoint_path {checkpoint_path} holds no checkpoint",
            )
        kind = "directory holds no checkpoint" if tf.io.gfile.isdir(checkpoint_path) else "does not exist"
        raise FileNotFoundError(
            f"--checkpoint_path {checkpoint_path}: {kind} (expected a checkpoint prefix such as "
            "model.ckpt-1000 with its .index file, or a directory with a 'checkpoint' file)"
        )
    if checkpoint_model_scope is not None and model_scope is None:
        raise ValueError("checkpoint_model_scope needs model_scope (the scope it replaces in this graph)")
    checkpoint_integrity.verify_checkpoint(checkpoint, "pass another --checkpoint_path")

    reader = tf.train.load_checkpoint(checkpoint)
    ckpt_shapes = reader.get_variable_to_shape_map()
    ckpt_dtypes = reader.get_variable_to_dtype_map()
    exclusions = split_scopes(checkpoint_exclude_scopes)
    if variables_to_restore is None:
        variables_to_restore = slim.get_model_variables()

    plan = InitializationPlan(CHECKPOINT, checkpoint=checkpoint, reason=f"checkpoint_path {checkpoint_path}")
    for var in variables_to_restore:
        name = var.op.name
        if any(in_scope(name, scope) for scope in exclusions):
            plan.excluded.append(name)
            continue
        ckpt_name = _map_name(name, model_scope, checkpoint_model_scope, var_name_map_fn)
        if ckpt_name not in ckpt_shapes:
            plan.missing.append((name, ckpt_name))
            continue
        shape = var.shape.as_list()
        if shape != list(ckpt_shapes[ckpt_name]) or var.dtype.base_dtype != ckpt_dtypes[ckpt_name]:
            plan.skipped.append((name, ckpt_name, shape, list(ckpt_shapes[ckpt_name])))
            continue
        plan.restore.append((name, ckpt_name))
    if derive_missing is not None and plan.missing:
        shapes = {var.op.name: var.shape.as_list() for var in variables_to_restore}
        still_missing = []
        for name, ckpt_name in plan.missing:
            made = derive_missing(ckpt_name, reader)
            if made is not None and list(made[0].shape) == shapes[name]:
                plan.derived.append((name, made[0], made[1]))
            else:
                still_missing.append((name, ckpt_name))
        plan.missing = still_missing
    if plan.missing and not ignore_missing_vars:
        errors = plan.missing
        if checkpoint_model_scope is not None and checkpoint_model_scope != model_scope:
            errors = _missing_from_covered_layers(plan.missing, ckpt_shapes, checkpoint, checkpoint_model_scope)
        if errors:
            shown = ", ".join(f"{n} (as {c})" for n, c in errors[:10])
            raise ValueError(
                f"{len(errors)} variable(s) are not in checkpoint {checkpoint}: {shown}"
                f"{' ...' if len(errors) > 10 else ''}. Check --checkpoint_model_scope/--model_scope, "
                "exclude them with --checkpoint_exclude_scopes, or pass --ignore_missing_vars."
            )
    restored = {name for name, _ in plan.restore} | {name for name, _, _ in plan.derived}
    plan.fresh = [name for name in all_names if name not in restored]
    if not plan.restore:
        plan.source = SCRATCH
        plan.reason = f"nothing in {checkpoint} matches the model variables"
    return plan


def init_fn_from_plan(plan):
    """The ``init_fn(session)`` restoring ``plan.restore`` and loading ``plan.derived``; None unless
    the source is a checkpoint."""
    if plan.source != CHECKPOINT:
        return None
    variables = {v.op.name: v for v in tf1.global_variables()}
    var_list = {ckpt_name: variables[name] for name, ckpt_name in plan.restore}
    saver = tf1.train.Saver(var_list, reshape=False, sharded=False, name="init_from_checkpoint")
    checkpoint = plan.checkpoint
    # One placeholder-fed assignment per derived variable: values as graph constants would bloat the graph.
    derived = []
    for name, value, _ in plan.derived:
        variable = variables[name]
        with tf1.device(variable.device), tf1.name_scope("init_derived"):
            placeholder = tf1.placeholder(variable.dtype.base_dtype, value.shape)
            derived.append((variable.assign(placeholder, read_value=False), placeholder, value))

    def init_fn(session):
        saver.restore(session, checkpoint)
        for assign, placeholder, value in derived:
            session.run(assign, {placeholder: value})

    return init_fn


def log_plan(plan, note=None):
    """Logs the one summary line (a warning for scratch or skips; ``note`` appended) and the
    per-variable details."""
    line = plan.summary_line() + (f"; {note}" if note else "")
    if plan.source == SCRATCH or plan.skipped or plan.missing:
        logging.warning(line)
    else:
        logging.info(line)
    for detail in plan.details():
        logging.info("Initialization: %s", detail)

