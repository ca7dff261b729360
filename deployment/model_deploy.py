"""Deploys a model as one tower ("clone") per device, TF-Slim's ``model_deploy`` for TF 2.x graph mode.

Devices (DESIGN.md section 3)::

    variables, global_step   /device:CPU:0, or the ps tasks through replica_device_setter
    inputs                    [worker]/device:CPU:0
    clone i                   [worker]/device:GPU:i, or CPU (see below)
    optimizer                 [worker]/device:CPU:0: the clone gradients are averaged here
                              explicitly; the apply ops sit with their variables

Each clone builds the model under ``tf.name_scope('clone_i')`` (no scope with one clone),
reusing the variables of clone 0. Its loss (the ``tf.compat.v1.GraphKeys.LOSSES`` of its
scope) is scaled by ``1/num_clones`` and differentiated on the clone's device, so the sum
of the clone gradients, taken on the optimizer device, is their average. Regularization
losses are added once, to the first clone; update ops (batch norm statistics) are taken
from the first clone only.

Clones on the CPU (``clone_on_cpu=True``): clone ``i`` goes to ``/device:CPU:i`` when the
runtime has at least ``num_clones`` logical CPU devices (see
:func:`deployment.devices.split_cpu_into_logical_devices`; the tests split the CPU in
two), otherwise every clone goes to ``/device:CPU:0``. A single clone on a machine with no
GPU runs on ``/device:CPU:0`` without needing ``clone_on_cpu``.

Parameter servers (``num_ps_tasks > 0``) need the cluster: pass ``cluster`` (a
``tf.train.ClusterSpec`` or its dict) naming the ps and worker jobs. Variables are then
spread over the ps tasks by ``tf.compat.v1.train.replica_device_setter`` with
:data:`PS_OPS`: besides TensorFlow's standard list, the ops that use a variable's resource
handle while it is created (``VarIsInitializedOp``, ``AssignVariableOp``,
``ReadVariableOp``, ...) are placed on the task of that handle, never on another task by
the round robin. Worker devices name the task (``/job:worker/task:<replica_id>``) so that
the placer never picks another worker's device.

Errors come from the :class:`DeploymentConfig` constructor, before any graph is built:
more clones than GPUs (the message lists the GPUs found), ps settings without a cluster,
a cluster that does not have the tasks asked for.
"""

import collections
import contextlib

from absl import logging
import tensorflow as tf

from deployment import devices
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
        "train_op",  # the total loss, after the update ops have run
        "summary_op",  # merged summaries (None if there are none)
        "total_loss",  # sum of the clone losses (each scaled by 1/num_clones) + regularization
        "clones",  # list of Clone
    ],
)

# Ops that create a resource placed on a ps task. The first group is TensorFlow's
# STANDARD_PS_OPS; the second group takes a variable's resource handle as input and
# follows that handle's task (see _ResourceFollowingRoundRobin).
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
_RESOURCE_USING_PS_OPS = (
    "VarIsInitializedOp",
    "ReadVariableOp",
    "AssignVariableOp",
    "AssignAddVariableOp",
    "AssignSubVariableOp",
    "DestroyResourceOp",
)
PS_OPS = _RESOURCE_CREATING_PS_OPS + _RESOURCE_USING_PS_OPS


class _ResourceFollowingRoundRobin:
    """ps task chooser: round robin for new resources; users of a resource follow it.

    ``replica_device_setter`` asks this for every op in :data:`PS_OPS`. An op that takes a
    resource handle made on a ps task must run on that task (a resource lives on one
    device), so it gets that task; only ops that create a resource advance the round robin.
    """

    def __init__(self, num_tasks, ps_job_name):
        self._num_tasks = num_tasks
        self._ps_job_name = ps_job_name
        self._next_task = 0

    def __call__(self, op):
        for tensor in getattr(op, "inputs", ()):
            if tensor.dtype == tf.resource:
                spec = tf.DeviceSpec.from_string(tensor.op.device or "")
                if spec.job == self._ps_job_name and spec.task is not None:
                    return spec.task
        task = self._next_task
        self._next_task = (self._next_task + 1) % self._num_tasks
        return task


def _cluster_job_sizes(cluster):
    if isinstance(cluster, tf.train.ClusterSpec):
        cluster = cluster.as_dict()
    if not isinstance(cluster, dict):
        raise TypeError(f"cluster must be a tf.train.ClusterSpec or a dict, got {type(cluster).__name__}")
    return {job: len(tasks) for job, tasks in cluster.items()}


class DeploymentConfig:
    """Where each part of a multi-tower training graph runs.

    Args:
      num_clones: towers per replica (one per GPU, or on the CPU with ``clone_on_cpu``).
      clone_on_cpu: put the towers on CPU devices (module docstring).
      replica_id: this worker's task index.
      num_replicas: workers training together.
      num_ps_tasks: parameter-server tasks holding the variables (0: local variables).
      worker_job_name: the cluster's worker job.
      ps_job_name: the cluster's ps job.
      cluster: ``tf.train.ClusterSpec`` or dict; required when ``num_ps_tasks > 0``.

    Raises:
      ValueError: inconsistent settings, more clones than GPUs, ps without a cluster.
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
        cluster=None,
    ):
        if num_clones < 1:
            raise ValueError(f"num_clones must be >= 1, got {num_clones}")
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if not 0 <= replica_id < num_replicas:
            raise ValueError(f"replica_id must be in [0, num_replicas={num_replicas}), got {replica_id}")
        if num_ps_tasks < 0:
            raise ValueError(f"num_ps_tasks must be >= 0, got {num_ps_tasks}")
        if num_replicas > 1 and num_ps_tasks < 1:
            raise ValueError(
                f"num_replicas={num_replicas} needs parameter servers to share the variables: "
                "set num_ps_tasks >= 1 and pass the cluster"
            )
        if num_ps_tasks > 0:
            self._check_cluster(cluster, num_ps_tasks, num_replicas, replica_id, worker_job_name, ps_job_name)
        elif cluster is not None and _cluster_job_sizes(cluster).get(ps_job_name):
            raise ValueError(
                f"the cluster has a '{ps_job_name}' job but num_ps_tasks=0: set num_ps_tasks to use it"
            )

        self._num_clones = num_clones
        self._clone_on_cpu = clone_on_cpu
        self._replica_id = replica_id
        self._num_replicas = num_replicas
        self._num_ps_tasks = num_ps_tasks
        self._ps_job_name = ps_job_name
        self._worker_job_name = worker_job_name
        self._cluster = cluster
        self._ps_device = f"/job:{ps_job_name}" if num_ps_tasks > 0 else ""
        self._worker_device = f"/job:{worker_job_name}/task:{replica_id}" if num_ps_tasks > 0 else ""
        self._clone_devices = self._choose_clone_devices()
        self._variables_device = self._make_variables_device()

    @staticmethod
    def _check_cluster(cluster, num_ps_tasks, num_replicas, replica_id, worker_job_name, ps_job_name):
        if cluster is None:
            raise ValueError(
                f"num_ps_tasks={num_ps_tasks} needs a cluster: pass cluster=tf.train.ClusterSpec("
                f"{{'{ps_job_name}': [...], '{worker_job_name}': [...]}}) (--ps_hosts/--worker_hosts) "
                "and run the session on that cluster's server; for one machine leave num_ps_tasks=0"
            )
        sizes = _cluster_job_sizes(cluster)
        if sizes.get(ps_job_name, 0) < num_ps_tasks:
            raise ValueError(
                f"num_ps_tasks={num_ps_tasks} but the cluster's '{ps_job_name}' job has "
                f"{sizes.get(ps_job_name, 0)} task(s); cluster jobs: {sizes}"
            )
        if sizes.get(worker_job_name, 0) < num_replicas:
            raise ValueError(
                f"num_replicas={num_replicas} (replica_id={replica_id}) but the cluster's "
                f"'{worker_job_name}' job has {sizes.get(worker_job_name, 0)} task(s); cluster jobs: {sizes}"
            )

    def _choose_clone_devices(self):
        if self._clone_on_cpu:
            if self._num_clones == 1:
                cpu_indices = [0]
            else:
                num_cpus = len(devices.logical_cpu_devices())
                if num_cpus >= self._num_clones:
                    cpu_indices = list(range(self._num_clones))
                else:
                    logging.info(
                        "clone_on_cpu: %d logical CPU device(s) for %d clones; all clones share /device:CPU:0",
                        num_cpus,
                        self._num_clones,
                    )
                    cpu_indices = [0] * self._num_clones
            return [f"{self._worker_device}/device:CPU:{i}" for i in cpu_indices]
        gpus = devices.available_gpus()
        if not gpus and self._num_clones == 1:
            logging.info("No GPU found: the single clone runs on /device:CPU:0")
            return [f"{self._worker_device}/device:CPU:0"]
        if self._num_clones > len(gpus):
            raise ValueError(
                f"num_clones={self._num_clones} but this machine has {len(gpus)} GPU(s): "
                f"{gpus or 'none'}. Lower num_clones to at most {max(len(gpus), 1)}, or set "
                "clone_on_cpu to run the clones on the CPU."
            )
        return [f"{self._worker_device}/device:GPU:{i}" for i in range(self._num_clones)]

    def _make_variables_device(self):
        if not self._num_ps_tasks:
            return "/device:CPU:0"
        return tf1.train.replica_device_setter(
            ps_tasks=self._num_ps_tasks,
            ps_device=f"{self._ps_device}/device:CPU:0",
            worker_device=self._worker_device,
            merge_devices=True,
            ps_ops=list(PS_OPS),
            ps_strategy=_ResourceFollowingRoundRobin(self._num_ps_tasks, self._ps_job_name),
        )

    @property
    def num_clones(self):
        return self._num_clones

    @property
    def clone_on_cpu(self):
        return self._clone_on_cpu

    @property
    def replica_id(self):
        return self._replica_id

    @property
    def num_replicas(self):
        return self._num_replicas

    @property
    def num_ps_tasks(self):
        return self._num_ps_tasks

    @property
    def ps_device(self):
        return self._ps_device

    @property
    def worker_device(self):
        return self._worker_device

    @property
    def cluster(self):
        return self._cluster

    def caching_device(self):
        """Device for cached variable reads: the reading op's own device with ps tasks, else None."""
        if self._num_ps_tasks > 0:
            return lambda op: op.device
        return None

    def clone_device(self, clone_index):
        self._check_clone_index(clone_index)
        return self._clone_devices[clone_index]

    def clone_scope(self, clone_index):
        """Name scope of clone ``clone_index``: 'clone_<i>', or '' with a single clone."""
        self._check_clone_index(clone_index)
        return f"clone_{clone_index}" if self._num_clones > 1 else ""

    def optimizer_device(self):
        """Where clone gradients are averaged and the learning rate / optimizer logic runs."""
        return f"{self._worker_device}/device:CPU:0"

    def inputs_device(self):
        return f"{self._worker_device}/device:CPU:0"

    def variables_device(self):
        """A device string, or with ps tasks a device function: use with ``tf.compat.v1.device``."""
        return self._variables_device

    def _check_clone_index(self, clone_index):
        if not 0 <= clone_index < self._num_clones:
            raise ValueError(f"clone_index must be in [0, num_clones={self._num_clones}), got {clone_index}")

    def __repr__(self):
        return (
            f"DeploymentConfig(num_clones={self._num_clones}, clone_on_cpu={self._clone_on_cpu}, "
            f"replica_id={self._replica_id}, num_replicas={self._num_replicas}, "
            f"num_ps_tasks={self._num_ps_tasks}, clone_devices={self._clone_devices})"
        )


def get_or_create_global_step(config):
    """The graph's global step, created on the variables device if it does not exist yet."""
    with tf1.device(config.variables_device()):
        return tf1.train.get_or_create_global_step()


def _variables_on(device):
    """A variable creator scope placing every new variable (slim, get_variable, Variable) on ``device``."""

    def creator(next_creator, **kwargs):
        with tf1.device(device):
            return next_creator(**kwargs)

    return tf1.variable_creator_scope(creator)


def create_clones(config, model_fn, args=None, kwargs=None):
    """Builds ``model_fn(*args, **kwargs)`` once per clone, sharing the variables of clone 0.

    ``model_fn`` adds its losses with ``tf.compat.v1.losses`` (or to
    ``tf.compat.v1.GraphKeys.LOSSES``) so that each clone's losses are found by its scope.
    Every variable it creates, by any API, is placed on ``config.variables_device()``.

    Returns:
      list of :class:`Clone`, one per clone.
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


def _summary_tag(*parts):
    return "/".join(part.strip("/") for part in parts if part and part.strip("/"))


def _gather_clone_loss(clone, num_clones, regularization_losses):
    """The clone's loss scaled by 1/num_clones, plus ``regularization_losses`` when given.

    Returns (sum_loss, clone_loss, regularization_loss); each may be None.
    """
    sum_loss = clone_loss = regularization_loss = None
    with tf1.device(clone.device):
        all_losses = []
        clone_losses = tf1.get_collection(tf1.GraphKeys.LOSSES, clone.scope)
        if clone_losses:
            clone_loss = tf.add_n(clone_losses, name="clone_loss")
            if num_clones > 1:
                clone_loss = tf.math.divide(clone_loss, float(num_clones), name="scaled_clone_loss")
            all_losses.append(clone_loss)
        if regularization_losses:
            regularization_loss = tf.add_n(regularization_losses, name="regularization_loss")
            all_losses.append(regularization_loss)
        if all_losses:
            sum_loss = tf.add_n(all_losses, name="sum_loss")
    return sum_loss, clone_loss, regularization_loss


def _average_clone_gradients(clone_grads_and_vars):
    """Per variable, the sum of the clones' gradients of their 1/num_clones-scaled losses.

    Sparse gradients (``tf.IndexedSlices``) are summed by concatenation. Variables with no
    gradient in any clone are dropped.
    """
    averaged = []
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
        averaged.append((grad, var))
    return averaged


def _dense_to_slices(grad):
    rows = tf.shape(grad, out_type=tf.int64)[0]
    return tf.IndexedSlices(grad, tf.range(rows), tf.shape(grad, out_type=tf.int64))


def optimize_clones(clones, optimizer, regularization_losses=None, averaging_device=None, **kwargs):
    """Computes each clone's gradients on its device and averages them.

    Args:
      clones: list of :class:`Clone` from :func:`create_clones`.
      optimizer: a ``tf.compat.v1.train.Optimizer``.
      regularization_losses: added to the first clone's loss; ``None`` takes the graph's
        ``REGULARIZATION_LOSSES`` collection, ``[]`` adds none.
      averaging_device: device of the gradient average, the total loss and the loss
        summaries; pass ``config.optimizer_device()``. ``None`` leaves them to the
        enclosing device scope (TF-Slim's behaviour).
      **kwargs: passed to ``optimizer.compute_gradients`` (``var_list``, ...).

    Returns:
      (total_loss, grads_and_vars): the sum of the clone losses (each scaled by
      1/num_clones, regularization once), and the averaged gradients.
    """
    num_clones = len(clones)
    if regularization_losses is None:
        regularization_losses = tf1.get_collection(tf1.GraphKeys.REGULARIZATION_LOSSES)
    clone_losses = []
    clone_grads_and_vars = []
    loss_summaries = []
    for clone in clones:
        with tf1.name_scope(clone.scope):
            sum_loss, clone_loss, regularization_loss = _gather_clone_loss(
                clone, num_clones, regularization_losses
            )
            if sum_loss is not None:
                with tf1.device(clone.device):
                    grads_and_vars = optimizer.compute_gradients(sum_loss, **kwargs)
                clone_losses.append(sum_loss)
                clone_grads_and_vars.append(grads_and_vars)
        if clone_loss is not None:
            loss_summaries.append((_summary_tag("Losses", clone.scope, "clone_loss"), clone_loss))
        if regularization_loss is not None:
            loss_summaries.append(("Losses/regularization_loss", regularization_loss))
        regularization_losses = None  # counted once, with the first clone
    if not clone_losses:
        raise ValueError(
            "no losses: model_fn must add its losses to tf.compat.v1.GraphKeys.LOSSES "
            "(tf.compat.v1.losses.* do) or there must be regularization losses"
        )
    device_scope = tf1.device(averaging_device) if averaging_device is not None else contextlib.nullcontext()
    with device_scope:
        total_loss = tf.add_n(clone_losses, name="total_loss")
        with tf1.name_scope("average_clone_gradients"):
            grads_and_vars = _average_clone_gradients(clone_grads_and_vars)
        for tag, loss in loss_summaries:
            tf1.summary.scalar(tag, loss)
    return total_loss, grads_and_vars


def add_gradient_summaries(grads_and_vars):
    """A histogram and the norm of each variable's gradient."""
    summaries = []
    for grad, var in grads_and_vars:
        values = grad.values if isinstance(grad, tf.IndexedSlices) else grad
        summaries.append(tf1.summary.histogram(var.op.name + "/gradient", values))
        summaries.append(tf1.summary.scalar(var.op.name + "/gradient_norm", tf.linalg.global_norm([values])))
    return summaries


def deploy(config, model_fn, args=None, kwargs=None, optimizer=None, summarize_gradients=False):
    """Builds the clones and, given an optimizer, the train op (TF-Slim's ``model_deploy.deploy``).

    ``train_op`` evaluates the total loss after the first clone's update ops and the
    gradient step have run. Without an optimizer only the losses are built.
    For learning-rate schedules, clipping, EMA and the NaN guard use
    :func:`deployment.train_op.build_train_op` with :func:`create_clones`.

    Returns:
      :class:`DeployedModel`.
    """
    summaries = set(tf1.get_collection(tf1.GraphKeys.SUMMARIES))
    global_step = get_or_create_global_step(config)
    clones = create_clones(config, model_fn, args, kwargs)
    first_clone = clones[0]
    # The model's own summaries from the first clone only: the others would repeat them.
    summaries |= set(tf1.get_collection(tf1.GraphKeys.SUMMARIES, first_clone.scope))
    before_losses = set(tf1.get_collection(tf1.GraphKeys.SUMMARIES))
    update_ops = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS, first_clone.scope)
    train_op = None
    with tf1.device(config.optimizer_device()):
        total_loss, clones_gradients = optimize_clones(
            clones,
            optimizer if optimizer is not None else _LossOnly(),
            averaging_device=config.optimizer_device(),
        )
        if optimizer is not None and clones_gradients:
            if summarize_gradients:
                summaries |= set(add_gradient_summaries(clones_gradients))
            update_ops.append(optimizer.apply_gradients(clones_gradients, global_step=global_step))
            with tf.control_dependencies([tf.group(*update_ops)]):
                train_op = tf.identity(total_loss, name="train_op")
        summaries |= set(tf1.get_collection(tf1.GraphKeys.SUMMARIES)) - before_losses
        summaries.add(tf1.summary.scalar("Losses/total_loss", total_loss))
        summary_op = tf1.summary.merge(sorted(summaries, key=lambda s: s.name), name="summary_op")
    return DeployedModel(train_op, summary_op, total_loss, clones)


class _LossOnly:
    """Stands in for an optimizer when :func:`deploy` builds only the losses."""

    def compute_gradients(self, loss, **unused_kwargs):
        return []
