"""1 ps + 2 workers of train_ssd_network.py as separate processes on 127.0.0.1 (launch_local_cluster.LocalCluster).

Each run is bounded in time and every process is killed in ``finally`` (the context manager).
"""

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from launch_local_cluster import LocalCluster
from deployment import devices
from tf_compat import tf1
from training import graph as graph_lib, machines, plan as plan_lib
from training.config import TrainingConfig

TINY = ["--image_size=96", "--batch_size=2", "--num_readers=1", "--num_preprocessing_threads=1",
        "--log_every_n_steps=1", "--summarize_activations=false", "--summarize_variables=false",
        "--num_summary_images=0", "--checkpoint_path=", "--save_summaries_secs=3600",
        "--dist_startup_timeout_secs=120"]
RUN_TIMEOUT_SECS = 240
LOST_PS_EXIT_BOUND_SECS = 30
RESTART_TIMEOUT_SECS = 120
STEP_LINE = re.compile(r"global step (\d+): loss = ([-+0-9.eE]+|nan|inf)")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("dist_cache"))


def _steps(log):
    return [(int(step), float(loss)) for step, loss in STEP_LINE.findall(log)]


SCORE_BATCHES = 4


def _single_machine_options(cache):
    os.environ["SSD_TOWERS_CACHE"] = cache
    return TrainingConfig(
        image_size="96", batch_size=2, num_readers=1, num_preprocessing_threads=1, augmentation="none",
        summarize_activations=False, summarize_variables=False, num_summary_images=0)


def _score_in_single_machine_run(checkpoint, cache, model_variables_only=False):
    """(global step, mean multibox loss over the same SCORE_BATCHES fixed batches) of ``checkpoint``
    restored into the one-machine training graph (every variable, unless ``model_variables_only``)."""
    from tf_compat import slim

    opts = _single_machine_options(cache)
    spec = plan_lib.resolve_dataset(opts)
    with tf.Graph().as_default():
        parts = graph_lib.build_training_graph(opts, spec, machines.deployment_for(opts))
        multibox_loss = tf.add_n(tf1.losses.get_losses())
        with tf1.Session(config=devices.session_config()) as session:
            if model_variables_only:
                session.run(tf1.global_variables_initializer())
            tf1.train.Saver(slim.get_model_variables() if model_variables_only else None).restore(session, checkpoint)
            step = session.run(parts.global_step)
            losses = [session.run(multibox_loss) for _ in range(SCORE_BATCHES)]
    return int(step), float(np.mean(losses))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["async", "sync"])
def test_one_ps_two_workers_train_lower_the_loss_and_the_chief_checkpoint_restores(tmp_path, shared_cache, mode):
    """From the same saved start, a short run lowers the multibox loss on fixed batches (scored in a
    one-machine graph that restores every variable of the chief's final checkpoint)."""
    steps = 8
    init = str(tmp_path / "init" / "model.ckpt")
    _save_initial_model(init, shared_cache)
    args = [a for a in TINY if not a.startswith("--checkpoint_path")] + [
        f"--checkpoint_path={init}", f"--train_dir={tmp_path / 'train'}", f"--max_number_of_steps={steps}"]
    if mode == "sync":
        args.append("--sync_replicas")
    with LocalCluster(1, 2, args, log_dir=str(tmp_path / "logs"), env={"SSD_TOWERS_CACHE": shared_cache}) as local:
        local.start_all()
        codes = local.wait_workers(timeout=RUN_TIMEOUT_SECS)
        logs = [local.read_log("worker", i) for i in range(2)]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    per_worker = [_steps(log) for log in logs]
    assert all(per_worker), "a worker logged no step"
    losses = [loss for worker in per_worker for _, loss in worker]
    assert np.all(np.isfinite(losses))
    reached = max(step for worker in per_worker for step, _ in worker)
    assert reached >= steps
    if mode == "async":
        # Both workers applied steps to one shared global step: together they ran about as many steps as
        # it counts (each worker running its own counter would log ~2x). Two workers may read the counter
        # after the same increment, so the logged values themselves can repeat.
        assert sum(len(worker) for worker in per_worker) <= reached + 2, per_worker
    else:
        # Each sync step waits for both replicas: a worker's global step grows by at most 1 per local step.
        for worker in per_worker:
            increments = np.diff([s for s, _ in worker])
            assert np.all((increments >= 0) & (increments <= 1)), worker
    _, before = _score_in_single_machine_run(init, shared_cache, model_variables_only=True)
    step, after = _score_in_single_machine_run(tf.train.latest_checkpoint(str(tmp_path / "train")), shared_cache)
    print(f"{mode}: multibox loss on {SCORE_BATCHES} fixed batches {before:.3f} -> {after:.3f} after {step} steps")
    assert step >= steps and np.isfinite(after)
    assert after < 0.9 * before, (before, after)


def _wait_for(predicate, timeout, what, local, running=(0, 1)):
    """predicate()'s first true value; fails at ``timeout`` or when a worker in ``running`` has ended."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        dead = {("worker", i): local.processes[("worker", i)].returncode for i in running
                if local.processes[("worker", i)].poll() is not None}
        assert not dead, f"{what}: worker(s) ended {dead}\n" + "\n".join(
            local.read_log(*key)[-1500:] for key in dead)
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.5)


def _last_step(local, index):
    steps = _steps(local.read_log("worker", index))
    return steps[-1][0] if steps else None


def _checkpoint_step(train_dir):
    latest = tf.train.latest_checkpoint(train_dir)
    return int(tf.train.load_checkpoint(latest).get_tensor("global_step")) if latest else None


@pytest.mark.slow
def test_faults_worker_restart_chief_restart_killed_ps_and_cluster_restart(tmp_path, shared_cache):
    """One async cluster, three faults in turn (one cluster: each start costs ~20 s of CPU here):
    worker 1 killed and restarted trains again on the shared global step; the chief killed (after
    a checkpoint) and restarted restores that checkpoint and trains on; the ps killed makes both
    workers exit 3 with 'Lost the cluster' within LOST_PS_EXIT_BOUND_SECS, and the whole cluster
    restarted resumes from the last checkpoint."""
    train_dir = str(tmp_path / "train")
    args = TINY + [f"--train_dir={train_dir}", "--max_number_of_steps=100000", "--save_interval_secs=2",
                   "--dist_operation_timeout_secs=60"]
    with LocalCluster(1, 2, args, log_dir=str(tmp_path / "logs"), env={"SSD_TOWERS_CACHE": shared_cache}) as local:
        local.start_all()
        _wait_for(lambda: all(_last_step(local, i) for i in range(2)), RUN_TIMEOUT_SECS, "both workers training",
                  local)

        local.kill("worker", 1)
        at_kill = _last_step(local, 0)
        # The chief goes on alone (its device filters leave worker 1 out), then worker 1 comes back.
        _wait_for(lambda: _last_step(local, 0) >= at_kill + 2, 60, "the chief training without worker 1", local,
                  running=(0,))
        chief_before_rejoin = _last_step(local, 0)
        local.start("worker", 1)
        rejoined_at = _wait_for(lambda: _last_step(local, 1), RESTART_TIMEOUT_SECS, "worker 1 training again", local)
        assert rejoined_at > chief_before_rejoin, (rejoined_at, chief_before_rejoin)
        _wait_for(lambda: _last_step(local, 0) > rejoined_at, 60, "the chief training after worker 1 rejoined", local)

        saved = _wait_for(lambda: _checkpoint_step(train_dir), 60, "a checkpoint", local)
        local.kill("worker", 0)
        saved = _checkpoint_step(train_dir)
        saved_name_step = int(tf.train.latest_checkpoint(train_dir).rsplit("-", 1)[1])
        worker_1_at_chief_kill = _last_step(local, 1)
        local.start("worker", 0)
        resumed_at = _wait_for(lambda: _last_step(local, 0), RESTART_TIMEOUT_SECS, "the restarted chief training",
                               local)
        # Meanwhile worker 1 kept training (async; its device filters leave the chief out).
        assert _last_step(local, 1) > worker_1_at_chief_kill
        restored = [int(s) for s in re.findall(r"Restoring parameters from .*model\.ckpt-(\d+)",
                                                 local.read_log("worker", 0))]
        assert restored and restored[0] >= saved_name_step and resumed_at >= saved, (restored, saved, resumed_at)

        local.kill("ps", 0)
        killed = time.monotonic()
        try:
            # A step fails at once (the ps socket closes), then at most the guard's 5 s exit grace.
            codes = [local.wait("worker", i, timeout=max(1.0, killed + LOST_PS_EXIT_BOUND_SECS - time.monotonic()))
                     for i in range(2)]
        except subprocess.TimeoutExpired:
            pytest.fail("a worker hung after its ps was killed:\n" + local.read_log("worker", 1)[-2000:])
        exited_after = time.monotonic() - killed
        logs = [local.read_log("worker", i) for i in range(2)]
        assert codes == [3, 3], (codes, [log[-1500:] for log in logs])

        # The whole cluster restarted resumes from the last checkpoint and finishes.
        # The path, not the step in it: in async mode the other worker may advance the global step
        # between the Supervisor naming a checkpoint and saving it (model.ckpt-21 can hold step 22).
        last_saved_path = tf.train.latest_checkpoint(str(train_dir))
        last_saved = _checkpoint_step(train_dir)
        final_step = last_saved + 3
        for job, index in [("ps", 0), ("worker", 0), ("worker", 1)]:
            local.start(job, index, extra_args=[f"--max_number_of_steps={final_step}"])
        restart_codes = local.wait_workers(timeout=RESTART_TIMEOUT_SECS)
        restarted_chief_log = local.read_log("worker", 0)
    assert all(np.isfinite([loss for _, loss in _steps(log)]).all() for log in logs)
    for log in logs:
        assert "Lost the cluster: " in log and "resume from the chief's last checkpoint" in log, log[-2000:]
    assert restart_codes == [0, 0], restarted_chief_log[-3000:]
    assert f"Restoring parameters from {last_saved_path}" in restarted_chief_log
    assert _checkpoint_step(train_dir) >= final_step
    print(f"worker 1 rejoined at step {rejoined_at}; chief saved {saved}, restored {restored[0]}, trained at "
          f"{resumed_at}; workers exited {exited_after:.1f} s after the ps was killed; the restarted cluster "
          f"resumed at {last_saved}")


def _save_initial_model(path, cache):
    """Model variables of a freshly initialised one-machine graph, saved at ``path`` (a common start)."""
    from tf_compat import slim

    os.environ["SSD_TOWERS_CACHE"] = cache
    opts = TrainingConfig(image_size="96", batch_size=2, num_readers=1, num_preprocessing_threads=1,
                                   summarize_activations=False, summarize_variables=False, num_summary_images=0)
    spec = plan_lib.resolve_dataset(opts)
    with tf.Graph().as_default():
        graph_lib.build_training_graph(opts, spec, machines.deployment_for(opts))
        names = [v.op.name for v in slim.get_model_variables()]
        with tf1.Session(config=devices.session_config()) as session:
            session.run(tf1.global_variables_initializer())
            tf1.train.Saver(slim.get_model_variables()).save(session, path)
    return names


@pytest.mark.slow
def test_sync_two_replicas_match_one_machine_with_two_clones_after_one_step(tmp_path, shared_cache):
    """Same start, same two batches (shard_batches), SGD: the one averaged gradient step is the same.

    Each sync replica divides its loss by its own positives, so the one-machine run does the same
    per clone (--loss_normalization=clone)."""

    init = str(tmp_path / "init" / "model.ckpt")
    names = _save_initial_model(init, shared_cache)
    # No summaries: the Supervisor's summary thread would take the first batch(es) of the chief's stream.
    common = [a for a in TINY if not a.startswith(("--checkpoint_path", "--save_summaries_secs"))] + [
        f"--checkpoint_path={init}", "--save_summaries_secs=0", "--augmentation=none", "--optimizer=sgd",
        "--learning_rate=0.01", "--warmup_steps=0",
        "--max_number_of_steps=1", "--seed=3", "--save_interval_secs=3600"]
    env = dict(os.environ, SSD_TOWERS_CACHE=shared_cache)
    one_machine = subprocess.run(
        [sys.executable, "train_ssd_network.py", *common, f"--train_dir={tmp_path / 'one_machine'}",
         "--num_clones=2", "--clone_on_cpu", "--loss_normalization=clone"],
        capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_SECS)
    assert one_machine.returncode == 0, one_machine.stderr[-3000:]
    with LocalCluster(1, 2, common + [f"--train_dir={tmp_path / 'cluster'}", "--sync_replicas"],
                      log_dir=str(tmp_path / "logs"), env={"SSD_TOWERS_CACHE": shared_cache}) as local:
        local.start_all()
        codes = local.wait_workers(timeout=RUN_TIMEOUT_SECS)
        logs = [local.read_log("worker", i) for i in range(2)]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)

    start = tf.train.load_checkpoint(init)
    reference = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / "one_machine")))
    distributed = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / "cluster")))
    assert reference.get_tensor("global_step") == distributed.get_tensor("global_step") == 1
    worst_difference, largest_update = 0.0, 0.0
    for name in names:
        expected = reference.get_tensor(name)
        worst_difference = max(worst_difference, float(np.max(np.abs(distributed.get_tensor(name) - expected))))
        largest_update = max(largest_update, float(np.max(np.abs(expected - start.get_tensor(name)))))
    print(f"{len(names)} variables: largest update {largest_update:.3g}, worst difference {worst_difference:.3g}")
    assert largest_update > 1e-3, "the step changed nothing: the comparison would prove nothing"
    assert worst_difference <= 1e-5 + 1e-3 * largest_update, (worst_difference, largest_update)
