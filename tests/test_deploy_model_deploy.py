"""model_deploy: devices, clones, gradient averaging, errors (toy conv model, CPU split in two)."""

import numpy as np
import pytest
import tensorflow as tf

from deployment import model_deploy
from deployment.model_deploy import DeploymentConfig
from tf_compat import slim, tf1

BATCH = 4
RNG = np.random.default_rng(7)
IMAGES = RNG.normal(size=(BATCH, 6, 6, 3)).astype(np.float32)
LABELS = RNG.normal(size=(BATCH, 2)).astype(np.float32)


def toy_model(images, labels, weight_decay=0.0):
    regularizer = slim.l2_regularizer(weight_decay) if weight_decay else None
    with slim.arg_scope([slim.conv2d], weights_regularizer=regularizer):
        net = slim.conv2d(images, 4, [3, 3], scope="conv1")
        net = slim.conv2d(net, 2, [3, 3], activation_fn=None, scope="conv2")
    predictions = tf.reduce_mean(net, axis=[1, 2])
    tf1.losses.mean_squared_error(labels, predictions)
    return predictions


def batches_model(batches, weight_decay=0.0):
    """model_fn taking the next batch each call, as each clone dequeues its own batch."""
    iterator = iter(batches)

    def model_fn():
        images, labels = next(iterator)
        return toy_model(tf.constant(images), tf.constant(labels), weight_decay)

    return model_fn


def initial_values():
    rng = np.random.default_rng(3)
    return {
        "conv1/weights": rng.normal(scale=0.3, size=(3, 3, 3, 4)).astype(np.float32),
        "conv1/biases": rng.normal(scale=0.1, size=(4,)).astype(np.float32),
        "conv2/weights": rng.normal(scale=0.3, size=(3, 3, 4, 2)).astype(np.float32),
        "conv2/biases": rng.normal(scale=0.1, size=(2,)).astype(np.float32),
    }


def load_initial_values(session):
    values = initial_values()
    for var in tf1.global_variables():
        if var.op.name in values:
            var.load(values[var.op.name], session)


def split_batches(num_clones):
    size = BATCH // num_clones
    return [(IMAGES[i * size : (i + 1) * size], LABELS[i * size : (i + 1) * size]) for i in range(num_clones)]


def test_device_functions_local():
    config = DeploymentConfig(num_clones=2, clone_on_cpu=True)
    assert config.variables_device() == "/device:CPU:0"
    assert config.inputs_device() == "/device:CPU:0"
    assert config.optimizer_device() == "/device:CPU:0"
    assert [config.clone_device(i) for i in range(2)] == ["/device:CPU:0", "/device:CPU:1"]
    assert [config.clone_scope(i) for i in range(2)] == ["clone_0", "clone_1"]
    assert config.caching_device() is None
    with pytest.raises(ValueError, match="clone_index"):
        config.clone_device(2)


def test_single_clone_has_no_scope_and_runs_on_cpu_without_gpu():
    config = DeploymentConfig(num_clones=1)
    assert config.clone_scope(0) == ""
    expected = "/device:GPU:0" if tf.config.list_physical_devices("GPU") else "/device:CPU:0"
    assert config.clone_device(0) == expected


def test_more_cpu_clones_than_logical_cpus_share_cpu0():
    config = DeploymentConfig(num_clones=3, clone_on_cpu=True)
    assert [config.clone_device(i) for i in range(3)] == ["/device:CPU:0"] * 3


def test_more_clones_than_gpus_is_a_clear_error():
    num_gpus = len(tf.config.list_physical_devices("GPU"))
    too_many = max(num_gpus + 1, 2)
    with pytest.raises(ValueError, match=rf"num_clones={too_many} but this machine has {num_gpus} GPU\(s\).*clone_on_cpu"):
        DeploymentConfig(num_clones=too_many)


def test_ps_settings_without_cluster_are_a_clear_error():
    with pytest.raises(ValueError, match="num_ps_tasks=1 needs a cluster"):
        DeploymentConfig(num_ps_tasks=1)
    with pytest.raises(ValueError, match="num_replicas=2 needs parameter servers"):
        DeploymentConfig(num_replicas=2, replica_id=1)
    with pytest.raises(ValueError, match="'ps' job has 1 task"):
        DeploymentConfig(num_ps_tasks=2, cluster={"ps": ["h:1"], "worker": ["h:2"]})
    with pytest.raises(ValueError, match="'worker' job has 1 task"):
        DeploymentConfig(num_ps_tasks=1, num_replicas=2, cluster={"ps": ["h:1"], "worker": ["h:2"]})
    with pytest.raises(ValueError, match="replica_id"):
        DeploymentConfig(replica_id=1)


def _ops_under(graph, prefix):
    return [op for op in graph.get_operations() if op.name.startswith(prefix)]


def test_placement_two_clones():
    """Variables on CPU:0, each tower (forward and gradients) on its device, averaging and apply on CPU:0."""
    with tf.Graph().as_default() as graph:
        config = DeploymentConfig(num_clones=2, clone_on_cpu=True)
        model = model_deploy.deploy(
            config, batches_model(split_batches(2)), optimizer=tf1.train.GradientDescentOptimizer(0.1)
        )
        variable_ops = [op for op in graph.get_operations() if op.type in ("VarHandleOp", "VariableV2")]
        assert {op.name for op in variable_ops} == {
            "global_step", "conv1/weights", "conv1/biases", "conv2/weights", "conv2/biases"
        }
        assert all(op.device == "/device:CPU:0" for op in variable_ops), [(o.name, o.device) for o in variable_ops]

        for i in range(2):
            device = f"/device:CPU:{i}"
            compute = [
                op for op in _ops_under(graph, f"clone_{i}/")
                if op.type in ("Conv2D", "BiasAdd", "Relu", "Mean", "SquaredDifference")
            ]
            gradients = [
                op for op in _ops_under(graph, f"clone_{i}/gradients/")
                if op.type in ("Conv2DBackpropFilter", "Conv2DBackpropInput", "BiasAddGrad", "ReluGrad")
            ]
            assert len(compute) >= 6 and len(gradients) >= 6
            assert all(op.device == device for op in compute + gradients), [
                (op.name, op.device) for op in compute + gradients if op.device != device
            ]
            assert model.clones[i].device == device and model.clones[i].scope == f"clone_{i}/"

        averages = [op for op in _ops_under(graph, "average_clone_gradients/") if op.type == "AddN"]
        assert len(averages) == 4
        assert all(op.device == "/device:CPU:0" for op in averages)
        applies = [op for op in graph.get_operations() if op.type.startswith("ResourceApply")]
        assert len(applies) == 4 and all(op.device == "/device:CPU:0" for op in applies)

        # Where the ops really ran.
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            options = tf1.RunOptions(trace_level=tf1.RunOptions.FULL_TRACE)
            metadata = tf1.RunMetadata()
            session.run(model.train_op, options=options, run_metadata=metadata)
        ran_on = {}
        for device_stats in metadata.step_stats.dev_stats:
            for node in device_stats.node_stats:
                ran_on.setdefault(node.node_name, set()).add(device_stats.device)
        for i in range(2):
            backprop = [name for name in ran_on if name.startswith(f"clone_{i}/gradients/") and "Conv2DBackpropFilter" in name]
            assert backprop
            assert all(ran_on[name] == {f"/job:localhost/replica:0/task:0/device:CPU:{i}"} for name in backprop)
        averaged = [name for name in ran_on if name.startswith("average_clone_gradients/")]
        assert averaged and all(ran_on[n] == {"/job:localhost/replica:0/task:0/device:CPU:0"} for n in averaged)


def _one_step(num_clones, weight_decay=0.0, optimizer_fn=lambda: tf1.train.GradientDescentOptimizer(0.1)):
    with tf.Graph().as_default():
        config = DeploymentConfig(num_clones=num_clones, clone_on_cpu=True)
        global_step = model_deploy.get_or_create_global_step(config)
        clones = model_deploy.create_clones(config, batches_model(split_batches(num_clones), weight_decay))
        optimizer = optimizer_fn()
        total_loss, grads_and_vars = model_deploy.optimize_clones(
            clones, optimizer, averaging_device=config.optimizer_device()
        )
        apply_op = optimizer.apply_gradients(grads_and_vars, global_step=global_step)
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            load_initial_values(session)
            grads, loss = session.run(([g for g, _ in grads_and_vars], total_loss))
            session.run(apply_op)
            names = [v.op.name for _, v in grads_and_vars]
            after = session.run([v for _, v in grads_and_vars])
    return dict(zip(names, grads)), loss, dict(zip(names, after))


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_two_clones_on_half_batches_equal_one_clone_on_whole_batch(weight_decay):
    grads_1, loss_1, after_1 = _one_step(1, weight_decay)
    grads_2, loss_2, after_2 = _one_step(2, weight_decay)
    assert set(grads_1) == set(grads_2) == set(initial_values())
    np.testing.assert_allclose(loss_2, loss_1, rtol=1e-5)
    for name in grads_1:
        np.testing.assert_allclose(grads_2[name], grads_1[name], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(after_2[name], after_1[name], rtol=1e-5, atol=1e-6)
    # The step really moved the variables (the comparison is not vacuous).
    assert max(np.abs(after_1[n] - initial_values()[n]).max() for n in after_1) > 1e-3


def test_regularization_counted_once_and_clone_losses_summarised():
    with tf.Graph().as_default():
        config = DeploymentConfig(num_clones=2, clone_on_cpu=True)
        model = model_deploy.deploy(
            config, batches_model(split_batches(2), weight_decay=0.1), optimizer=tf1.train.GradientDescentOptimizer(0.1)
        )
        reg = tf.add_n(tf1.get_collection(tf1.GraphKeys.REGULARIZATION_LOSSES))
        clone_losses = [tf1.get_collection(tf1.GraphKeys.LOSSES, c.scope)[0] for c in model.clones]
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            total, reg_value, raw = session.run((model.total_loss, reg, clone_losses))
            summary_proto = tf1.Summary.FromString(session.run(model.summary_op))
        assert len(tf1.get_collection(tf1.GraphKeys.REGULARIZATION_LOSSES)) == 2  # conv1 and conv2, not per clone
        np.testing.assert_allclose(total, np.mean(raw) + reg_value, rtol=1e-5)
        tags = {value.tag for value in summary_proto.value}
        assert {"Losses/clone_0/clone_loss", "Losses/clone_1/clone_loss", "Losses/regularization_loss",
                "Losses/total_loss"} <= tags


def test_update_ops_from_first_clone_only():
    def model_fn():
        counter = tf1.get_variable("counter", [], initializer=tf1.zeros_initializer(), trainable=False)
        tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS, counter.assign_add(1.0))
        return toy_model(tf.constant(IMAGES[:2]), tf.constant(LABELS[:2]))

    with tf.Graph().as_default():
        config = DeploymentConfig(num_clones=2, clone_on_cpu=True)
        model = model_deploy.deploy(config, model_fn, optimizer=tf1.train.GradientDescentOptimizer(0.1))
        counter = [v for v in tf1.global_variables() if v.op.name == "counter"][0]
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            session.run(model.train_op)
            assert session.run(counter) == 1.0


def test_deploy_without_optimizer_builds_losses_only():
    with tf.Graph().as_default():
        config = DeploymentConfig(num_clones=2, clone_on_cpu=True)
        model = model_deploy.deploy(config, batches_model(split_batches(2)))
        assert model.train_op is None and model.total_loss is not None
        assert not any(op.type.startswith("ResourceApply") for op in tf1.get_default_graph().get_operations())


def test_every_variable_api_lands_on_the_variables_device():
    def model_fn():
        a = tf1.get_variable("plain_get_variable", [2])
        b = tf1.Variable(tf.zeros([2]), name="plain_variable")
        c = slim.model_variable("slim_model_variable", [2])
        return a + b + c

    with tf.Graph().as_default() as graph:
        model_deploy.create_clones(DeploymentConfig(num_clones=2, clone_on_cpu=True), model_fn)
        handles = [op for op in graph.get_operations() if op.type == "VarHandleOp"]
        # tf.Variable ignores variable-scope reuse: one per clone, still on the variables device.
        assert sorted(op.name for op in handles) == [
            "clone_0/plain_variable", "clone_1/plain_variable", "plain_get_variable", "slim_model_variable"
        ]
        assert all(op.device == "/device:CPU:0" for op in handles)


def test_replica_device_setter_places_resource_variables_on_ps_tasks():
    cluster = tf.train.ClusterSpec({"ps": ["ps0:2222", "ps1:2222"], "worker": ["w0:2222", "w1:2222"]})
    config = DeploymentConfig(num_clones=1, clone_on_cpu=True, replica_id=1, num_replicas=2, num_ps_tasks=2,
                              cluster=cluster)
    assert config.clone_device(0) == "/job:worker/task:1/device:CPU:0"
    assert config.optimizer_device() == "/job:worker/task:1/device:CPU:0"
    assert config.inputs_device() == "/job:worker/task:1/device:CPU:0"
    assert callable(config.variables_device()) and callable(config.caching_device())
    with tf.Graph().as_default() as graph:
        model = model_deploy.deploy(
            config, batches_model(split_batches(1)), optimizer=tf1.train.MomentumOptimizer(0.1, 0.9)
        )
        assert model.train_op is not None
        ops = graph.get_operations()
        handles = {op.name: op for op in ops if op.type == "VarHandleOp"}
        # model variables, global step and momentum slots
        assert {"conv1/weights", "conv1/biases", "conv2/weights", "conv2/biases", "global_step"} <= set(handles)
        tasks = {}
        for name, op in handles.items():
            spec = tf.DeviceSpec.from_string(op.device)
            assert (spec.job, spec.device_type, spec.device_index) == ("ps", "CPU", 0), (name, op.device)
            tasks[name] = spec.task
        assert set(tasks.values()) == {0, 1}  # spread over both tasks
        # Every op using a variable's handle at creation sits on that variable's task.
        checked = 0
        for op in ops:
            if op.type in ("VarIsInitializedOp", "AssignVariableOp", "ReadVariableOp") and op.device:
                handle = op.inputs[0].op
                assert handle.type == "VarHandleOp"
                assert op.device == handle.device, (op.name, op.device, handle.device)
                checked += 1
        initialized = [op for op in ops if op.type == "VarIsInitializedOp"]
        assert initialized and all(op.device.startswith("/job:ps/") for op in initialized)
        assert checked >= 3 * len(handles)
        # Compute stays on the worker.
        convs = [op for op in ops if op.type == "Conv2D"]
        assert convs and all(op.device == "/job:worker/task:1/device:CPU:0" for op in convs)
