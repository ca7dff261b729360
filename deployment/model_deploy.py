"""Deploys a model as one clone (tower) per device: TF-Slim's ``deployment/model_deploy.py`` for TF 2.x graph mode.

A drop-in for TF-Slim's module: :class:`DeploymentConfig`, :func:`create_clones`,
:func:`optimize_clones`, :func:`deploy`, :class:`Clone` and :class:`DeployedModel` have
TF-Slim's names, arguments, defaults and results, so a TF-Slim training script runs
unchanged with ``from deployment import model_deploy``. Usage, as TF-Slim documents it::

    config = model_deploy.DeploymentConfig(num_clones=2, clone_on_cpu=True)
    with tf.device(config.inputs_device()):
        images, labels = ...
    with tf.device(config.optimizer_device()):
        optimizer = tf.compat.v1.train.MomentumOptimizer(learning_rate, 0.9)

    def model_fn(images, labels):
        predictions = network(images)
        tf.compat.v1.losses.log_loss(labels, predictions)   # added to GraphKeys.LOSSES

    model = model_deploy.deploy(config, model_fn, [images, labels], optimizer=optimizer)
    slim.learning.train(model.train_op, logdir, summary_op=model.summary_op)

Design: the config is a pure plan
----------------------------------
:class:`DeploymentConfig` computes its devices from its arguments alone, exactly as
TF-Slim's does; it never looks at the machine or the cluster. A graph for a 4-GPU
machine or for a cluster can therefore be built, inspected and exported anywhere, and
``allow_soft_placement`` runs ``/device:GPU:0`` on the CPU of a machine without GPU.
Whether this machine and cluster can run a plan is a separate question, answered before
the session starts by :func:`deployment.deployment_checks.check_deployment`.

Devices (``W`` is the worker device: ``''``, or ``/job:worker`` with ps tasks)::

    variables        /device:CPU:0; with ps tasks a device function: round robin
                     over /job:ps/task:<t>/device:CPU:0 (below)
    inputs           W/device:CPU:0
    optimizer        W/device:CPU:0
    clone i          W/device:GPU:i; with clone_on_cpu W/device:CPU:0 for every clone,
                     or W/device:CPU:i with cpu_device_per_clone (an addition, below)
    caching          None; with ps tasks each read is cached on the reading op's device

The worker device names no task, as TF-Slim's: a worker's session must see only its own
task's devices, which ``ConfigProto.device_filters`` (``/job:ps``,
``/job:worker/task:<i>``) guarantee (:func:`deployment.cluster.distributed_session_config`).

Parameter servers: :meth:`DeploymentConfig.variables_device` returns a new round robin
each call, as TF-Slim's: the variables created under it go to ps tasks 0, 1, 2, ... in
creation order. TF-Slim's chooser knows only the ``Variable*`` ops of reference
variables; a TF 2 resource variable is a ``VarHandleOp`` plus ops using its handle
(``VarIsInitializedOp``, ``AssignVariableOp``, ``ReadVariableOp``, ...), and a resource
lives on one device, so here every op in the ``PS_OPS`` creating group takes the next
task and every op taking a handle made on a ps task goes to that handle's device.

Clones, losses, summaries (TF-Slim's rules)
-------------------------------------------
Clone ``i`` is built under ``tf.name_scope('clone_i')`` (no scope with one clone) on its
device, reusing the variables of clone 0; every variable it creates, by any API, is
placed on the variables device. A clone's loss is the sum of the
``GraphKeys.LOSSES`` of its scope divided by the number of clones, so the gradients,
summed over clones, are their average; the regularization losses are added once, to
the first clone. :func:`deploy` runs the update ops of the first clone only and merges
the summaries that existed before it, those of the first clone and ``total_loss``.

Summary tags are the ones TF-Slim's code names: each clone's loss ``Losses/<clone
scope>/clone_loss`` and the regularization loss ``Losses/regularization_loss`` (one clone:
``Losses/clone_loss``; two: ``Losses/clone_0/clone_loss``, ``Losses/clone_1/clone_loss``).
TF-Slim's own module creates them with ``tf.summary.scalar`` inside the clone's name scope,
where TF 1 prefixes the tag with that scope (``clone_1/Losses/clone_1//clone_loss``); here the
tags are exactly the names written, so TensorBoard groups the clones' losses under ``Losses``. :func:`deploy` adds ``total_loss`` (TF 1
makes its tag ``total_loss_1``: the op ``total_loss`` exists already, as in TF-Slim).

Compatible additions (keyword arguments whose defaults give TF-Slim's behaviour)
---------------------------------------------------------------------------------
- ``DeploymentConfig(cpu_device_per_clone=True)`` with ``clone_on_cpu``: clone ``i`` on
  ``/device:CPU:i``, for a CPU split into logical devices
  (:func:`deployment.devices.split_cpu_into_logical_devices`).
- ``optimize_clones(averaging_device=...)``: where the gradient sums, the total loss and
  the loss summaries go (default: the enclosing device scope, as TF-Slim).
- Read-only properties ``ps_job_name``, ``worker_job_name``, ``cpu_device_per_clone``;
  :func:`get_or_create_global_step` and :func:`add_gradient_summaries` for training
  loops that build their own train op from :func:`create_clones` and
  :func:`optimize_clones`; :data:`PS_OPS`.
"""

import collections
import contextlib

from absl import logging
import tensorflow as tf

from tf_compat import tf1

__all__ = [
    "Clone",
    "DeployedModel",
    "DeploymentConfig",
    "PS_OPS",
    "add_gradient_summaries",
    "create_clones",
    "deploy",
    "get_or_create_global_step",
    "optimize_clones",
]

Clone = collections.namedtuple(
    "Clone",
    [
        "outputs",  # whatever model_fn returned
        "scope",  # the clone's name scope, e.g. 'clone_1/' ('' with one clone)
        "device",  # the clone's device, e.g. '/device:GPU:1'
    ],
)

DeployedModel = collections.namedtuple(
    "DeployedModel",
    [
        "train_op",  # the total loss, after the gradient step and the update ops (None without optimizer)
        "summary_op",  # merged summaries (None if there are none)
        "total_loss",  # sum of the clone losses (each divided by num_clones) + regularization once
        "clones",  # list of Clone
    ],
)

# Ops that create a resource living on a ps task: TensorFlow's STANDARD_PS_OPS, which
# include the resource variable's VarHandleOp. Each takes the next task of the round robin.
_RESOURCE_CREATING_PS_OPS = (
    "Variable",
    "VariableV2",
    "AutoReloadVariable",
    "MutableHashTable",
    "MutableHashTableV2",
    "MutableHashTableOfTensors",
    "MutableHashTableOfTensorsV2",
    "MutableDenseHashTable",
    "MutableDenseHashTableV2",
    "VarHandleOp",
    "BoostedTreesEnsembleResourceHandleOp",
    "BoostedTreesQuantileStreamResourceHandleOp",
    "ResourceConditionalAccumulator",
    "DecisionTreeResource",
)
# Ops that use a variable's handle while it is created; they must run where the handle lives.
_RESOURCE_USING_PS_OPS = (
    "VarIsInitializedOp",
    "ReadVariableOp",
    "AssignVariableOp",
    "AssignAddVariableOp",
    "AssignSubVariableOp",
    "DestroyResourceOp",
)
# Every op that belongs on a ps task, e.g. for tf.compat.v1.train.replica_device_setter(ps_ops=PS_OPS).
PS_OPS = _RESOURCE_CREATING_PS_OPS + _RESOURCE_USING_PS_OPS


class _ResourceFollowingRoundRobin:
    """The variables device function with ps tasks: TF-Slim's round robin, aware of resources.

    - An op that already has a device keeps it (TF-Slim's rule: an explicit
      ``tf.device`` inside the variables scope wins).
    - An op creating a resource (the creating group of :data:`PS_OPS`) goes to the next
      ps task, ``<ps_device>/task:<t>/device:CPU:0``, in creation order.
    - An op taking a resource handle made on a ps task goes to that handle's device: a
      resource lives on one device, so ``VarIsInitializedOp`` and friends must follow it.
    - Any other op keeps the device the enclosing scopes give it.
    """

    def __init__(self, ps_device, num_tasks):
        self._ps_job = tf.DeviceSpec.from_string(ps_device).job
        self._device_format = ps_device + "/task:%d/device:CPU:0"
        self._num_tasks = num_tasks
        self._next_task = 0

    def __call__(self, op):
        if op.device:
            return op.device
        op_type = op.op if isinstance(op, tf1.NodeDef) else op.type
        if op_type in _RESOURCE_CREATING_PS_OPS:
            task = self._next_task
            self._next_task = (self._next_task + 1) % self._num_tasks
            return self._device_format % task
        for tensor in getattr(op, "inputs", ()):
            if tensor.dtype == tf.resource and tensor.op.device:
                if tf.DeviceSpec.from_string(tensor.op.device).job == self._ps_job:
                    return tensor.op.device
        return op.device


def _read_only(attribute):
    return property(lambda self: getattr(self, attribute))


class DeploymentConfig:
    """How to deploy a model: clones per replica, replicas, parameter servers (TF-Slim's).

    The config is a plan computed from the arguments alone (see the module docstring);
    :func:`deployment.deployment_checks.check_deployment` checks it against a machine.

    If ``num_replicas`` is 1 the model is deployed by a single process and the worker and
    ps devices are empty unless ``num_ps_tasks > 0``. With ``num_replicas > 1``,
    ``num_ps_tasks`` must be positive.

    Args:
      num_clones: number of model clones to deploy in each replica.
      clone_on_cpu: if True, clones are placed on the CPU.
      replica_id: index of the replica for which the model is deployed (0: the chief).
      num_replicas: number of replicas.
      num_ps_tasks: number of tasks of the ps job; 0 to keep the variables local.
      worker_job_name: name of the worker job.
      ps_job_name: name of the parameter server job.
      cpu_device_per_clone: (addition) with ``clone_on_cpu``, clone ``i`` goes to
        ``/device:CPU:i`` instead of ``/device:CPU:0``; the CPU must have been split into
        at least ``num_clones`` logical devices. Ignored without ``clone_on_cpu``.

    Raises:
      ValueError: TF-Slim's: replicas without ps tasks, an empty job name with
        replicas or ps tasks, ``replica_id >= num_replicas``.
    """

    def __init__(
        self,
        num_clones=1,
        clone_on_cpu=False,
        replica_id=0,
        num_replicas=1,
        num_ps_tasks=0,
        worker_job_name="worker",
        ps_job_name="ps",
        cpu_device_per_clone=False,
    ):
        if num_replicas > 1 and num_ps_tasks < 1:
            raise ValueError("When using replicas num_ps_tasks must be positive")
        if num_replicas > 1 or num_ps_tasks > 0:
            if not worker_job_name:
                raise ValueError("Must specify worker_job_name when using replicas")
            if not ps_job_name:
                raise ValueError("Must specify ps_job_name when using parameter server")
        if replica_id >= num_replicas:
            raise ValueError("replica_id must be less than num_replicas")
        self._num_clones = num_clones
        self._clone_on_cpu = clone_on_cpu
        self._replica_id = replica_id
        self._num_replicas = num_replicas
        self._num_ps_tasks = num_ps_tasks
        self._worker_job_name = worker_job_name
        self._ps_job_name = ps_job_name
        self._cpu_device_per_clone = cpu_device_per_clone
        self._ps_device = "/job:" + ps_job_name if num_ps_tasks > 0 else ""
        self._worker_device = "/job:" + worker_job_name if num_ps_tasks > 0 else ""

    num_clones = _read_only("_num_clones")
    clone_on_cpu = _read_only("_clone_on_cpu")
    replica_id = _read_only("_replica_id")
    num_replicas = _read_only("_num_replicas")
    num_ps_tasks = _read_only("_num_ps_tasks")
    ps_device = _read_only("_ps_device")
    worker_device = _read_only("_worker_device")
    ps_job_name = _read_only("_ps_job_name")
    worker_job_name = _read_only("_worker_job_name")
    cpu_device_per_clone = _read_only("_cpu_device_per_clone")

    def caching_device(self):
        """Where variable reads are cached: with ps tasks, on the reading op's device; else None."""
        if self._num_ps_tasks > 0:
            return lambda op: op.device
        return None

    def clone_device(self, clone_index):
        """The device of clone ``clone_index`` and of every op it builds.

        Raises:
          ValueError: ``clone_index`` is not in ``[0, num_clones)``.
        """
        self._check_clone_index(clone_index)
        if not self._clone_on_cpu:
            return f"{self._worker_device}/device:GPU:{clone_index}"
        cpu_index = clone_index if self._cpu_device_per_clone else 0
        return f"{self._worker_device}/device:CPU:{cpu_index}"

    def clone_scope(self, clone_index):
        """The name scope of clone ``clone_index``: ``'clone_<i>'``, or ``''`` with a single clone.

        Raises:
          ValueError: ``clone_index`` is not in ``[0, num_clones)``.
        """
        self._check_clone_index(clone_index)
        return f"clone_{clone_index}" if self._num_clones > 1 else ""

    def optimizer_device(self):
        """The device of the optimizer (learning rate, gradient sums, apply logic)."""
        if self._num_ps_tasks > 0 or self._num_clones > 0:
            return self._worker_device + "/device:CPU:0"
        return ""

    def inputs_device(self):
        """The device to build the inputs on."""
        return self._worker_device + "/device:CPU:0"

    def variables_device(self):
        """The device of the variables: a string, or with ps tasks a new round-robin device function."""
        if not self._num_ps_tasks:
            return "/device:CPU:0"
        return _ResourceFollowingRoundRobin(self._ps_device, self._num_ps_tasks)

    def _check_clone_index(self, clone_index):
        if not 0 <= clone_index < self._num_clones:
            raise ValueError(
                f"clone_index must be less than num_clones ({self._num_clones}) and not negative, got {clone_index}"
            )

    def __repr__(self):
        return (
            f"DeploymentConfig(num_clones={self._num_clones}, clone_on_cpu={self._clone_on_cpu}, "
            f"replica_id={self._replica_id}, num_replicas={self._num_replicas}, "
            f"num_ps_tasks={self._num_ps_tasks}, worker_job_name={self._worker_job_name!r}, "
            f"ps_job_name={self._ps_job_name!r}, cpu_device_per_clone={self._cpu_device_per_clone})"
        )


def get_or_create_global_step(config):
    """The graph's global step, created on ``config.variables_device()`` if it does not exist yet."""
    with tf1.device(config.variables_device()):
        return tf1.train.get_or_create_global_step()


def _variables_on(device):
    """A variable creator scope placing every new variable (slim, get_variable, Variable) on ``device``.

    TF-Slim sets the device of ``slim.variable`` and ``slim.model_variable`` only; a
    creator scope also catches ``tf.compat.v1.get_variable`` and ``tf.Variable``, so that
    no variable of a clone ends up on a clone's GPU or on a worker instead of the ps.
    """

    def creator(next_creator, **kwargs):
        with tf1.device(device):
            return next_creator(**kwargs)

    return tf1.variable_creator_scope(creator)


def create_clones(config, model_fn, args=None, kwargs=None):
    """Creates ``config.num_clones`` clones as ``model_fn(*args, **kwargs)``.

    ``model_fn`` adds its losses to ``tf.compat.v1.GraphKeys.LOSSES`` (the
    ``tf.compat.v1.losses`` functions do). A clone's losses, summaries and update ops are
    found by its scope::

        tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.LOSSES, clone.scope)

    Clone ``i`` is built on ``config.clone_device(i)`` under ``config.clone_scope(i)``,
    reusing the variables of clone 0; every variable is created on
    ``config.variables_device()`` (with ps tasks: on the ps, the clone's ops on the worker).

    Args:
      config: a :class:`DeploymentConfig`.
      model_fn: callable, called as ``model_fn(*args, **kwargs)``.
      args: optional list of arguments of ``model_fn``.
      kwargs: optional dict of keyword arguments of ``model_fn``.

    Returns:
      A list of :class:`Clone`.
    """
    args = args or []
    kwargs = kwargs or {}
    clones = []
    with _variables_on(config.variables_device()):
        for i in range(config.num_clones):
            with tf1.name_scope(config.clone_scope(i)) as clone_scope:
                clone_device = config.clone_device(i)
                with tf1.device(clone_device):
                    with tf1.variable_scope(tf1.get_variable_scope(), reuse=True if i > 0 else None):
                        outputs = model_fn(*args, **kwargs)
                    clones.append(Clone(outputs, clone_scope, clone_device))
    return clones


def _gather_clone_loss(clone, num_clones, regularization_losses, summary_device=None):
    """The clone's loss divided by ``num_clones``, plus ``regularization_losses`` when given.

    Computed on the clone's device; the loss summaries (TF-Slim's tags, see the module
    docstring) are added outside it, on ``summary_device`` or the enclosing device.

    Returns:
      The clone's total loss, or None if it has no loss at all.
    """
    sum_loss = clone_loss = regularization_loss = None
    with tf1.device(clone.device):
        all_losses = []
        clone_losses = tf1.get_collection(tf1.GraphKeys.LOSSES, clone.scope)
        if clone_losses:
            clone_loss = tf.add_n(clone_losses, name="clone_loss")
            if num_clones > 1:
                clone_loss = tf.math.divide(clone_loss, 1.0 * num_clones, name="scaled_clone_loss")
            all_losses.append(clone_loss)
        if regularization_losses:
            regularization_loss = tf.add_n(regularization_losses, name="regularization_loss")
            all_losses.append(regularization_loss)
        if all_losses:
            sum_loss = tf.add_n(all_losses)
    with _device_or_enclosing(summary_device):
        if clone_loss is not None:
            _scalar_summary("/".join(filter(None, ["Losses", clone.scope.strip("/"), "clone_loss"])), clone_loss)
        if regularization_loss is not None:
            _scalar_summary("Losses/regularization_loss", regularization_loss)
    return sum_loss


def _scalar_summary(tag, tensor):
    """A scalar summary tagged exactly ``tag``, its op in the current name scope.

    ``tf.compat.v1.summary.scalar`` would prefix the tag with the clone's name scope (TF-Slim's own
    module shows ``clone_1/Losses/clone_1//clone_loss``); the op stays in the clone's scope so that
    :func:`deploy` still finds the first clone's summaries by scope."""
    summary = tf1.raw_ops.ScalarSummary(tags=tag, values=tensor, name=tag.rsplit("/", 1)[-1] + "_summary")
    tf1.add_to_collection(tf1.GraphKeys.SUMMARIES, summary)
    return summary


def _device_or_enclosing(device):
    return tf1.device(device) if device is not None else contextlib.nullcontext()


def _sum_clones_gradients(clone_grads_and_vars):
    """Per variable, the sum of the clones' gradients (each of a loss already divided by num_clones).

    Sparse gradients (``tf.IndexedSlices``) are summed by concatenation, which keeps them
    sparse (TF-Slim's ``add_n`` makes them dense; the update is the same). Variables with no
    gradient in any clone are dropped.
    """
    summed = []
    for grads_and_vars in zip(*clone_grads_and_vars):
        var = grads_and_vars[0][1]
        grads = []
        for grad, clone_var in grads_and_vars:
            if clone_var is not var:
                raise ValueError(f"clones disagree on the variable order: {var.op.name} vs {clone_var.op.name}")
            if grad is not None:
                grads.append(grad)
        if not grads:
            continue
        name = var.op.name + "/average_clone_grads"
        if len(grads) == 1:
            grad = grads[0]
        elif any(isinstance(g, tf.IndexedSlices) for g in grads):
            slices = [g if isinstance(g, tf.IndexedSlices) else _dense_to_slices(g) for g in grads]
            grad = tf.IndexedSlices(
                tf.concat([s.values for s in slices], axis=0, name=name + "_values"),
                tf.concat([s.indices for s in slices], axis=0, name=name + "_indices"),
                slices[0].dense_shape,
            )
        else:
            grad = tf.add_n(grads, name=name)
        summed.append((grad, var))
    return summed


def _dense_to_slices(grad):
    rows = tf.shape(grad, out_type=tf.int64)[0]
    return tf.IndexedSlices(grad, tf.range(rows), tf.shape(grad, out_type=tf.int64))


def optimize_clones(clones, optimizer, regularization_losses=None, averaging_device=None, **kwargs):
    """Computes the clone losses and gradients (TF-Slim's ``optimize_clones``).

    Each clone's gradients are computed on its device from its loss divided by the
    number of clones; the regularization losses are added to the first clone's loss only.

    Args:
      clones: list of :class:`Clone` from :func:`create_clones`.
      optimizer: a ``tf.compat.v1.train.Optimizer``.
      regularization_losses: ``None`` takes the graph's ``REGULARIZATION_LOSSES``; ``[]``
        adds none.
      averaging_device: (addition) device of the gradient sums, the total loss and the loss
        summaries, e.g. ``config.optimizer_device()``; ``None`` leaves them to the
        enclosing device scope, as TF-Slim.
      **kwargs: passed to ``optimizer.compute_gradients`` (``var_list``, ...).

    Returns:
      ``(total_loss, grads_and_vars)``: the sum of the clone losses (each divided by the
      number of clones) plus the regularization, and per variable the sum of the clones'
      gradients.

    Raises:
      ValueError: no clone has a loss and there is no regularization loss.
    """
    num_clones = len(clones)
    if regularization_losses is None:
        regularization_losses = tf1.get_collection(tf1.GraphKeys.REGULARIZATION_LOSSES)
    clones_losses = []
    clones_grads_and_vars = []
    for clone in clones:
        with tf1.name_scope(clone.scope):
            clone_loss = _gather_clone_loss(clone, num_clones, regularization_losses, averaging_device)
            if clone_loss is not None:
                with tf1.device(clone.device):
                    clones_grads_and_vars.append(optimizer.compute_gradients(clone_loss, **kwargs))
                clones_losses.append(clone_loss)
        regularization_losses = None  # counted once, with the first clone
    if not clones_losses:
        raise ValueError(
            "no losses: model_fn must add its losses to tf.compat.v1.GraphKeys.LOSSES "
            "(tf.compat.v1.losses.* do) or there must be regularization losses"
        )
    with _device_or_enclosing(averaging_device):
        total_loss = tf.add_n(clones_losses, name="total_loss")
        with tf1.name_scope("average_clone_gradients"):
            grads_and_vars = _sum_clones_gradients(clones_grads_and_vars)
    return total_loss, grads_and_vars


def _sum_clone_losses(clones):
    """The total loss without gradients (``deploy`` without optimizer), or None if there is no loss."""
    regularization_losses = tf1.get_collection(tf1.GraphKeys.REGULARIZATION_LOSSES)
    clones_losses = []
    for clone in clones:
        with tf1.name_scope(clone.scope):
            clone_loss = _gather_clone_loss(clone, len(clones), regularization_losses)
            if clone_loss is not None:
                clones_losses.append(clone_loss)
        regularization_losses = None  # counted once, with the first clone
    return tf.add_n(clones_losses, name="total_loss") if clones_losses else None


def add_gradient_summaries(grads_and_vars):
    """(Addition) Per variable, a ``<var>/gradient`` histogram and a ``<var>/gradient_norm`` scalar.

    Used by the trainer's own train op; :func:`deploy` writes TF-Slim's tags instead.
    """
    return _gradient_summaries(grads_and_vars, "/", tf1.summary.scalar)


def _add_gradients_summaries(grads_and_vars):
    """TF-Slim's gradient summaries: ``<var>_gradient`` and ``<var>_gradient_norm`` histograms.

    TF-Slim names them ``<var>:gradient`` and ``<var>:gradient_norm``; ``tf.summary``
    replaces the ``:`` that tags may not hold with ``_``, and so does this, without the log
    line TensorFlow writes for each renamed tag.
    """
    return _gradient_summaries(grads_and_vars, "_", tf1.summary.histogram)


def _gradient_summaries(grads_and_vars, separator, norm_summary):
    summaries = []
    for grad, var in grads_and_vars:
        if grad is None:
            logging.info("Var %s has no gradient", var.op.name)
            continue
        values = grad.values if isinstance(grad, tf.IndexedSlices) else grad
        summaries.append(tf1.summary.histogram(f"{var.op.name}{separator}gradient", values))
        summaries.append(norm_summary(f"{var.op.name}{separator}gradient_norm", tf.linalg.global_norm([values])))
    return summaries


def deploy(config, model_fn, args=None, kwargs=None, optimizer=None, summarize_gradients=False):
    """Deploys a model across clones (TF-Slim's ``deploy``).

    Builds the clones with :func:`create_clones`. Given an optimizer, also the global step
    (on the variables device) and the train op: the summed clone gradients applied with
    the global step, and the first clone's update ops. The optimizer part runs on
    ``config.optimizer_device()``.

    Args:
      config: a :class:`DeploymentConfig`.
      model_fn: callable, called as ``model_fn(*args, **kwargs)`` once per clone.
      args: optional list of arguments of ``model_fn``.
      kwargs: optional dict of keyword arguments of ``model_fn``.
      optimizer: optional ``tf.compat.v1.train.Optimizer``; without it only the losses are built.
      summarize_gradients: add histograms of the gradients and their norms.

    Returns:
      A :class:`DeployedModel`: ``train_op`` (the total loss, evaluated after the step and
      the update ops; None without optimizer or gradients), ``summary_op`` (the summaries
      that existed before, the first clone's and ``total_loss``; None if there are none),
      ``total_loss`` (None if there is no loss) and the clones.
    """
    summaries = set(tf1.get_collection(tf1.GraphKeys.SUMMARIES))
    clones = create_clones(config, model_fn, args, kwargs)
    first_clone = clones[0]
    # The first clone's update ops only (e.g. batch norm moving averages): the other clones' would repeat them.
    update_ops = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS, first_clone.scope)
    train_op = None
    total_loss = None
    with tf1.device(config.optimizer_device()):
        if optimizer is not None:
            global_step = get_or_create_global_step(config)
            total_loss, clones_gradients = optimize_clones(clones, optimizer)
            if clones_gradients:
                if summarize_gradients:
                    summaries |= set(_add_gradients_summaries(clones_gradients))
                update_ops.append(optimizer.apply_gradients(clones_gradients, global_step=global_step))
                update_op = tf.group(*update_ops)
                with tf.control_dependencies([update_op]):
                    train_op = tf.identity(total_loss, name="train_op")
        else:
            total_loss = _sum_clone_losses(clones)
        # The model's summaries and the loss summaries of the first clone only.
        summaries |= set(tf1.get_collection(tf1.GraphKeys.SUMMARIES, first_clone.scope))
        if total_loss is not None:
            summaries.add(tf1.summary.scalar("total_loss", total_loss))
        summary_op = None
        if summaries:
            summary_op = tf1.summary.merge(sorted(summaries, key=lambda s: s.name), name="summary_op")
    return DeployedModel(train_op, summary_op, total_loss, clones)
