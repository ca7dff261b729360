"""model_deploy as TF-Slim documents it: the config's devices, clones, summed gradients, deploy.

Device placement is read from the graph (``op.device``); sessions only run the numeric
checks. The hand computations use one scalar variable ``w`` (3.0) and a clone loss
``w * w * x`` on a literal ``x`` per clone.
"""

import numpy as np
import pytest
import tensorflow as tf

from deployment import model_deploy
from deployment.model_deploy import Clone, DeployedModel, DeploymentConfig
from tf_compat import slim, tf1

W_INITIAL = 3.0
REGULARIZATION_WEIGHT = 0.1  # regularization loss 0.1 * w * w = 0.9, gradient 0.2 * w = 0.6


def clone_devices(config):
    return [config.clone_device(i) for i in range(config.num_clones)]


def canonical(device):
    return tf.DeviceSpec.from_string(device).to_string()


# ----------------------------------------------------------------------------- DeploymentConfig


def test_defaults():
    config = DeploymentConfig()
    assert (config.num_clones, config.clone_on_cpu, config.replica_id, config.num_replicas, config.num_ps_tasks) == (
        1, False, 0, 1, 0)
    assert config.ps_device == "" and config.worker_device == ""
    # The plan does not depend on the machine: GPU:0 even without a GPU (soft placement runs it on the CPU).
    assert config.clone_device(0) == "/device:GPU:0"
    assert config.clone_scope(0) == ""
    assert config.optimizer_device() == "/device:CPU:0"
    assert config.inputs_device() == "/device:CPU:0"
    assert config.variables_device() == "/device:CPU:0"
    assert config.caching_device() is None


def test_four_gpu_clones_are_planned_on_any_machine():
    config = DeploymentConfig(num_clones=4)
    assert clone_devices(config) == [f"/device:GPU:{i}" for i in range(4)]
    assert [config.clone_scope(i) for i in range(4)] == ["clone_0", "clone_1", "clone_2", "clone_3"]
    assert config.optimizer_device() == config.inputs_device() == config.variables_device() == "/device:CPU:0"


def test_clone_on_cpu_puts_every_clone_on_cpu0():
    config = DeploymentConfig(num_clones=3, clone_on_cpu=True)
    assert clone_devices(config) == ["/device:CPU:0"] * 3
    assert [config.clone_scope(i) for i in range(3)] == ["clone_0", "clone_1", "clone_2"]


def test_cpu_device_per_clone_gives_each_cpu_clone_its_device():
    config = DeploymentConfig(num_clones=2, clone_on_cpu=True, cpu_device_per_clone=True)
    assert config.cpu_device_per_clone
    assert clone_devices(config) == ["/device:CPU:0", "/device:CPU:1"]
    # Only meaningful on the CPU: GPU clones are unchanged.
    assert clone_devices(DeploymentConfig(num_clones=2, cpu_device_per_clone=True)) == ["/device:GPU:0", "/device:GPU:1"]
    # With ps tasks, on the worker.
    config = DeploymentConfig(num_clones=2, clone_on_cpu=True, cpu_device_per_clone=True, num_ps_tasks=1)
    assert clone_devices(config) == ["/job:worker/device:CPU:0", "/job:worker/device:CPU:1"]


def test_replicas_with_ps_tasks_devices():
    config = DeploymentConfig(num_clones=2, num_ps_tasks=2, num_replicas=2, replica_id=1)
    assert (config.replica_id, config.num_replicas, config.num_ps_tasks) == (1, 2, 2)
    assert config.ps_device == "/job:ps"
    assert config.worker_device == "/job:worker"  # no task, as TF-Slim's
    assert clone_devices(config) == ["/job:worker/device:GPU:0", "/job:worker/device:GPU:1"]
    assert config.inputs_device() == "/job:worker/device:CPU:0"
    assert config.optimizer_device() == "/job:worker/device:CPU:0"
    caching = config.caching_device()
    with tf.Graph().as_default():
        with tf1.device("/job:worker/device:GPU:1"):
            op = tf.constant(1.0).op
    assert caching(op) == "/job:worker/device:GPU:1"  # each read cached where it is made


def test_ps_tasks_without_replicas_and_custom_job_names():
    config = DeploymentConfig(num_ps_tasks=1, worker_job_name="trainer", ps_job_name="params", clone_on_cpu=True)
    assert config.ps_device == "/job:params" and config.worker_device == "/job:trainer"
    assert (config.ps_job_name, config.worker_job_name) == ("params", "trainer")
    assert config.clone_device(0) == "/job:trainer/device:CPU:0"
    assert config.inputs_device() == config.optimizer_device() == "/job:trainer/device:CPU:0"
    with tf.Graph().as_default():
        with tf1.device(config.variables_device()):
            variable = tf1.get_variable("v", [2])
    assert canonical(variable.device) == "/job:params/task:0/device:CPU:0"


def test_variables_round_robin_over_ps_tasks_in_creation_order():
    config = DeploymentConfig(num_ps_tasks=2, num_replicas=2, replica_id=1)
    with tf.Graph().as_default() as graph:
        with tf1.device(config.variables_device()):
            a = tf1.get_variable("a", [3])
            b = tf1.Variable(tf.zeros([3]), name="b")
            c = slim.model_variable("c", [3])
            d = tf1.get_variable("d", [3])
        # Each call is a new round robin, from task 0 (TF-Slim's: a new chooser per call).
        with tf1.device(config.variables_device()):
            e = tf1.get_variable("e", [3])
    assert [canonical(v.device) for v in (a, b, c, d, e)] == [
        "/job:ps/task:0/device:CPU:0", "/job:ps/task:1/device:CPU:0",
        "/job:ps/task:0/device:CPU:0", "/job:ps/task:1/device:CPU:0",
        "/job:ps/task:0/device:CPU:0"]
    # The ops using a variable's handle while it is created run on that variable's task.
    handles = {op.name: op for op in graph.get_operations() if op.type == "VarHandleOp"}
    users = [op for op in graph.get_operations()
             if op.type in ("VarIsInitializedOp", "AssignVariableOp", "ReadVariableOp") and op.inputs[0].op.name in handles]
    assert len(users) >= 3 * len(handles)
    assert all(op.device == op.inputs[0].op.device for op in users), [(op.name, op.device) for op in users]


def test_an_explicit_device_inside_the_variables_scope_wins():
    config = DeploymentConfig(num_ps_tasks=2)
    with tf.Graph().as_default():
        with tf1.device(config.variables_device()):
            with tf1.device("/job:worker/device:CPU:0"):
                local = tf1.get_variable("local", [2])
            shared = tf1.get_variable("shared", [2])
    assert canonical(local.device) == "/job:worker/device:CPU:0"
    assert canonical(shared.device) == "/job:ps/task:0/device:CPU:0"  # the round robin did not count 'local'


def test_constructor_errors_are_tf_slims():
    with pytest.raises(ValueError, match="When using replicas num_ps_tasks must be positive"):
        DeploymentConfig(num_replicas=2, replica_id=1)
    with pytest.raises(ValueError, match="Must specify worker_job_name when using replicas"):
        DeploymentConfig(num_ps_tasks=1, worker_job_name="")
    with pytest.raises(ValueError, match="Must specify ps_job_name when using parameter server"):
        DeploymentConfig(num_ps_tasks=1, ps_job_name="")
    with pytest.raises(ValueError, match="replica_id must be less than num_replicas"):
        DeploymentConfig(replica_id=1)
    with pytest.raises(ValueError, match="replica_id must be less than num_replicas"):
        DeploymentConfig(num_ps_tasks=1, num_replicas=2, replica_id=2)


def test_constructor_does_not_inspect_the_machine_or_need_a_cluster():
    DeploymentConfig(num_clones=8)
    DeploymentConfig(num_ps_tasks=3, num_replicas=4, replica_id=3, num_clones=2)
    DeploymentConfig(worker_job_name="", ps_job_name="")  # job names unused without ps tasks
    with pytest.raises(TypeError):
        DeploymentConfig(cluster={"ps": ["h:1"]})  # no such argument in TF-Slim


@pytest.mark.parametrize("method", ["clone_device", "clone_scope"])
def test_clone_index_must_be_less_than_num_clones(method):
    config = DeploymentConfig(num_clones=2)
    with pytest.raises(ValueError, match="clone_index must be less than num_clones"):
        getattr(config, method)(2)
    with pytest.raises(ValueError, match="clone_index must be less than num_clones"):
        getattr(DeploymentConfig(), method)(1)


# ----------------------------------------------------------------------------- create_clones


def scalar_loss_model(x, regularized=False):
    """The clone loss w * w * x; with ``regularized`` a weight regularizer 0.1 * w * w (once per variable)."""
    regularizer = (lambda w: REGULARIZATION_WEIGHT * w * w) if regularized else None
    w = tf1.get_variable("w", [], initializer=tf1.constant_initializer(W_INITIAL), regularizer=regularizer)
    loss = w * w * tf.constant(x)
    tf1.losses.add_loss(loss)
    return loss


def test_create_clones_builds_each_clone_in_its_scope_on_its_device_sharing_variables():
    calls = []

    def model_fn(x, scale=1.0):
        calls.append((x, scale))
        return scalar_loss_model(x * scale)

    config = DeploymentConfig(num_clones=2)
    with tf.Graph().as_default() as graph:
        clones = model_deploy.create_clones(config, model_fn, [2.0], {"scale": 0.5})
        assert calls == [(2.0, 0.5), (2.0, 0.5)]
        assert [type(c) for c in clones] == [Clone, Clone]
        assert [c.scope for c in clones] == ["clone_0/", "clone_1/"]
        assert [c.device for c in clones] == ["/device:GPU:0", "/device:GPU:1"]
        assert [c.outputs.op.name for c in clones] == ["clone_0/mul_1", "clone_1/mul_1"]
        # One variable, reused by clone 1, on the variables device.
        handles = [op for op in graph.get_operations() if op.type == "VarHandleOp"]
        assert [(op.name, op.device) for op in handles] == [("w", "/device:CPU:0")]
        # Each clone's losses are found by its scope; its ops are on its device.
        for i, clone in enumerate(clones):
            assert tf1.get_collection(tf1.GraphKeys.LOSSES, clone.scope) == [clone.outputs]
            muls = [op for op in graph.get_operations() if op.name.startswith(clone.scope) and op.type == "Mul"]
            assert len(muls) == 2 and all(op.device == f"/device:GPU:{i}" for op in muls)


def test_a_single_clone_has_no_scope():
    with tf.Graph().as_default():
        (clone,) = model_deploy.create_clones(DeploymentConfig(), scalar_loss_model, [2.0])
        assert clone.scope == "" and clone.device == "/device:GPU:0"
        assert clone.outputs.op.name == "mul_1"


def test_every_variable_api_lands_on_the_variables_device():
    def model_fn():
        a = tf1.get_variable("plain_get_variable", [2])
        b = tf1.Variable(tf.zeros([2]), name="plain_variable")
        c = slim.model_variable("slim_model_variable", [2])
        return a + b + c

    with tf.Graph().as_default() as graph:
        model_deploy.create_clones(DeploymentConfig(num_clones=2), model_fn)
        handles = [op for op in graph.get_operations() if op.type == "VarHandleOp"]
        # tf.Variable ignores variable-scope reuse: one per clone, still on the variables device.
        assert sorted(op.name for op in handles) == [
            "clone_0/plain_variable", "clone_1/plain_variable", "plain_get_variable", "slim_model_variable"]
        assert all(op.device == "/device:CPU:0" for op in handles)


def test_clones_with_ps_tasks_keep_variables_on_the_ps_and_compute_on_the_worker():
    config = DeploymentConfig(num_clones=2, num_ps_tasks=2, num_replicas=2, replica_id=1)
    with tf.Graph().as_default() as graph:
        model_deploy.create_clones(config, lambda: scalar_loss_model(2.0) + tf1.get_variable("v", []))
        handles = {op.name: canonical(op.device) for op in graph.get_operations() if op.type == "VarHandleOp"}
        assert handles == {"w": "/job:ps/task:0/device:CPU:0", "v": "/job:ps/task:1/device:CPU:0"}
        for i in range(2):
            muls = [op for op in graph.get_operations() if op.name.startswith(f"clone_{i}/") and op.type == "Mul"]
            assert muls and all(op.device == f"/job:worker/device:GPU:{i}" for op in muls)


# ----------------------------------------------------------------------------- optimize_clones


def _two_clones(regularized=False, config=None):
    """Clones with x = 2 and x = 5: clone losses 18 and 45 at w = 3."""
    config = config or DeploymentConfig(num_clones=2, clone_on_cpu=True)
    xs = iter([2.0, 5.0])
    return config, model_deploy.create_clones(config, lambda: scalar_loss_model(next(xs), regularized))


def _run(fetches):
    with tf1.Session() as session:
        session.run(tf1.global_variables_initializer())
        return session.run(fetches)


def test_optimize_clones_total_loss_and_summed_gradients():
    with tf.Graph().as_default():
        _, clones = _two_clones()
        total_loss, grads_and_vars = model_deploy.optimize_clones(clones, tf1.train.GradientDescentOptimizer(0.1))
        ((grad, var),) = grads_and_vars
        assert var.op.name == "w"
        total, gradient = _run((total_loss, grad))
    # Each clone loss divided by 2: 18 / 2 + 45 / 2; gradient 2 * w * x / 2 summed: 6 + 15.
    assert total == pytest.approx(31.5)
    assert gradient == pytest.approx(21.0)


def test_a_single_clone_loss_is_not_divided():
    with tf.Graph().as_default():
        clones = model_deploy.create_clones(DeploymentConfig(clone_on_cpu=True), scalar_loss_model, [2.0])
        total_loss, ((grad, _),) = model_deploy.optimize_clones(clones, tf1.train.GradientDescentOptimizer(0.1))
        total, gradient = _run((total_loss, grad))
    assert (total, gradient) == (pytest.approx(18.0), pytest.approx(12.0))


def test_regularization_is_counted_once_with_the_first_clone():
    with tf.Graph().as_default():
        _, clones = _two_clones(regularized=True)
        assert len(tf1.get_collection(tf1.GraphKeys.REGULARIZATION_LOSSES)) == 1
        total_loss, ((grad, _),) = model_deploy.optimize_clones(clones, tf1.train.GradientDescentOptimizer(0.1))
        total, gradient = _run((total_loss, grad))
    assert total == pytest.approx(31.5 + 0.9)  # not 31.5 + 2 * 0.9
    assert gradient == pytest.approx(21.0 + 0.6)


def test_regularization_losses_argument():
    with tf.Graph().as_default():
        _, clones = _two_clones(regularized=True)
        excluded, _ = model_deploy.optimize_clones(clones, tf1.train.GradientDescentOptimizer(0.1),
                                                   regularization_losses=[])
        explicit, _ = model_deploy.optimize_clones(clones, tf1.train.GradientDescentOptimizer(0.1),
                                                   regularization_losses=[tf.constant(2.0)])
        assert _run((excluded, explicit)) == (pytest.approx(31.5), pytest.approx(33.5))


def test_optimize_clones_passes_kwargs_to_compute_gradients():
    def model_fn(x):
        bias = tf1.get_variable("bias", [], initializer=tf1.constant_initializer(1.0))
        tf1.losses.add_loss(bias * 2.0)
        return scalar_loss_model(x)

    with tf.Graph().as_default():
        config = DeploymentConfig(num_clones=2, clone_on_cpu=True)
        clones = model_deploy.create_clones(config, model_fn, [2.0])
        optimizer = tf1.train.GradientDescentOptimizer(0.1)
        _, every_gradient = model_deploy.optimize_clones(clones, optimizer)
        assert sorted(v.op.name for _, v in every_gradient) == ["bias", "w"]
        (w,) = [v for v in tf1.global_variables() if v.op.name == "w"]
        _, grads_and_vars = model_deploy.optimize_clones(clones, optimizer, var_list=[w])
        assert [v.op.name for _, v in grads_and_vars] == ["w"]


def test_optimize_clones_places_gradients_on_clones_and_sums_on_the_averaging_device():
    with tf.Graph().as_default() as graph:
        config = DeploymentConfig(num_clones=2, clone_on_cpu=True, cpu_device_per_clone=True)
        _, clones = _two_clones(config=config)
        total_loss, ((grad, _),) = model_deploy.optimize_clones(
            clones, tf1.train.GradientDescentOptimizer(0.1), averaging_device="/device:CPU:0")
        for i in range(2):
            gradient_ops = [op for op in graph.get_operations() if op.name.startswith(f"clone_{i}/gradients/")
                            and op.type == "Mul"]
            assert gradient_ops and all(op.device == f"/device:CPU:{i}" for op in gradient_ops)
            (scaled,) = [op for op in graph.get_operations() if op.name == f"clone_{i}/scaled_clone_loss"]
            assert scaled.device == f"/device:CPU:{i}"
        assert grad.op.type == "AddN" and grad.op.device == "/device:CPU:0"
        assert total_loss.op.device == "/device:CPU:0"


def test_optimize_clones_without_any_loss_is_a_clear_error():
    with tf.Graph().as_default():
        clones = model_deploy.create_clones(DeploymentConfig(num_clones=2, clone_on_cpu=True),
                                            lambda: tf1.get_variable("w", []) * 2.0)
        with pytest.raises(ValueError, match="no losses"):
            model_deploy.optimize_clones(clones, tf1.train.GradientDescentOptimizer(0.1))


# ----------------------------------------------------------------------------- deploy


def _summary_tags(summary_op):
    with tf1.Session() as session:
        session.run(tf1.global_variables_initializer())
        return {value.tag for value in tf1.Summary.FromString(session.run(summary_op)).value}


def test_deploy_returns_train_op_total_loss_and_steps_the_variables():
    with tf.Graph().as_default():
        config = DeploymentConfig(num_clones=2, clone_on_cpu=True)
        xs = iter([2.0, 5.0])
        model = model_deploy.deploy(config, lambda: scalar_loss_model(next(xs), regularized=True),
                                    optimizer=tf1.train.GradientDescentOptimizer(0.1))
        assert isinstance(model, DeployedModel) and len(model.clones) == 2
        (w,) = tf1.trainable_variables()
        global_step = tf1.train.get_global_step()
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            loss = session.run(model.train_op)
            w_after, step = session.run((w, global_step))
    assert loss == pytest.approx(31.5 + 0.9)  # the loss of the step, before it
    assert w_after == pytest.approx(W_INITIAL - 0.1 * (21.0 + 0.6))
    assert step == 1


def test_deploy_places_the_optimizer_on_its_device():
    with tf.Graph().as_default() as graph:
        config = DeploymentConfig(num_clones=2)
        model = model_deploy.deploy(config, scalar_loss_model, [2.0], optimizer=tf1.train.GradientDescentOptimizer(0.1))
        assert model.train_op.op.name == "train_op" and model.train_op.op.device == "/device:CPU:0"
        assert model.total_loss.op.device == "/device:CPU:0"
        assert tf1.train.get_global_step().device == "/device:CPU:0"
        applies = [op for op in graph.get_operations() if op.type.startswith("ResourceApply")]
        assert len(applies) == 1 and applies[0].device == "/device:CPU:0"
        assert [c.device for c in model.clones] == ["/device:GPU:0", "/device:GPU:1"]


def test_deploy_with_ps_tasks_places_global_step_and_variables_on_the_ps():
    config = DeploymentConfig(num_clones=1, clone_on_cpu=True, num_ps_tasks=2, num_replicas=2, replica_id=1)
    with tf.Graph().as_default() as graph:
        def model_fn():
            tf1.losses.add_loss(tf1.get_variable("v", []) * 2.0)
            return scalar_loss_model(2.0)

        model = model_deploy.deploy(config, model_fn, optimizer=tf1.train.MomentumOptimizer(0.1, 0.9))
        handles = {op.name: canonical(op.device) for op in graph.get_operations() if op.type == "VarHandleOp"}
        assert handles == {
            "v": "/job:ps/task:0/device:CPU:0", "w": "/job:ps/task:1/device:CPU:0",
            "global_step": "/job:ps/task:0/device:CPU:0",  # its own variables_device() call: task 0
            "v/Momentum": "/job:ps/task:0/device:CPU:0", "w/Momentum": "/job:ps/task:1/device:CPU:0",
        }
        assert model.train_op.op.device == "/job:worker/device:CPU:0"
        forward = [op for op in graph.get_operations() if op.type == "Mul" and op.name.startswith("mul")]
        assert len(forward) == 3 and all(op.device == "/job:worker/device:CPU:0" for op in forward)


def test_deploy_summaries_come_from_the_first_clone_with_tf_slims_tags():
    def model_fn(x):
        loss = scalar_loss_model(x, regularized=True)
        tf1.summary.scalar("clone_activation", loss)
        return loss

    with tf.Graph().as_default():
        tf1.summary.scalar("before_deploy", tf.constant(1.0))
        xs = iter([2.0, 5.0])
        model = model_deploy.deploy(DeploymentConfig(num_clones=2, clone_on_cpu=True), lambda: model_fn(next(xs)),
                                    optimizer=tf1.train.GradientDescentOptimizer(0.1))
        tags = _summary_tags(model.summary_op)
        everything = _summary_tags(tf1.summary.merge_all())
    # TF-Slim names the clone loss summary 'Losses/<clone scope>/clone_loss' (the tag is kept exactly so,
    # not prefixed with the clone's name scope); 'total_loss' is taken by the total loss op, so its
    # summary's scope, hence its tag, is 'total_loss_1'.
    assert tags == {"before_deploy", "clone_0/clone_activation", "Losses/clone_0/clone_loss",
                    "Losses/regularization_loss", "total_loss_1"}
    # The other clone's summaries exist but are left out of the summary op.
    assert everything - tags == {"clone_1/clone_activation", "Losses/clone_1/clone_loss"}


def test_deploy_summary_tags_with_one_clone():
    with tf.Graph().as_default():
        model = model_deploy.deploy(DeploymentConfig(clone_on_cpu=True), scalar_loss_model, [2.0],
                                    kwargs={"regularized": True}, optimizer=tf1.train.GradientDescentOptimizer(0.1))
        assert _summary_tags(model.summary_op) == {"Losses/clone_loss", "Losses/regularization_loss", "total_loss_1"}


def test_deploy_gradient_summaries():
    with tf.Graph().as_default():
        model = model_deploy.deploy(DeploymentConfig(clone_on_cpu=True), scalar_loss_model, [2.0],
                                    optimizer=tf1.train.GradientDescentOptimizer(0.1), summarize_gradients=True)
        # TF-Slim's 'w:gradient' and 'w:gradient_norm', with the ':' a tag may not hold made '_'.
        assert {"w_gradient", "w_gradient_norm"} <= _summary_tags(model.summary_op)


def test_deploy_runs_the_update_ops_of_the_first_clone_only():
    def model_fn():
        counter = tf1.get_variable("counter", [], initializer=tf1.zeros_initializer(), trainable=False)
        tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS, counter.assign_add(1.0))
        return scalar_loss_model(2.0)

    with tf.Graph().as_default():
        model = model_deploy.deploy(DeploymentConfig(num_clones=2, clone_on_cpu=True), model_fn,
                                    optimizer=tf1.train.GradientDescentOptimizer(0.1))
        assert len(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)) == 2
        (counter,) = [v for v in tf1.global_variables() if v.op.name == "counter"]
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            session.run(model.train_op)
            assert session.run(counter) == 1.0


def test_deploy_without_optimizer_builds_the_losses_only():
    with tf.Graph().as_default() as graph:
        xs = iter([2.0, 5.0])
        model = model_deploy.deploy(DeploymentConfig(num_clones=2, clone_on_cpu=True),
                                    lambda: scalar_loss_model(next(xs), regularized=True))
        assert model.train_op is None
        assert tf1.train.get_global_step() is None
        assert not any(op.name.startswith(("gradients", "clone_0/gradients")) for op in graph.get_operations())
        assert _run(model.total_loss) == pytest.approx(31.5 + 0.9)
        assert "total_loss_1" in _summary_tags(model.summary_op)


def test_deploy_without_losses_or_summaries():
    with tf.Graph().as_default():
        model = model_deploy.deploy(DeploymentConfig(clone_on_cpu=True), lambda: tf.constant(1.0))
        assert (model.train_op, model.summary_op, model.total_loss) == (None, None, None)


# ----------------------------------------------------------------------------- towers on logical CPUs


def test_two_towers_on_two_logical_cpus_train_as_one_tower_on_the_whole_batch():
    """conftest splits the CPU in two: each tower really runs on its CPU device, and the step equals one tower's."""
    rng = np.random.default_rng(7)
    images = rng.normal(size=(4, 6, 6, 3)).astype(np.float32)
    labels = rng.normal(size=(4, 2)).astype(np.float32)

    def step(num_clones):
        batches = iter(np.split(np.arange(4), num_clones))

        def model_fn():
            rows = next(batches)
            net = slim.conv2d(tf.constant(images[rows]), 2, [3, 3], activation_fn=None, scope="conv",
                              weights_initializer=tf1.constant_initializer(0.1))
            tf1.losses.mean_squared_error(tf.constant(labels[rows]), tf.reduce_mean(net, axis=[1, 2]))

        with tf.Graph().as_default():
            config = DeploymentConfig(num_clones=num_clones, clone_on_cpu=True, cpu_device_per_clone=True)
            model = model_deploy.deploy(config, model_fn, optimizer=tf1.train.GradientDescentOptimizer(0.5))
            weights = slim.get_model_variables("conv/weights")[0]
            metadata = tf1.RunMetadata()
            with tf1.Session() as session:
                session.run(tf1.global_variables_initializer())
                loss = session.run(model.train_op, options=tf1.RunOptions(trace_level=tf1.RunOptions.FULL_TRACE),
                                   run_metadata=metadata)
                after = session.run(weights)
        ran_on = {node.node_name: stats.device for stats in metadata.step_stats.dev_stats for node in stats.node_stats}
        return loss, after, ran_on

    loss_1, after_1, _ = step(1)
    loss_2, after_2, ran_on = step(2)
    np.testing.assert_allclose(loss_2, loss_1, rtol=1e-5)
    np.testing.assert_allclose(after_2, after_1, rtol=1e-5, atol=1e-7)
    assert np.abs(after_1 - 0.1).max() > 1e-3  # the step moved the weights
    for i in range(2):
        backprop = [name for name in ran_on if name.startswith(f"clone_{i}/gradients/") and "Conv2DBackpropFilter" in name]
        assert backprop and all(ran_on[name].endswith(f"/device:CPU:{i}") for name in backprop)
