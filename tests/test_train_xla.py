"""--xla: each tower's forward pass, loss and backward pass compiled by XLA; the rest of the step is not.

The towers are built in a jit scope; TensorFlow's gradient code gives the backward ops of compiled
ops the same scope. Checked on the graph (which ops carry ``_XlaCompile``), by running it with 2
towers (the first loss agrees with the uncompiled graph's), with the NaN guard, and end to end: a run
with --xla exports a SavedModel without any XLA attribute (serving is compiled by nobody's choice but
the server's).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import export_ssd_network
from datasets import dataset_factory
from deployment import devices, train_op as train_op_lib
from tf_compat import tf1
from training import graph as graph_lib, machines
from training.config import TrainingConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWO_TOWERS = dict(image_size="64", batch_size=1, num_clones=2, clone_on_cpu=True, num_readers=1,
                  num_preprocessing_threads=1, summarize_variables=False, num_summary_images=0, augmentation="none")


def _compiled(op):
    try:
        return bool(op.get_attr("_XlaCompile"))
    except ValueError:
        return False


def _first_losses(spec, xla, steps=2, then_infinite_weights=False):
    """(losses of the first steps, the graph's operations[, the error of a step after a weight became Inf])."""
    opts = TrainingConfig(xla=xla, **TWO_TOWERS)
    error = None
    with tf.Graph().as_default():
        parts = graph_lib.build_training_graph(opts, spec, machines.deployment_for(opts))
        operations = tf1.get_default_graph().get_operations()
        head = [v for v in tf1.model_variables() if "block4_box/conv_loc/weights" in v.op.name][0]
        with tf1.Session(config=devices.session_config()) as session:
            session.run([tf1.global_variables_initializer(), tf1.local_variables_initializer()])
            losses = [session.run(parts.train.train_tensor) for _ in range(steps)]
            if then_infinite_weights:
                session.run(head.assign(tf.fill(head.shape, np.inf)))
                with pytest.raises(tf.errors.InvalidArgumentError) as raised:
                    session.run(parts.train.train_tensor)
                error = raised.value
    return losses, operations, error


def test_the_towers_and_their_backward_pass_are_compiled_and_train_as_without_xla(sample_dataset_dir):
    spec = dataset_factory.get_dataset(None, "trainval", sample_dataset_dir)
    compiled_losses, operations, error = _first_losses(spec, xla=True, then_infinite_weights=True)
    compiled = [op for op in operations if _compiled(op)]
    for tower in ("clone_0/", "clone_1/"):
        in_tower = {op.type for op in compiled if op.name.startswith(tower)}
        assert {"Conv2D", "Conv2DBackpropFilter", "Conv2DBackpropInput", "Relu", "ReluGrad"} <= in_tower
        assert any(op.name.startswith(tower + "ssd_losses/") for op in compiled)
    # The optimizer step, the gradient averaging, the NaN guard and the input pipeline stay uncompiled.
    assert not any(op.type.startswith("ResourceApply") or op.type == "Assert" or op.name.startswith("input/")
                   for op in compiled)
    # The NaN guard still stops a compiled step.
    message = train_op_lib.describe_nan_guard_error(error)
    assert message is not None and "localization" in message and "at global step 2" in message
    plain_losses, operations, _ = _first_losses(spec, xla=False)
    assert not any(_compiled(op) for op in operations)
    assert np.all(np.isfinite(compiled_losses))
    # Same weights, same first batch: XLA only reorders floating-point work.
    assert compiled_losses[0] == pytest.approx(plain_losses[0], rel=1e-4)


def _xla_attributes(saved_model_dir):
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as handle:
        saved_model.ParseFromString(handle.read())
    found = []
    for meta_graph in saved_model.meta_graphs:
        nodes = list(meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            nodes += list(function.node_def)
        found += [node.name for node in nodes if any(key.startswith("_Xla") for key in node.attr)]
    return found


@pytest.mark.slow
def test_a_run_with_xla_exports_an_ordinary_saved_model(sample_dataset_dir, tmp_path):
    # One tower: compiling is most of this test's time, and two compiled towers are the test above.
    train_dir, export_dir = tmp_path / "train", tmp_path / "export"
    command = [sys.executable, os.path.join(REPO_ROOT, "train_ssd_network.py"), f"--train_dir={train_dir}",
               f"--dataset_dir={sample_dataset_dir}", "--image_size=64", "--batch_size=1", "--num_clones=1",
               "--xla", "--max_number_of_steps=2", "--num_readers=1",
               "--num_preprocessing_threads=1", "--validation_split=", "--num_summary_images=0",
               "--log_every_n_steps=1"]
    env = dict(os.environ, SSD_TOWERS_CACHE=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "global step 2: loss = " in result.stderr
    assert export_ssd_network.main([f"--checkpoint_path={train_dir}", f"--output_dir={export_dir}"]) == 0
    assert _xla_attributes(str(export_dir)) == []
