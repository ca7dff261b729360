"""The cluster as Kubernetes (Kubeflow's TFJob) and managed training services describe it: ``TF_CONFIG``.

Such a launcher starts every task with the same trainer command and tells each process the whole
cluster and its own place in it in the environment variable ``TF_CONFIG``::

    {"cluster": {"chief": ["job-chief-0:2222"], "worker": ["job-worker-0:2222"],
                 "ps": ["job-ps-0:2222", "job-ps-1:2222"]},
     "task": {"type": "worker", "index": 0}}

:func:`cluster_settings` is the one place the trainer gets its
:class:`deployment.cluster.ClusterSettings`: from the cluster flags (``--ps_hosts``,
``--worker_hosts``, ``--job_name``, ``--task_index``), else from ``TF_CONFIG``.

**Mapping.** The trainer's cluster is ps tasks and workers, worker 0 the chief. TF_CONFIG's
``chief`` (or ``master``, its older name) is that worker 0, so the trainer's workers are the chief,
then TF_CONFIG's workers in order: task ``chief:0`` is worker 0, task ``worker:i`` is worker
``i + 1``. Without a chief, ``worker:i`` is worker ``i`` (worker 0 the chief), as with the flags.
``ps:i`` is ps ``i``. An ``evaluator`` in the cluster is not part of training and is left out; a
process whose own task is the evaluator is told to run ``eval_ssd_network.py
--wait_for_checkpoints`` instead (this trainer has no evaluator task).

**One machine.** A TF_CONFIG without a cluster (unset, empty, ``{}``, ``{"cluster": {}}``) is no
cluster, as TensorFlow reads it. One chief or worker and no ps (what a one-replica job of a
managed service gets) trains on this machine alone, with a log line saying so.

**Flags and TF_CONFIG together.** The flags win, but a contradiction is an error, not a silent
choice. When the flags give a cluster (a host list) and TF_CONFIG one too, both are parsed in full
and must describe the same cluster and task: the same ps list and the same worker list (each in
order, addresses compared as written: ``localhost:2222`` is not ``127.0.0.1:2222``; TF_CONFIG's
workers are the chief, then its workers), the same job and the same index (TF_CONFIG's task
mapped as above); then the flags are used and one line says TF_CONFIG agreed. A ``--job_name``
without host lists, with a TF_CONFIG cluster, must name TF_CONFIG's task (``--job_name`` and
``--task_index``, default 0); the cluster is then TF_CONFIG's. A TF_CONFIG that is set is checked
even when the flags win: a malformed one is an error, not ignored.

**Errors** are :class:`deployment.cluster.ClusterError` (one line naming TF_CONFIG and what is
wrong, exit status 2, before any server starts): JSON that does not parse, no ``task`` or no task
type, an unknown task type or job, an index out of range, a cluster without a chief or worker,
more than one chief, several workers and no ps, an address that is not ``host:port`` or listed
twice, and flags that disagree with TF_CONFIG.
"""

import dataclasses
import json
import os

from absl import logging

from deployment import cluster

ENV_VAR = "TF_CONFIG"
CHIEF_JOBS = ("chief", "master")  # 'master': the chief's name in older TF_CONFIGs (Cloud ML Engine)
EVALUATOR_JOB = "evaluator"
KNOWN_JOBS = (cluster.PS_JOB, cluster.WORKER_JOB, *CHIEF_JOBS, EVALUATOR_JOB)
_AGAIN = "unset TF_CONFIG or drop the cluster flags"


def _error(message):
    return cluster.ClusterError(f"{ENV_VAR}: {message}")


@dataclasses.dataclass(frozen=True)
class TfConfigTask:
    """This process's place as TF_CONFIG describes it, in the trainer's terms.

    Attributes:
      ps_hosts: TF_CONFIG's ps, in order.
      worker_hosts: the trainer's workers: TF_CONFIG's chief (if any), then its workers.
      job_name: 'ps' or 'worker' (a chief is 'worker').
      task_index: the index in ``job_name`` (a chief is 0; ``worker:i`` is ``i + 1`` with a chief).
      written_task: the task as TF_CONFIG writes it, e.g. 'chief:0'.
    """

    ps_hosts: tuple
    worker_hosts: tuple
    job_name: str
    task_index: int
    written_task: str

    @property
    def trains_alone(self):
        """One chief or worker and no ps: not a cluster, this machine trains alone."""
        return not self.ps_hosts and len(self.worker_hosts) == 1

    def settings(self):
        """The :class:`deployment.cluster.ClusterSettings`, or None when this machine trains alone."""
        if self.trains_alone:
            return None
        return cluster.ClusterSettings(self.ps_hosts, self.worker_hosts, self.job_name, self.task_index)


def parse(text):
    """The :class:`TfConfigTask` of a TF_CONFIG value, or None when it describes no cluster.

    Raises:
      ClusterError: TF_CONFIG is malformed or does not describe a task of a ps/worker cluster.
    """
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise _error(f"not valid JSON ({error.msg} at line {error.lineno} column {error.colno}): {_short(text)}") \
            from error
    if not isinstance(value, dict):
        raise _error(f"expected a JSON object with 'cluster' and 'task', got {_short(text)}")
    jobs = value.get("cluster")
    if not jobs:
        return None
    if not isinstance(jobs, dict):
        raise _error(f"'cluster' must be an object of job name -> list of host:port, got {_short(json.dumps(jobs))}")
    rpc_layer = value.get("rpc_layer") or "grpc"
    if rpc_layer != "grpc":
        raise _error(f"rpc_layer {rpc_layer!r} is not supported: the trainer's servers speak grpc")
    hosts = _jobs(jobs)
    chief = hosts.get("chief") or hosts.get("master") or ()
    workers = chief + hosts.get(cluster.WORKER_JOB, ())
    ps = hosts.get(cluster.PS_JOB, ())
    if not workers:
        raise _error(f"the cluster has no chief and no worker (jobs: {', '.join(sorted(jobs)) or 'none'}); "
                     "a training cluster needs at least one")
    shared = sorted(set(ps) & set(workers) | {address for address in workers if workers.count(address) > 1})
    if shared:
        raise _error(f"{', '.join(shared)} is listed for two tasks (ps, chief or worker); each task needs its own "
                     "port")
    if not ps and len(workers) > 1:
        raise _error(f"the cluster has {len(workers)} chief/worker tasks and no ps: this trainer keeps the "
                     "variables on parameter servers; add at least one ps (a TFJob's PS replicas), or run one "
                     "chief or worker alone")
    task_type, index = _task(value.get("task"), hosts)
    written_task = f"{task_type}:{index}"
    if task_type == cluster.PS_JOB:
        return TfConfigTask(ps, workers, cluster.PS_JOB, index, written_task)
    offset = len(chief) if task_type == cluster.WORKER_JOB else 0
    return TfConfigTask(ps, workers, cluster.WORKER_JOB, index + offset, written_task)


def _short(text, limit=200):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _jobs(jobs):
    """TF_CONFIG's cluster as job -> tuple of host:port (the evaluator left out)."""
    unknown = sorted(set(jobs) - set(KNOWN_JOBS))
    if unknown:
        raise _error(f"the cluster has job(s) {', '.join(map(repr, unknown))}; this trainer runs "
                     f"{', '.join(KNOWN_JOBS[:-1])} tasks (and leaves out {EVALUATOR_JOB})")
    if all(name in jobs for name in CHIEF_JOBS):
        raise _error("the cluster has both a 'chief' and a 'master' job; one of them is the chief")
    hosts = {}
    for name, addresses in jobs.items():
        if name == EVALUATOR_JOB:
            continue
        if not isinstance(addresses, list):
            raise _error(f"cluster.{name} must be a list of host:port, got {_short(json.dumps(addresses))}")
        hosts[name] = cluster.parse_host_list(addresses, name, source=f"{ENV_VAR}'s cluster.{name}")
        if name in CHIEF_JOBS and len(hosts[name]) > 1:
            raise _error(f"cluster.{name} lists {len(hosts[name])} hosts ({', '.join(hosts[name])}); a cluster "
                         f"has one {name} (worker 0): make the others workers")
    return hosts


def _task(task, hosts):
    """(task type, index) of TF_CONFIG's task, checked against the cluster."""
    if task is None:
        raise _error("no 'task': each process needs its own \"task\": {\"type\": ..., \"index\": ...} beside "
                     "the cluster")
    if not isinstance(task, dict) or not task.get("type"):
        raise _error(f"the task has no type: expected {{\"type\": ..., \"index\": ...}}, got "
                     f"{_short(json.dumps(task))}")
    task_type = task["type"]
    if task_type == EVALUATOR_JOB:
        raise _error("this process is the evaluator, and train_ssd_network.py does not evaluate: run "
                     "`eval_ssd_network.py --checkpoint_path=<the chief's --train_dir> --wait_for_checkpoints` "
                     "as that replica's command (or validate in the run: --validation_split on the chief)")
    if task_type not in KNOWN_JOBS:
        raise _error(f"task type {task_type!r} is not one this trainer runs ({', '.join(KNOWN_JOBS[:-1])})")
    index = task.get("index", 0 if task_type in CHIEF_JOBS else None)
    if isinstance(index, str) and index.strip().isdigit():
        index = int(index)
    if isinstance(index, bool) or not isinstance(index, int):
        raise _error(f"task {task_type!r} has index {index!r}; expected an integer")
    listed = hosts.get(task_type, ())
    if not 0 <= index < len(listed):
        allowed = f"so the index must be in [0, {len(listed) - 1}]" if listed else "so no task can be one"
        raise _error(f"task {task_type}:{index} is out of range: cluster.{task_type} lists {len(listed)} "
                     f"host(s), {allowed}")
    return task_type, index


def _disagreements(described, ps_hosts, worker_hosts, job_name, task_index):
    """What the flags say that TF_CONFIG does not (each as 'flag value but TF_CONFIG value')."""
    found = []
    if ps_hosts is not None and tuple(ps_hosts) != described.ps_hosts:
        found.append(f"--ps_hosts={','.join(ps_hosts)} but TF_CONFIG's ps are {','.join(described.ps_hosts) or 'none'}")
    if worker_hosts is not None and tuple(worker_hosts) != described.worker_hosts:
        found.append(f"--worker_hosts={','.join(worker_hosts)} but TF_CONFIG's workers (its chief, then its "
                     f"workers) are {','.join(described.worker_hosts)}")
    if (job_name, task_index) != (described.job_name, described.task_index):
        found.append(f"--job_name={job_name} --task_index={task_index} but TF_CONFIG's task "
                     f"{described.written_task} is {described.job_name} task {described.task_index}")
    return found


def cluster_settings(ps_hosts, worker_hosts, job_name, task_index, environ=None):
    """This task's :class:`deployment.cluster.ClusterSettings` (None: this machine alone), from the
    cluster flags, else from TF_CONFIG (``environ``, default ``os.environ``); logs one line when
    TF_CONFIG was read. The rules are the module's.

    Raises:
      ClusterError: bad flags, a malformed TF_CONFIG, or flags that contradict TF_CONFIG.
    """
    text = (os.environ if environ is None else environ).get(ENV_VAR)
    if text is None or not text.strip():
        return cluster.settings_from_flags(ps_hosts, worker_hosts, job_name, task_index)
    described = parse(text)
    flags_give_cluster = bool((ps_hosts or "").strip() or (worker_hosts or "").strip())
    if described is None:
        settings = cluster.settings_from_flags(ps_hosts, worker_hosts, job_name, task_index)
        logging.info("TF_CONFIG describes no cluster: %s", "using the cluster flags" if flags_give_cluster
                     else "training on this machine alone")
        return settings
    if flags_give_cluster:
        settings = cluster.settings_from_flags(ps_hosts, worker_hosts, job_name, task_index)
        disagreements = _disagreements(described, settings.ps_hosts, settings.worker_hosts, settings.job_name,
                                       settings.task_index)
        if disagreements:
            raise cluster.ClusterError(f"the cluster flags and TF_CONFIG disagree: {'; '.join(disagreements)} "
                                       f"({_AGAIN})")
        logging.info("The cluster flags and TF_CONFIG (task %s) describe the same cluster and task: %s, "
                     "from the flags", described.written_task, settings.describe())
        return settings
    if job_name:
        disagreements = _disagreements(described, None, None, job_name, task_index)
        if disagreements:
            raise cluster.ClusterError(f"the flags and TF_CONFIG disagree: {'; '.join(disagreements)} (drop "
                                       "--job_name and --task_index: TF_CONFIG gives the task)")
    settings = described.settings()
    if settings is None:
        logging.info("TF_CONFIG describes one %s (task %s) and no ps: training on this machine alone",
                     described.written_task.split(":")[0], described.written_task)
    else:
        logging.info("The cluster comes from TF_CONFIG: its task %s is %s", described.written_task,
                     settings.describe())
    return settings
