"""Checks that a deployment plan fits this machine and cluster, before the training session starts.

:class:`deployment.model_deploy.DeploymentConfig` is TF-Slim's pure plan: it never looks at
the machine, so that a graph for four GPUs or for a cluster can be built and exported
anywhere. Training on the wrong machine would then fail late and obscurely (a placement
error naming a device, or a worker waiting forever for a ps task nobody started). The
trainer therefore calls :func:`check_deployment` once the cluster is known and before it
creates its session; each problem is a ``ValueError`` naming the setting to change.

Everything the check needs is passed in (GPU names, the cluster), so that it is testable
alone and never starts the TensorFlow runtime itself.
"""

from absl import logging
import tensorflow as tf

__all__ = ["check_deployment"]


def check_deployment(config, available_gpus, cluster_spec=None, logical_cpus=None, session_config=None):
    """Raises ``ValueError`` if ``config`` cannot run on this machine and cluster.

    Args:
      config: a :class:`deployment.model_deploy.DeploymentConfig`.
      available_gpus: names of this machine's GPUs, as
        :func:`deployment.devices.available_gpus` returns them.
      cluster_spec: the cluster (``tf.train.ClusterSpec``, its dict or ``ClusterDef``), or None
        for one machine.
      logical_cpus: optional, the runtime's logical CPU device names
        (:func:`deployment.devices.logical_cpu_devices`): checked when
        ``cpu_device_per_clone`` puts clone ``i`` on ``/device:CPU:i``.
      session_config: optional ``ConfigProto`` of the session: a single clone planned on
        a GPU this machine lacks needs ``allow_soft_placement``.

    Raises:
      ValueError: counts out of range; ps tasks without a cluster, or a cluster whose ps or
        worker job has fewer tasks than asked, or a ps job with ``num_ps_tasks=0``; more
        clones than GPUs without ``clone_on_cpu``; fewer logical CPUs than CPU clones with
        ``cpu_device_per_clone``.
      TypeError: ``cluster_spec`` is not a cluster.
    """
    _check_counts(config)
    _check_cluster(config, cluster_spec)
    _check_clone_devices(config, list(available_gpus), logical_cpus, session_config)


def _check_counts(config):
    # TF-Slim's constructor accepts these; they would fail later (e.g. an empty clone list).
    if config.num_clones < 1:
        raise ValueError(f"num_clones must be >= 1, got {config.num_clones}")
    if config.replica_id < 0:
        raise ValueError(f"replica_id must be >= 0, got {config.replica_id}")
    if config.num_ps_tasks < 0:
        raise ValueError(f"num_ps_tasks must be >= 0, got {config.num_ps_tasks}")


def _job_sizes(cluster_spec):
    cluster_spec = tf.train.ClusterSpec(cluster_spec)  # also takes a dict or a ClusterDef; TypeError otherwise
    return {job: cluster_spec.num_tasks(job) for job in cluster_spec.jobs}


def _check_cluster(config, cluster_spec):
    ps_job, worker_job = config.ps_job_name, config.worker_job_name
    if cluster_spec is None:
        if config.num_ps_tasks > 0:
            raise ValueError(
                f"num_ps_tasks={config.num_ps_tasks} needs a cluster: pass cluster_spec=tf.train.ClusterSpec("
                f"{{'{ps_job}': [...], '{worker_job}': [...]}}) (--ps_hosts/--worker_hosts) "
                "and run the session on that cluster's server; for one machine leave num_ps_tasks=0"
            )
        return
    sizes = _job_sizes(cluster_spec)
    if config.num_ps_tasks == 0:
        if sizes.get(ps_job):
            raise ValueError(f"the cluster has a '{ps_job}' job but num_ps_tasks=0: set num_ps_tasks to use it")
        return
    if sizes.get(ps_job, 0) < config.num_ps_tasks:
        raise ValueError(
            f"num_ps_tasks={config.num_ps_tasks} but the cluster's '{ps_job}' job has "
            f"{sizes.get(ps_job, 0)} task(s); cluster jobs: {sizes}"
        )
    if sizes.get(worker_job, 0) < config.num_replicas:
        raise ValueError(
            f"num_replicas={config.num_replicas} (replica_id={config.replica_id}) but the cluster's "
            f"'{worker_job}' job has {sizes.get(worker_job, 0)} task(s); cluster jobs: {sizes}"
        )


def _check_clone_devices(config, available_gpus, logical_cpus, session_config):
    if config.clone_on_cpu:
        if config.cpu_device_per_clone and logical_cpus is not None and len(logical_cpus) < config.num_clones:
            raise ValueError(
                f"cpu_device_per_clone puts clone i on /device:CPU:i but the runtime has {len(logical_cpus)} "
                f"logical CPU device(s): {list(logical_cpus)}. Split the CPU first "
                f"(deployment.devices.split_cpu_into_logical_devices({config.num_clones})), or leave "
                "cpu_device_per_clone off to put every clone on /device:CPU:0."
            )
        return
    if config.num_clones == 1 and not available_gpus:
        # The plan says /device:GPU:0; soft placement runs it on the CPU, as the old config did.
        if session_config is not None and not session_config.allow_soft_placement:
            raise ValueError(
                f"the clone is planned on {config.clone_device(0)} but this machine has no GPU and the session "
                "config does not allow soft placement: set allow_soft_placement=True, or set --clone_on_cpu"
            )
        logging.info("No GPU found: the single clone (%s) runs on the CPU through soft placement",
                     config.clone_device(0))
        return
    if config.num_clones > len(available_gpus):
        raise ValueError(
            f"num_clones={config.num_clones} but this machine has {len(available_gpus)} GPU(s): "
            f"{available_gpus or 'none'}. Lower --num_clones to at most {max(len(available_gpus), 1)}, "
            "or set --clone_on_cpu to run the clones on the CPU."
        )
