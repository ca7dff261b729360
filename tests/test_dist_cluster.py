"""deployment/cluster.py: flag parsing and its errors, reachability timeout, batch sharding, session config."""

import socket
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

import launch_local_cluster
from deployment import cluster, model_deploy
from tf_compat import tf1


def test_parse_host_list_accepts_hosts_and_ipv6():
    assert cluster.parse_host_list("a:1, b.example.com:2222,[::1]:3", "ps_hosts") == (
        "a:1", "b.example.com:2222", "[::1]:3")
    assert cluster.parse_host_list("", "ps_hosts") == ()


@pytest.mark.parametrize("text, fragment", [
    ("localhost", "is not host:port"),
    ("a:1,,b:2", "empty entry"),
    ("a:http", "port 'http'"),
    ("a:0", "port '0'"),
    ("a:70000", "port '70000'"),
    (":2222", "is not host:port"),
    ("::1:2222", "brackets"),
    ("a:1,a:1", "more than once"),
])
def test_parse_host_list_errors_name_the_flag_and_entry(text, fragment):
    with pytest.raises(cluster.ClusterError, match="--worker_hosts") as info:
        cluster.parse_host_list(text, "worker_hosts")
    assert fragment in str(info.value)


def test_settings_single_machine_and_roles():
    assert cluster.settings_from_flags("", "", "", 0) is None
    settings = cluster.settings_from_flags("h:1", "h:2,h:3", "worker", 1)
    assert (settings.num_ps_tasks, settings.num_workers, settings.is_chief, settings.address) == (1, 2, False, "h:3")
    assert cluster.settings_from_flags("h:1", "h:2,h:3", "worker", 0).is_chief
    assert not cluster.settings_from_flags("h:1", "h:2", "ps", 0).is_chief
    assert settings.cluster_spec().as_dict() == {"ps": ["h:1"], "worker": ["h:2", "h:3"]}


@pytest.mark.parametrize("ps, workers, job, index, fragment", [
    ("h:1", "h:2,h:3", "worker", 2, "--task_index=2 is out of range for job 'worker': --worker_hosts lists 2"),
    ("h:1", "h:2", "ps", 1, "--task_index=1 is out of range for job 'ps'"),
    ("h:1", "h:2", "worker", -1, "out of range"),
    ("h:1", "h:2", "chief", 0, "--job_name must be one of ps, worker"),
    ("h:1", "", "ps", 0, "--worker_hosts is empty"),
    ("", "h:2", "worker", 0, "--ps_hosts is empty"),
    ("h:1", "h:1", "worker", 0, "in both --ps_hosts and --worker_hosts"),
    ("", "", "worker", 0, "--job_name=worker needs --ps_hosts"),
])
def test_settings_errors(ps, workers, job, index, fragment):
    with pytest.raises(cluster.ClusterError) as info:
        cluster.settings_from_flags(ps, workers, job, index)
    assert fragment in str(info.value)


class _FakeClock:
    """Stands in for cluster.py's ``time``: ``monotonic`` reads ``now`` (and counts the reads), ``sleep``
    records its argument and moves ``now`` on, so timeouts are checked without waiting for them."""

    def __init__(self):
        self.now = 0.0
        self.reads = 0
        self.sleeps = []

    def monotonic(self):
        self.reads += 1
        return self.now

    def sleep(self, secs):
        self.sleeps.append(secs)
        self.now += secs

    def wait_for_reads(self, count):
        """Returns once ``count`` more reads have happened (another thread reads); fails, not hangs."""
        target = self.reads + count
        deadline = time.monotonic() + 30
        while self.reads < target:
            assert time.monotonic() < deadline, "the clock was not read"
            time.sleep(0.005)


@pytest.fixture
def fake_clock(monkeypatch):
    clock = _FakeClock()
    monkeypatch.setattr(cluster, "time", clock)
    return clock


def test_wait_for_tasks_times_out_naming_the_unreachable_task(fake_clock):
    (port,) = launch_local_cluster.free_ports(1)
    with pytest.raises(cluster.ClusterError, match=rf"cannot reach ps task\(s\) 127.0.0.1:{port} within 1 s"):
        cluster.wait_for_tasks([f"127.0.0.1:{port}"], timeout_secs=1.0, poll_secs=0.25)
    assert fake_clock.sleeps == [0.25] * 4  # polled until the timeout, then gave up


def test_wait_for_tasks_returns_once_listening():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        cluster.wait_for_tasks([f"127.0.0.1:{listener.getsockname()[1]}"], timeout_secs=5.0)


def test_free_ports_are_distinct():
    ports = launch_local_cluster.free_ports(5)
    assert len(set(ports)) == 5 and all(1024 <= p <= 65535 for p in ports)


def test_start_server_reports_a_port_in_use():
    with socket.socket(socket.AF_INET6) as holder:
        holder.bind(("", 0))
        holder.listen()
        port = holder.getsockname()[1]
        settings = cluster.settings_from_flags(f"127.0.0.1:{port}", "127.0.0.1:1", "ps", 0)
        with pytest.raises(cluster.ClusterError, match=f"port {port} is already in use"):
            cluster.start_server(settings)


def test_distributed_session_config_filters_devices_and_sets_timeout():
    base = tf1.ConfigProto(allow_soft_placement=True)
    settings = cluster.settings_from_flags("h:1,h:4", "h:2,h:3", "worker", 1)
    config = cluster.distributed_session_config(settings, base, operation_timeout_secs=2.5)
    assert list(config.device_filters) == ["/job:ps", "/job:worker/task:1"]
    assert config.operation_timeout_in_ms == 2500 and config.allow_soft_placement
    assert not base.device_filters and base.operation_timeout_in_ms == 0
    assert cluster.distributed_session_config(settings, None, 0).operation_timeout_in_ms == 0


def _reference_shards(num_examples, batch_size, num_shards):
    """Single machine with num_shards clones: clone r takes the r-th batch of each group of num_shards."""
    batches = [list(range(i, i + batch_size)) for i in range(0, num_examples - batch_size + 1, batch_size)]
    return [[b for k, b in enumerate(batches) if k % num_shards == r] for r in range(num_shards)]


@pytest.mark.parametrize("batch_size, num_shards", [(2, 2), (3, 2), (2, 3), (4, 1)])
def test_shard_batches_gives_each_replica_the_batches_of_its_clone(batch_size, num_shards):
    num_examples = 24
    expected = _reference_shards(num_examples, batch_size, num_shards)
    for shard in range(num_shards):
        with tf.Graph().as_default():
            dataset = tf.data.Dataset.range(100, 100 + num_examples).enumerate()
            dataset = cluster.shard_batches(dataset, batch_size, num_shards, shard)
            dataset = dataset.batch(batch_size, drop_remainder=True)
            next_batch = tf1.data.make_one_shot_iterator(dataset).get_next()
            got = []
            with tf1.Session() as session:
                while True:
                    try:
                        indices, values = session.run(next_batch)
                    except tf.errors.OutOfRangeError:
                        break
                    np.testing.assert_array_equal(values, indices + 100)
                    got.append(indices.tolist())
        assert got == expected[shard], (shard, got)


def test_shard_batches_rejects_a_bad_index():
    with pytest.raises(ValueError, match="shard_index"):
        cluster.shard_batches(tf.data.Dataset.range(4).enumerate(), 2, 2, 2)


def test_big_variables_spread_over_ps_tasks():
    """The round robin of model_deploy's variables_device() over the ps tasks of the flags."""
    settings = cluster.settings_from_flags("h:1,h:2", "h:3,h:4", "worker", 1)
    config = model_deploy.DeploymentConfig(
        num_clones=1, clone_on_cpu=True, replica_id=settings.task_index, num_replicas=settings.num_workers,
        num_ps_tasks=settings.num_ps_tasks)
    with tf.Graph().as_default():
        with tf1.device(config.variables_device()):
            big = [tf1.get_variable(f"w{i}", [64, 64]) for i in range(4)]
        tasks = [tf.DeviceSpec.from_string(v.device).task for v in big]
        assert sorted(tasks) == [0, 0, 1, 1]
        assert all(tf.DeviceSpec.from_string(v.device).job == "ps" for v in big)


class _ExitRecorder:
    def __init__(self):
        self.codes = []
        self.called = threading.Event()

    def __call__(self, code):
        self.codes.append(code)
        self.called.set()


def test_lost_cluster_guard_exits_3_when_a_ps_port_refuses_connections(caplog, fake_clock):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    exit_fn = _ExitRecorder()
    guard = cluster.LostClusterGuard([address], lost_ps_secs=2.0, exit_grace_secs=0.0, poll_secs=0.01,
                                     exit_fn=exit_fn).start()
    # Two reads of the clock: at least one whole poll of the port has happened since the last change.
    fake_clock.wait_for_reads(2)
    fake_clock.now = 100.0
    fake_clock.wait_for_reads(2)
    assert not exit_fn.called.is_set(), "declared lost while the ps was listening"
    listener.close()
    fake_clock.wait_for_reads(2)  # refused since t=100
    fake_clock.now = 101.9
    fake_clock.wait_for_reads(2)
    assert not exit_fn.called.is_set() and guard.reason is None, "declared lost before lost_ps_secs"
    fake_clock.now = 102.0
    assert exit_fn.called.wait(10), "the guard never exited"
    assert exit_fn.codes == [3]
    assert f"ps task {address} has refused connections for 2 s" in guard.reason
    assert any("Lost the cluster: ps task" in r.getMessage() for r in caplog.records)


def test_lost_cluster_guard_stop_and_other_errors_do_not_exit():
    exit_fn = _ExitRecorder()
    (port,) = launch_local_cluster.free_ports(1)
    guard = cluster.LostClusterGuard([f"127.0.0.1:{port}"], lost_ps_secs=0.3, exit_grace_secs=0.1, poll_secs=0.1,
                                     exit_fn=exit_fn).start()
    guard.stop()

    def failing_step(*unused):
        raise tf.errors.InvalidArgumentError(None, None, "a bad batch")

    with pytest.raises(tf.errors.InvalidArgumentError):
        guard.wrap_train_step(failing_step)(None, None, None, {})
    assert not exit_fn.called.wait(1.0) and guard.reason is None


@pytest.mark.parametrize("error_type", [tf.errors.UnavailableError, tf.errors.DeadlineExceededError])
def test_lost_cluster_guard_a_failed_step_exits_after_the_grace(error_type, monkeypatch):
    graces = []

    class ImmediateTimer(threading.Timer):
        """Records the delay asked for, then runs at once."""

        def __init__(self, interval, function, *args, **kwargs):
            graces.append(interval)
            super().__init__(0.0, function, *args, **kwargs)

    monkeypatch.setattr(cluster.threading, "Timer", ImmediateTimer)
    exit_fn = _ExitRecorder()
    guard = cluster.LostClusterGuard([], exit_grace_secs=0.3, exit_fn=exit_fn).start()
    message = "Graph execution error:\n\n=====\nUNAVAILABLE: From /job:worker/replica:0/task:1:\nSocket closed\nmore"

    def failing_step(*unused):
        raise error_type(None, None, message)

    with pytest.raises(error_type):
        guard.wrap_train_step(failing_step)(None, None, None, {})
    assert exit_fn.called.wait(5) and exit_fn.codes == [3]
    assert graces == [0.3]  # the exit waits the grace, leaving the trainer's own handler time to exit first
    assert guard.reason == (f"a training step failed with {error_type.__name__}: "
                            "UNAVAILABLE: From /job:worker/replica:0/task:1: Socket closed")
    guard.lost("again")
    assert exit_fn.codes == [3] and "again" not in guard.reason


def test_chief_ready_flag_is_set_only_by_the_chief_session_wrapper(fake_clock):
    server = tf1.train.Server.create_local_server()  # sessions on one server share variables, like on a ps
    with tf.Graph().as_default():
        flag = cluster.ChiefReadyFlag()
        tf1.Variable(1.0, name="model_weight")
        assert flag.variable not in tf1.global_variables() + tf1.local_variables()
        with tf1.Session(server.target) as session:
            session.run([tf1.global_variables_initializer(), tf1.local_variables_initializer()])
            assert not session.run(flag.is_set), "the usual initialisers must not set the flag"
            assert len(session.run(tf1.report_uninitialized_variables())) == 0, "the flag blocks readiness checks"
            with pytest.raises(cluster.ClusterError, match="has not initialised or restored the model within 0.5 s"):
                cluster.wait_for_chief_model(server.target, None, 0.5, flag, poll_secs=0.125)
            assert fake_clock.sleeps == [0.125] * 4  # polled until the timeout, then gave up
            assert flag.session_wrapper(session) is session
            cluster.wait_for_chief_model(server.target, None, 5.0, flag, poll_secs=0.05)


def _ancestors(op):
    if not isinstance(op, tf.Operation):  # an assign to a resource variable returns a variable-like object
        op = op.op if isinstance(op.op, tf.Operation) else op.read_value().op
    seen, stack = set(), [op]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        stack.extend(t.op for t in current.inputs)
        stack.extend(current.control_inputs)
    return seen


@pytest.mark.parametrize("replicas_to_aggregate, total, tokens", [(2, 2, 0), (1, 2, 0), (3, 2, 1)])
def test_sync_replicas_optimizer_guards_only_the_pushed_gradients(replicas_to_aggregate, total, tokens):
    """The caller's control dependencies (the trainer's NaN guard) must not reach the chief's
    aggregation op, the token queue or the readiness/local-init ops (they would run the forward
    pass and take batches); the initial tokens are only those needed to avoid a deadlock."""
    with tf.Graph().as_default():
        global_step = tf1.train.get_or_create_global_step()
        weight = tf1.Variable([1.0, 2.0], name="weight")
        loss = tf.reduce_sum(weight * weight)
        guard = tf.debugging.assert_all_finite(loss, "guard").op
        optimizer = cluster.SyncReplicasOptimizer(tf1.train.GradientDescentOptimizer(0.1), replicas_to_aggregate,
                                                  total_num_replicas=total)
        grads_and_vars = optimizer.compute_gradients(loss, [weight])
        with tf.control_dependencies([guard]):
            train_op = optimizer.apply_gradients(grads_and_vars, global_step=global_step)
        assert guard in _ancestors(train_op)
        chief_queue_runner = optimizer.get_chief_queue_runner()
        for op in [optimizer.local_step_init_op, optimizer.chief_init_op, optimizer.ready_for_local_init_op.op,
                   *chief_queue_runner.enqueue_ops]:
            assert guard not in _ancestors(op), op.name
        init_tokens = optimizer.get_init_tokens_op()
        assert optimizer.tokens_needed_at_start == tokens
        if tokens == 0:
            assert init_tokens.type == "NoOp"
        with tf1.Session() as session:
            session.run([tf1.global_variables_initializer(), tf1.local_variables_initializer()])
            session.run(init_tokens)
            assert session.run(optimizer._sync_token_queue.size()) == tokens


def test_sync_chief_stop_grace_sets_a_default_only_while_active():
    with tf.Graph().as_default():
        tf1.train.get_or_create_global_step()
        with cluster.sync_chief_stop_grace(secs=5.0):
            assert tf1.train.Supervisor(logdir=None)._stop_grace_secs == 5.0
            assert tf1.train.Supervisor(logdir=None, stop_grace_secs=7)._stop_grace_secs == 7
        assert tf1.train.Supervisor(logdir=None)._stop_grace_secs == 120
