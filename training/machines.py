"""Where a training run executes, behind one interface: this machine alone, or a task of a cluster.

:func:`machines_for` reads the cluster from the flags, else from the ``TF_CONFIG`` environment variable
that Kubernetes (Kubeflow's TFJob) and managed training services set (:mod:`deployment.tf_config`), and returns

* :class:`LocalMachine` when neither describes a cluster: the deployment is one replica and every
  hook is a no-op;
* :class:`ClusterWorker` for ``--job_name=worker``: it starts this task's server (TensorFlow's own
  distributed runtime, :mod:`deployment.cluster`), waits for the ps tasks, deploys its replica with
  the variables on the ps, guards against a lost ps (exit status 3), makes non-chief workers wait
  for the chief's model, and, for a synchronous chief, shortens the Supervisor's stop grace;
* :class:`ParameterServer` for ``--job_name=ps``: it serves variables until killed.

The trainer calls the same methods whichever it got, so :func:`training.trainer.train` has no
branch on the kind of run.
"""

import contextlib

from absl import logging

from deployment import cluster, deployment_checks, devices, model_deploy, tf_config
from tf_compat import tf1


class LocalMachine:
    """Training on this machine only."""

    is_chief = True
    serves_only = False
    master = ""

    def __init__(self, config, session_config):
        self._config = config
        self.session_config = session_config
        self.deploy_config = deployment_for(config)
        _check(self.deploy_config, session_config)

    def describe(self):
        return "this machine"

    def prepare_graph(self):
        """Adds what the cluster needs to the training graph (nothing here)."""

    def wrap_train_step(self, train_step_fn):
        return train_step_fn

    def wait_for_chief(self):
        """Blocks a non-chief worker until the chief's model is ready (a chief never waits)."""

    @property
    def session_wrapper(self):
        return None

    def training_context(self, sync_optimizer):
        """Around ``slim.learning.train``."""
        return contextlib.nullcontext()

    def close(self):
        """After training ended normally."""


class ClusterWorker(LocalMachine):
    """Worker ``task_index`` of a cluster of ps tasks and workers; worker 0 is the chief."""

    def __init__(self, config, settings, session_config):
        self._config = config
        self._settings = settings
        self.session_config = cluster.distributed_session_config(settings, session_config,
                                                                 config.dist_operation_timeout_secs)
        self.deploy_config = deployment_for(config, replica_id=settings.task_index, num_replicas=settings.num_workers,
                                            num_ps_tasks=settings.num_ps_tasks)
        # Before the server binds its port and waits for the ps tasks: a deployment that cannot run fails now.
        _check(self.deploy_config, self.session_config, settings.cluster_spec())
        self.server = cluster.start_server(settings, self.session_config)
        cluster.wait_for_tasks(settings.ps_hosts, config.dist_startup_timeout_secs)
        self._guard = cluster.LostClusterGuard(settings.ps_hosts, lost_ps_secs=config.dist_lost_ps_secs).start()
        self._chief_ready = None
        logging.info("Joined the cluster as %s: %s training", settings.describe(),
                     "sync" if config.sync_replicas else "async")

    @property
    def is_chief(self):
        return self._settings.is_chief

    @property
    def master(self):
        return self.server.target

    def describe(self):
        return self._settings.describe()

    def prepare_graph(self):
        with tf1.device(self.deploy_config.variables_device()):
            self._chief_ready = cluster.ChiefReadyFlag()

    def wrap_train_step(self, train_step_fn):
        return self._guard.wrap_train_step(train_step_fn)

    def wait_for_chief(self):
        if not self.is_chief:
            cluster.wait_for_chief_model(self.server.target, self.session_config,
                                         self._config.dist_startup_timeout_secs, self._chief_ready)

    @property
    def session_wrapper(self):
        return self._chief_ready.session_wrapper if self.is_chief else None

    def training_context(self, sync_optimizer):
        if sync_optimizer is not None and self.is_chief:
            return cluster.sync_chief_stop_grace()
        return contextlib.nullcontext()

    def close(self):
        self._guard.stop()


class ParameterServer:
    """A ps task: serves the variables of the workers until it is killed."""

    serves_only = True

    def __init__(self, settings):
        self._settings = settings

    def serve(self):
        return cluster.start_server(self._settings).join()


def _check(deploy_config, session_config, cluster_spec=None):
    deployment_checks.check_deployment(deploy_config, devices.available_gpus(), cluster_spec,
                                       logical_cpus=devices.logical_cpu_devices(), session_config=session_config)


def _cpu_device_per_clone(config):
    return config.clone_on_cpu and config.num_clones > 1


def deployment_for(config, **replica):
    """The DeploymentConfig of ``config`` (one replica unless ``replica`` says otherwise: replica_id, num_replicas,
    num_ps_tasks)."""
    return model_deploy.DeploymentConfig(num_clones=config.num_clones, clone_on_cpu=config.clone_on_cpu,
                                         cpu_device_per_clone=_cpu_device_per_clone(config), **replica)


def machines_for(config):
    """The :class:`LocalMachine`, :class:`ClusterWorker` or :class:`ParameterServer` the cluster flags describe,
    else the ``TF_CONFIG`` environment variable (:mod:`deployment.tf_config`)."""
    settings = tf_config.cluster_settings(config.ps_hosts, config.worker_hosts, config.job_name, config.task_index)
    if settings is not None and settings.job_name == cluster.PS_JOB:
        return ParameterServer(settings)
    if _cpu_device_per_clone(config):
        # Each clone on a logical CPU device of its own: the split must come before the runtime starts.
        devices.split_cpu_into_logical_devices(config.num_clones)
    session_config = devices.session_config(config.gpu_memory_fraction, config.allow_growth)
    if settings is None:
        return LocalMachine(config, session_config)
    return ClusterWorker(config, settings, session_config)
