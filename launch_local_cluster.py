#!/usr/bin/env python
"""Starts a local cluster of N ps + M workers of train_ssd_network.py on 127.0.0.1, to try it on one box.

    python launch_local_cluster.py --num_ps=1 --num_workers=2 [--log_dir=DIR] [--via_tf_config] -- \\
        --train_dir=/tmp/dist --max_number_of_steps=100 --sync_replicas [other trainer flags]

Every task is a separate process listening on a free port of 127.0.0.1 (chosen by the OS), with
the same ``--ps_hosts``/``--worker_hosts`` and its own ``--job_name``/``--task_index``; the flags
after ``--`` go to every task. With ``--via_tf_config`` the tasks get no cluster flags but a
``TF_CONFIG`` environment variable each, as Kubernetes (Kubeflow's TFJob) would give them: worker 0
is TF_CONFIG's ``chief``, worker i its ``worker`` i - 1 (docs/tfjob.yaml). An inherited
``TF_CONFIG`` is never passed on: the launcher describes the cluster itself. Each task's output
goes to ``<log_dir>/<job>_<index>.log``. The launcher waits for the workers, then stops the ps
tasks (they serve forever) and exits with the first non-zero worker status (0 if all succeeded).
Ctrl-C, SIGTERM or a launcher error stops every task it started (SIGTERM, then SIGKILL after a
grace period).

On a real cluster run the same trainer command on each machine instead (README: multi-machine).
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from absl import flags

import command_line

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
TRAINER = os.path.join(REPO_ROOT, "train_ssd_network.py")
LOOPBACK = "127.0.0.1"
_CLUSTER_FLAGS = ("--ps_hosts", "--worker_hosts", "--job_name", "--task_index")


def free_ports(count, host=LOOPBACK):
    """``count`` distinct free TCP ports on ``host`` (bound to port 0 and released, all at once)."""
    import socket

    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class LocalCluster:
    """N ps + M worker processes of the trainer on loopback; also the fault tests' handle.

    Use as a context manager (every child is killed on exit). ``trainer_args`` are forwarded to
    every task; ``env`` updates the children's environment. ``via_tf_config``: each task learns the
    cluster from ``TF_CONFIG`` (:meth:`tf_config`) instead of the cluster flags; tasks keep the
    trainer's names (``worker`` 0 is the chief) in :meth:`start`, :meth:`kill` and the log names.
    """

    def __init__(self, num_ps, num_workers, trainer_args=(), log_dir=None, env=None, python=None, trainer=TRAINER,
                 via_tf_config=False):
        if num_ps < 1 or num_workers < 1:
            raise ValueError(f"a cluster needs >= 1 ps and >= 1 worker, got {num_ps} ps, {num_workers} workers")
        clashing = [a for a in trainer_args if a.split("=")[0] in _CLUSTER_FLAGS]
        if clashing:
            raise ValueError(f"the launcher sets {', '.join(_CLUSTER_FLAGS)} itself; remove {clashing}")
        ports = free_ports(num_ps + num_workers)
        self.ps_hosts = [f"{LOOPBACK}:{p}" for p in ports[:num_ps]]
        self.worker_hosts = [f"{LOOPBACK}:{p}" for p in ports[num_ps:]]
        self.trainer_args = list(trainer_args)
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="ssd_towers_cluster_")
        os.makedirs(self.log_dir, exist_ok=True)
        # An inherited TF_CONFIG would describe another cluster than the one launched here.
        self.env = {name: value for name, value in os.environ.items() if name != "TF_CONFIG"}
        self.env.update(env or {})
        self.via_tf_config = via_tf_config
        self.python = python or sys.executable
        self.trainer = trainer
        self.processes = {}  # (job, index) -> Popen
        self._log_files = []
        self._starts = {}

    def command(self, job, index, extra_args=()):
        cluster_flags = [] if self.via_tf_config else [
            f"--ps_hosts={','.join(self.ps_hosts)}", f"--worker_hosts={','.join(self.worker_hosts)}",
            f"--job_name={job}", f"--task_index={index}"]
        return [self.python, self.trainer, *cluster_flags, *self.trainer_args, *extra_args]

    def tf_config(self, job, index):
        """The ``TF_CONFIG`` of task ``job:index`` (trainer names): a Kubeflow TFJob's, with a Chief replica
        (worker 0) and Worker replicas (workers 1...)."""
        jobs = {"chief": self.worker_hosts[:1], "ps": self.ps_hosts}
        if len(self.worker_hosts) > 1:
            jobs["worker"] = self.worker_hosts[1:]
        if job == "worker":
            task = {"type": "chief", "index": 0} if index == 0 else {"type": "worker", "index": index - 1}
        else:
            task = {"type": job, "index": index}
        return json.dumps({"cluster": jobs, "task": task})

    def task_env(self, job, index):
        """The environment of task ``job:index``."""
        return dict(self.env, TF_CONFIG=self.tf_config(job, index)) if self.via_tf_config else self.env

    def log_path(self, job, index):
        start = self._starts.get((job, index), 0)
        suffix = f".{start}" if start > 1 else ""
        return os.path.join(self.log_dir, f"{job}_{index}{suffix}.log")

    def start(self, job, index, extra_args=()):
        """Starts (or restarts, after it ended) task ``job:index``; its log is ``log_path`` (numbered on restarts)."""
        old = self.processes.get((job, index))
        if old is not None and old.poll() is None:
            raise RuntimeError(f"{job}:{index} is still running (pid {old.pid})")
        self._starts[(job, index)] = self._starts.get((job, index), 0) + 1
        log = open(self.log_path(job, index), "w")
        self._log_files.append(log)
        # Own session: a signal for the launcher's terminal does not reach the tasks twice, and
        # kill() can take the task's whole process group.
        self.processes[(job, index)] = subprocess.Popen(
            self.command(job, index, extra_args), cwd=REPO_ROOT, env=self.task_env(job, index), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        return self.processes[(job, index)]

    def start_all(self):
        for i in range(len(self.ps_hosts)):
            self.start("ps", i)
        for i in range(len(self.worker_hosts)):
            self.start("worker", i)

    def kill(self, job, index, sig=signal.SIGKILL):
        """Sends ``sig`` to the task's process group (default SIGKILL: a crash) and reaps it."""
        process = self.processes.get((job, index))
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def wait(self, job, index, timeout=None):
        """The task's exit status; ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
        return self.processes[(job, index)].wait(timeout=timeout)

    def wait_workers(self, timeout=None):
        """Waits for every worker; returns their exit statuses (task order). Stops early when one fails."""
        deadline = None if timeout is None else time.monotonic() + timeout
        workers = [(job, i) for (job, i) in sorted(self.processes) if job == "worker"]
        while True:
            codes = [self.processes[w].poll() for w in workers]
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                return codes
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"workers {workers}", timeout)
            time.sleep(0.2)

    def read_log(self, job, index):
        with open(self.log_path(job, index), errors="replace") as f:
            return f.read()

    def stop_all(self, grace_secs=5.0):
        """SIGTERM to every live task, SIGKILL to those still alive after ``grace_secs``."""
        live = [p for p in self.processes.values() if p.poll() is None]
        for p in live:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_secs
        for p in live:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        for log in self._log_files:
            log.close()
        self._log_files = []

    def __enter__(self):
        return self

    def __exit__(self, *unused):
        self.stop_all()


def define_flags(flag_values):
    """Defines the launcher's own flags on ``flag_values`` (a fresh :class:`absl.flags.FlagValues`); returns it."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_integer("num_ps", 1, "Parameter-server tasks.", **fv)
    flags.DEFINE_integer("num_workers", 2, "Worker tasks (worker 0 is the chief).", **fv)
    flags.DEFINE_string("log_dir", None, "Where each task's log goes (default: a temporary folder).", **fv)
    flags.DEFINE_float("timeout_secs", None, "Stop everything after this long.", **fv)
    flags.DEFINE_bool("via_tf_config", False, "Describe the cluster to each task in a TF_CONFIG environment "
                      "variable (chief + workers + ps, as Kubeflow's TFJob does) instead of cluster flags.", **fv)
    return flag_values


def parse_args(argv):
    """(the launcher's options, the trainer's flags): the arguments after ``--`` go to every task."""
    if "--" in argv:
        split = argv.index("--")
        own, trainer_args = argv[:split], argv[split + 1:]
    else:
        own, trainer_args = argv, []
    args = command_line.parse_flags(define_flags(flags.FlagValues()), own, __doc__,
                                    program="launch_local_cluster.py")
    return args, trainer_args


def main(argv=None):
    args, trainer_args = parse_args(sys.argv[1:] if argv is None else argv)

    def on_signal(signum, unused_frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    with LocalCluster(args.num_ps, args.num_workers, trainer_args, log_dir=args.log_dir,
                      via_tf_config=args.via_tf_config) as local:
        print(f"ps: {','.join(local.ps_hosts)}  workers: {','.join(local.worker_hosts)}  logs: {local.log_dir}",
              flush=True)
        local.start_all()
        try:
            codes = local.wait_workers(timeout=args.timeout_secs)
        except KeyboardInterrupt:
            print("Interrupted: stopping every task", file=sys.stderr, flush=True)
            return 130
        except subprocess.TimeoutExpired:
            print(f"Timed out after {args.timeout_secs} s: stopping every task", file=sys.stderr, flush=True)
            return 124
        for index, code in enumerate(codes):
            status = "running (stopped)" if code is None else f"exit {code}"
            print(f"worker {index}: {status}; log {local.log_path('worker', index)}", flush=True)
        return next((c for c in codes if c), 0) or 0


if __name__ == "__main__":
    sys.exit(main())
