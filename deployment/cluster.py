"""The cluster of a multi-machine run: parse the TF-1 flags, start this task's server, reach the ps.

A multi-machine run is TensorFlow's own distributed runtime (docs/design.md, "Devices and towers"): every task
is started with the same ``--ps_hosts`` and ``--worker_hosts`` (comma-separated ``host:port``)
and its own ``--job_name`` (``ps`` or ``worker``) and ``--task_index``. A ps task serves
variables and blocks; worker ``task_index`` trains replica ``task_index``; worker 0 is the
chief.

Errors are :class:`ClusterError` with a message naming the flag and the value at fault, raised
before any server starts: a host list that does not parse, a duplicate address, an unknown job,
a task index out of range. :func:`wait_for_tasks` turns "the ps is not up" into a
:class:`ClusterError` after a timeout instead of TensorFlow's endless "CreateSession still
waiting for response from worker" loop.

Sessions get :func:`distributed_session_config`: ``device_filters`` so that a worker only talks
to the ps tasks and itself (a dead or slow *other* worker never blocks it), and
``operation_timeout_in_ms`` so that a step whose ps died fails with ``DeadlineExceeded`` rather
than hanging forever. A worker that lost a ps exits with status 3 and one clear line within a
bounded time (:class:`LostClusterGuard`: TensorFlow's session close would block forever).

Synchronous training uses :class:`SyncReplicasOptimizer` (TensorFlow's, with no head-start
tokens and its sync ops outside the caller's control dependencies, such as the NaN guard) and
non-chief workers start
only once the chief has initialised *and* restored the model (:class:`ChiefReadyFlag`).

Listening: TensorFlow's gRPC server binds ``0.0.0.0:<port>`` of the task's own address (the
address in the host list is what the *other* tasks dial; the bind address is hard-coded in
TensorFlow's ``grpc_server_lib.cc``). A task therefore listens on exactly the one port the user
listed for it, on every interface of its machine; keep that port behind a firewall that admits
only the cluster's machines. No other port is opened.
"""

import contextlib
import dataclasses
import errno
import os
import socket
import sys
import threading
import time

from absl import logging
import tensorflow as tf

from command_line import first_line
from tf_compat import tf1

PS_JOB = "ps"
WORKER_JOB = "worker"
JOB_NAMES = (PS_JOB, WORKER_JOB)

DEFAULT_STARTUP_TIMEOUT_SECS = 120.0
DEFAULT_OPERATION_TIMEOUT_SECS = 600.0
DEFAULT_LOST_PS_SECS = 10.0
DEFAULT_EXIT_GRACE_SECS = 5.0
LOST_CLUSTER_EXIT_CODE = 3
LOST_CLUSTER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError)


class ClusterError(RuntimeError):
    """The cluster flags are inconsistent, or a task cannot be reached."""


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    """This task's place in the cluster.

    Attributes:
      ps_hosts: the ps tasks' ``host:port``, task order.
      worker_hosts: the workers' ``host:port``, task order (task 0 is the chief).
      job_name: 'ps' or 'worker'.
      task_index: this task's index in its job.
    """

    ps_hosts: tuple
    worker_hosts: tuple
    job_name: str
    task_index: int

    @property
    def num_ps_tasks(self):
        return len(self.ps_hosts)

    @property
    def num_workers(self):
        return len(self.worker_hosts)

    @property
    def is_chief(self):
        return self.job_name == WORKER_JOB and self.task_index == 0

    @property
    def address(self):
        """This task's own ``host:port``."""
        return (self.ps_hosts if self.job_name == PS_JOB else self.worker_hosts)[self.task_index]

    def cluster_spec(self):
        return tf.train.ClusterSpec({PS_JOB: list(self.ps_hosts), WORKER_JOB: list(self.worker_hosts)})

    def describe(self):
        return (f"{self.job_name} task {self.task_index} at {self.address}"
                f"{' (chief)' if self.is_chief else ''} of {self.num_ps_tasks} ps + {self.num_workers} worker(s)")


def parse_host_list(text, flag_name, source=None):
    """``'h1:p1,h2:p2'`` (or a list of entries) -> ('h1:p1', 'h2:p2'); ClusterError naming ``--flag_name``
    (or ``source``, e.g. "TF_CONFIG's cluster.worker", for hosts that came from elsewhere)."""
    source = source or f"--{flag_name}"
    if text is None or (isinstance(text, str) and not text.strip()):
        return ()
    entries = text if isinstance(text, (list, tuple)) else str(text).split(",")
    hosts = []
    for raw in entries:
        entry = str(raw).strip()
        if not entry:
            expected = "host:port entries" if isinstance(text, (list, tuple)) else "comma-separated host:port"
            raise ClusterError(f"{source}={text!r}: empty entry; expected {expected}")
        host, sep, port_text = entry.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host_name = host[1:-1]
        else:
            host_name = host
        if not sep or not host_name or ":" in host and not host.startswith("["):
            raise ClusterError(
                f"{source}: {entry!r} is not host:port (IPv6 hosts go in brackets, e.g. [::1]:2222)")
        try:
            port = int(port_text)
        except ValueError:
            port = -1
        if not 1 <= port <= 65535:
            raise ClusterError(f"{source}: {entry!r} has port {port_text!r}; expected an integer in [1, 65535]")
        hosts.append(f"{host}:{port}")
    duplicates = sorted({h for h in hosts if hosts.count(h) > 1})
    if duplicates:
        raise ClusterError(f"{source} lists {', '.join(duplicates)} more than once")
    return tuple(hosts)


def settings_from_flags(ps_hosts, worker_hosts, job_name, task_index):
    """The :class:`ClusterSettings` of the flags, or None when neither host list is given (one machine).

    Raises:
      ClusterError: the flags do not describe a task of a ps/worker cluster.
    """
    ps = parse_host_list(ps_hosts or None, "ps_hosts")
    workers = parse_host_list(worker_hosts or None, "worker_hosts")
    if not ps and not workers:
        if job_name:
            raise ClusterError(f"--job_name={job_name} needs --ps_hosts and --worker_hosts")
        return None
    if not workers:
        raise ClusterError("--ps_hosts is set but --worker_hosts is empty: list the workers' host:port")
    if not ps:
        raise ClusterError(
            "--worker_hosts is set but --ps_hosts is empty: a multi-machine run keeps its variables on "
            "parameter servers; list at least one ps host:port (one machine: leave both empty)")
    shared = sorted(set(ps) & set(workers))
    if shared:
        raise ClusterError(f"{', '.join(shared)} is in both --ps_hosts and --worker_hosts; each task needs its own port")
    if job_name not in JOB_NAMES:
        raise ClusterError(f"--job_name must be one of {', '.join(JOB_NAMES)} with --ps_hosts/--worker_hosts, "
                           f"got {job_name!r}")
    hosts = ps if job_name == PS_JOB else workers
    if task_index is None or not 0 <= int(task_index) < len(hosts):
        raise ClusterError(
            f"--task_index={task_index} is out of range for job '{job_name}': "
            f"--{job_name}_hosts lists {len(hosts)} task(s), so it must be in [0, {len(hosts) - 1}]")
    return ClusterSettings(ps, workers, job_name, int(task_index))


def distributed_session_config(settings, base_config=None, operation_timeout_secs=DEFAULT_OPERATION_TIMEOUT_SECS):
    """``base_config`` (a ConfigProto, copied) with this task's device filters and operation timeout.

    Args:
      settings: :class:`ClusterSettings`.
      base_config: e.g. :func:`deployment.devices.session_config`; default: an empty ConfigProto.
      operation_timeout_secs: a session.run waiting longer than this fails (<= 0: no timeout).
        In sync mode a worker's step waits for the slowest replica, so keep it well above a step.
    """
    config = tf1.ConfigProto()
    if base_config is not None:
        config.CopyFrom(base_config)
    del config.device_filters[:]
    config.device_filters.extend([f"/job:{PS_JOB}", f"/job:{settings.job_name}/task:{settings.task_index}"])
    if operation_timeout_secs and operation_timeout_secs > 0:
        config.operation_timeout_in_ms = int(operation_timeout_secs * 1000)
    return config


def start_server(settings, config=None):
    """Starts this task's ``tf.compat.v1.train.Server`` at its listed port.

    Raises:
      ClusterError: the port is taken (or cannot be bound) on this machine.
    """
    port = int(settings.address.rpartition(":")[2])
    _check_port_free(port, settings)
    try:
        server = tf1.train.Server(settings.cluster_spec(), job_name=settings.job_name,
                                  task_index=settings.task_index, config=config, start=True)
    except (tf.errors.UnknownError, tf.errors.InternalError) as error:
        raise ClusterError(f"{settings.describe()}: cannot start the TensorFlow server on port {port}: {error}") from error
    logging.info("Started the TensorFlow server of %s (listens on port %d, all interfaces)", settings.describe(), port)
    return server


def _check_port_free(port, settings):
    """A clear error for a port in use; TensorFlow's own only says 'Could not start gRPC server'."""
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Like gRPC's own listener: connections of a killed previous run in TIME_WAIT do not block a restart.
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind(("", port))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise ClusterError(
                f"{settings.describe()}: port {port} is already in use on this machine "
                "(another task, or a previous run still alive?)") from error
        if error.errno != errno.EAFNOSUPPORT:
            raise ClusterError(f"{settings.describe()}: cannot bind port {port}: {error}") from error
    finally:
        probe.close()


def _reachable(address, timeout_secs):
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_secs):
            return True
    except OSError:
        return False


def wait_for_tasks(addresses, timeout_secs=DEFAULT_STARTUP_TIMEOUT_SECS, what="ps task", poll_secs=0.5):
    """Waits until a TCP connection to each ``host:port`` succeeds.

    Raises:
      ClusterError: naming the tasks still unreachable after ``timeout_secs``.
    """
    deadline = time.monotonic() + max(timeout_secs, 0.0)
    pending = list(addresses)
    logged = False
    while True:
        pending = [a for a in pending if not _reachable(a, min(2.0, max(timeout_secs, 0.1)))]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise ClusterError(
                f"cannot reach {what}(s) {', '.join(pending)} within {timeout_secs:g} s: start them first, check "
                "the host:port lists and the firewall (or raise --dist_startup_timeout_secs)")
        if not logged:
            logging.info("Waiting up to %g s for %s(s) %s", timeout_secs, what, ", ".join(pending))
            logged = True
        time.sleep(poll_secs)


class ChiefReadyFlag:
    """A flag on the ps that the chief sets once its session is prepared (initialised *and* restored).

    A non-chief must not wait only for "every variable initialised": the chief's Supervisor runs
    the initialisers first and the ``init_fn`` restore of ``--checkpoint_path`` after, so a
    non-chief could take its first step on the random initial weights. The flag is a variable in
    no collection (no initialiser, saver or readiness check touches it) placed by the device
    function of the variables (a ps task); the chief sets it from ``slim.learning.train``'s
    ``session_wrapper``, which runs after ``init_fn`` or the resume restore.
    """

    def __init__(self, name="chief_model_ready"):
        # Set = initialised: only ``set_op`` initialises it, and a restarted ps starts without it.
        self.variable = tf1.Variable(True, trainable=False, collections=[], name=name)
        self.set_op = self.variable.initializer
        self.is_set = tf1.is_variable_initialized(self.variable)

    def session_wrapper(self, session):
        """For ``slim.learning.train(session_wrapper=...)`` on the chief: sets the flag, returns ``session``."""
        session.run(self.set_op)
        logging.info("The chief's model is initialised or restored: other workers may start")
        return session


def wait_for_chief_model(target, config, timeout_secs, ready_flag, poll_secs=1.0):
    """A non-chief worker: waits until the chief has set ``ready_flag`` (:class:`ChiefReadyFlag`).

    The Supervisor of ``slim.learning.train`` also waits, but for initialisation only (not the
    restore) and polling every 30 s. ``timeout_secs <= 0`` waits forever.

    Raises:
      ClusterError: the flag is still not set after ``timeout_secs``.
    """
    deadline = time.monotonic() + timeout_secs if timeout_secs > 0 else None
    logged = False
    with tf1.Session(target, config=config) as session:
        while not session.run(ready_flag.is_set):
            if deadline is not None and time.monotonic() >= deadline:
                raise ClusterError(
                    f"the chief (worker 0) has not initialised or restored the model within {timeout_secs:g} s; "
                    "is it running? (raise --dist_startup_timeout_secs for a slow start)")
            if not logged:
                logging.info("Waiting for the chief to initialise or restore the model")
                logged = True
            time.sleep(poll_secs)


class SyncReplicasOptimizer(tf1.train.SyncReplicasOptimizer):
    """``tf.compat.v1.train.SyncReplicasOptimizer`` whose chief adds no head-start tokens unless it must.

    TensorFlow's chief puts ``replicas_to_aggregate`` tokens in the sync queue at start, so a fast
    worker may push two gradients (its first two batches) into the first update while a slow
    one's is dropped as stale. With only the tokens needed to avoid a deadlock
    (``max(0, replicas_to_aggregate - total_num_replicas)``), every worker pushes one gradient and
    then waits for the first update: with all replicas aggregated, global step 1 averages exactly
    one batch of each replica, as one machine with that many clones would. Later steps keep
    TensorFlow's semantics: an update averages ``replicas_to_aggregate`` fresh gradients, and a
    worker may contribute more than one of them.
    """

    def __init__(self, opt, replicas_to_aggregate, total_num_replicas=None, **kwargs):
        super().__init__(opt, replicas_to_aggregate, total_num_replicas=total_num_replicas, **kwargs)
        total = replicas_to_aggregate if total_num_replicas is None else total_num_replicas
        self.tokens_needed_at_start = max(0, replicas_to_aggregate - total)

    def get_init_tokens_op(self, num_tokens=-1):
        return super().get_init_tokens_op(self.tokens_needed_at_start if num_tokens == -1 else num_tokens)

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        """Keeps the caller's control dependencies (e.g. the NaN guard) on the gradients pushed, only.

        TensorFlow's ``apply_gradients`` also builds the chief's aggregation op, the token queue and
        the local-step init and readiness ops; built under the caller's control dependencies they
        would run the forward pass (and take a batch from the input pipeline) each time the
        Supervisor checks readiness and each time the chief's queue runner applies an update.
        """
        guarded = [(None if grad is None else _identity(grad), var) for grad, var in grads_and_vars]
        with tf1.control_dependencies(None):
            return super().apply_gradients(guarded, global_step=global_step, name=name)


def _identity(gradient):
    """``tf.identity`` of a dense or sparse gradient, created under the current control dependencies."""
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(tf.identity(gradient.values), gradient.indices, gradient.dense_shape)
    return tf.identity(gradient)


def lost_cluster_message(reason):
    """The one log line of a worker that lost its cluster."""
    return (f"Lost the cluster: {reason}. Restart the whole cluster (ps tasks first) to resume from the chief's "
            "last checkpoint")


class LostClusterGuard:
    """Ends a worker with a clear error and exit status 3, within a bounded time, when a ps task is lost.

    Why a hard exit: once a ps task has died, closing the worker's session blocks forever (gdb on
    TF 2.21: ``MasterSession::Close`` waits for a count of running steps that never returns to
    zero, with no step running), and ``Supervisor.managed_session`` closes the session *before* it
    re-raises the step's error, so the error never reaches the trainer and the process hangs. The
    guard declares the cluster lost when either

    * a training step raises ``UnavailableError`` or ``DeadlineExceededError`` (wrap the step
      function with :meth:`wrap_train_step`), or
    * a ps task's port refuses TCP connections for ``lost_ps_secs`` in a row (a watcher thread,
      for a worker that is blocked anywhere else: waiting for the chief, saving, closing),

    then logs :func:`lost_cluster_message` once, lets the normal unwinding run for
    ``exit_grace_secs`` (the trainer's own handler exits 3 with the same message if it gets the
    error) and otherwise ends the process with ``os._exit(3)``. Nothing is lost by that: the ps
    held the only copy of the live variables, so the last checkpoint is what a restart resumes from.
    """

    def __init__(self, ps_addresses, lost_ps_secs=DEFAULT_LOST_PS_SECS, exit_grace_secs=DEFAULT_EXIT_GRACE_SECS,
                 poll_secs=1.0, exit_fn=os._exit):
        self.ps_addresses = tuple(ps_addresses)
        self.lost_ps_secs = lost_ps_secs
        self.exit_grace_secs = exit_grace_secs
        self.poll_secs = poll_secs
        self.reason = None
        self._exit_fn = exit_fn
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._watcher = None
        self._exit_timer = None

    def start(self):
        """Starts watching the ps ports (a daemon thread); returns self."""
        if self.lost_ps_secs and self.lost_ps_secs > 0 and self.ps_addresses:
            self._watcher = threading.Thread(target=self._watch, name="lost_ps_watcher", daemon=True)
            self._watcher.start()
        return self

    def stop(self):
        """Stops watching (training ended normally). A loss already declared still exits."""
        self._stopped.set()

    def lost(self, reason):
        """Declares the cluster lost (idempotent): logs once, exits with status 3 after the grace period."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            self._stopped.set()
            logging.error("%s", lost_cluster_message(reason))
            logging.error("Exiting with status %d in at most %g s", LOST_CLUSTER_EXIT_CODE, self.exit_grace_secs)
            self._exit_timer = threading.Timer(max(self.exit_grace_secs, 0.0), self._exit)
            self._exit_timer.daemon = True
            self._exit_timer.start()

    def _exit(self):
        logging.error("%s (session shutdown blocked on the lost ps; exiting now)", lost_cluster_message(self.reason))
        logging.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        self._exit_fn(LOST_CLUSTER_EXIT_CODE)

    def _watch(self):
        first_refused = {}
        while not self._stopped.wait(self.poll_secs):
            now = time.monotonic()
            for address in self.ps_addresses:
                if _reachable(address, min(2.0, self.lost_ps_secs)):
                    first_refused.pop(address, None)
                    continue
                since = first_refused.setdefault(address, now)
                if now - since >= self.lost_ps_secs:
                    self.lost(f"ps task {address} has refused connections for {now - since:.0f} s (it died or "
                              "its machine is unreachable)")
                    return

    def wrap_train_step(self, train_step_fn):
        """``train_step_fn`` that declares the cluster lost when its step raises a lost-cluster error."""

        def guarded_train_step_fn(session, train_op, global_step, train_step_kwargs):
            try:
                return train_step_fn(session, train_op, global_step, train_step_kwargs)
            except LOST_CLUSTER_ERRORS as error:
                self.lost(f"a training step failed with {type(error).__name__}: {first_line(error)}")
                raise

        return guarded_train_step_fn



@contextlib.contextmanager
def sync_chief_stop_grace(secs=5.0):
    """While active, Supervisors wait ``secs`` (not 120 s) for their threads when they stop.

    A sync chief's queue runner (``SyncReplicasOptimizer.get_chief_queue_runner``) is left
    blocked at the end of training in the accumulators' ``take_grad``, waiting for gradients of a
    step no replica will run; ``slim.learning.train`` (with ``ignore_live_threads=True``) would
    wait the Supervisor's fixed 120 s grace period for it after the final checkpoint is written.
    The thread ends with the session (its run is cancelled); nothing is lost by not waiting.

    Why a temporary class patch: ``slim.learning.train`` builds its Supervisor inside and has no
    argument for the grace period; a ``train_step_fn`` cannot unblock another thread's
    ``take_grad`` (only closing the session does, and that happens after the wait); and running
    the chief's queue runner outside slim (to keep it from the Supervisor's coordinator) would
    duplicate slim's ``sync_optimizer`` handling (local init ops, tokens, readiness). The patch
    only sets a default (an explicit ``stop_grace_secs`` wins) and is undone on exit; the trainer
    applies it around ``slim.learning.train`` of a sync chief only.
    """
    supervisor = tf1.train.Supervisor
    original = supervisor.__init__

    def init(self, *args, **kwargs):
        kwargs.setdefault("stop_grace_secs", secs)
        original(self, *args, **kwargs)

    supervisor.__init__ = init
    try:
        yield
    finally:
        supervisor.__init__ = original


def shard_batches(enumerated_dataset, batch_size, num_shards, shard_index):
    """Keeps the examples of every ``num_shards``-th batch of ``batch_size``, starting at ``shard_index``.

    ``enumerated_dataset`` yields ``(index, example)``; so does the result, indices unchanged
    (per-example augmentation seeds stay those of one machine). All replicas read the same
    example order (same data seed), so replica ``r`` trains on the batches a single machine with
    ``num_shards`` clones would give clone ``r``, and no two replicas train on the same batch.
    """
    if num_shards <= 1:
        return enumerated_dataset
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    return enumerated_dataset.filter(
        lambda index, example: tf.equal((index // batch_size) % num_shards, shard_index))
