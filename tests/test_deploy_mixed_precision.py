"""--precision: towers in bfloat16/float16 over float32 variables, float32 losses, dynamic loss scaling.

The loss-scaling cases are hand-worked on a one-weight graph (loss = w * x, SGD): the scheme of
Micikevicius et al. (2018) says the gradient of ``scale * loss`` divided by ``scale`` is the gradient,
that an overflowing step changes no weight and halves the scale, and that ``growth_interval`` finite
steps in a row double it. The rest builds the trainer's own graph on the sample data.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from datasets import dataset_factory
from deployment import devices, gradient_accumulation, mixed_precision, train_op as train_op_lib
from tf_compat import tf1
from training import graph as graph_lib, machines
from training.config import TrainingConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(image_size="64", batch_size=2, num_readers=1, num_preprocessing_threads=1, summarize_variables=False,
            num_summary_images=0)


# ----------------------------------------------------------------------------- the float32 variables getter


def test_a_tower_in_bfloat16_reads_float32_variables_through_a_cast():
    with tf.Graph().as_default():
        images = tf.ones([1, 4, 4, 2], tf.bfloat16)
        with mixed_precision.tower_precision("mixed_bf16"):
            with tf1.variable_scope("net"):
                weights = tf1.get_variable("w", [3, 3, 2, 5], tf.bfloat16,
                                           regularizer=lambda w: tf.reduce_sum(tf.square(w)))
                outputs = tf.nn.conv2d(images, weights, 1, "SAME")
        (variable,) = tf1.global_variables()
        assert variable.op.name == "net/w" and variable.dtype.base_dtype == tf.float32
        assert weights.dtype == tf.bfloat16 and outputs.dtype == tf.bfloat16
        (regularization,) = tf1.get_collection(tf1.GraphKeys.REGULARIZATION_LOSSES)
        assert regularization.dtype == tf.float32  # the weight decay of the float32 variable
        (gradient,) = tf.gradients(tf.reduce_sum(tf.cast(outputs, tf.float32)), [variable])
        assert gradient.dtype == tf.float32
        # A float32 request (a global step, a float32 layer) passes through unchanged.
        with mixed_precision.tower_precision("mixed_bf16"):
            plain = tf1.get_variable("v", [2], tf.float32)
        assert isinstance(plain, tf.Variable)


def test_fp32_installs_no_getter_and_unknown_precisions_are_named():
    with tf.Graph().as_default():
        with mixed_precision.tower_precision("fp32"):
            variable = tf1.get_variable("w", [2], tf.float32)
        assert isinstance(variable, tf.Variable)
    with pytest.raises(ValueError, match="--precision must be one of fp32, mixed_bf16, mixed_fp16"):
        mixed_precision.compute_dtype("fp8")


# ----------------------------------------------------------------------------- dynamic loss scaling, by hand


def _one_weight_graph(accumulate_steps=1, **scaling):
    """w = 2, loss = float32(float16(w) * float16(x)); SGD at 0.5 [accumulated] behind loss scaling."""
    global_step = tf1.train.get_or_create_global_step()
    w = tf1.get_variable("w", initializer=2.0)
    x = tf1.placeholder(tf.float32, [])
    loss = tf.cast(tf.cast(w, tf.float16) * tf.cast(x, tf.float16), tf.float32)
    sgd = tf1.train.GradientDescentOptimizer(0.5)
    if accumulate_steps > 1:
        sgd = gradient_accumulation.GradientAccumulationOptimizer(sgd, accumulate_steps)
    optimizer = mixed_precision.DynamicLossScaleOptimizer(sgd, **scaling)
    grads_and_vars = optimizer.compute_gradients(loss, var_list=[w])
    train = optimizer.apply_gradients(grads_and_vars, global_step=global_step)
    return optimizer, w, x, grads_and_vars[0][0], train, global_step


def test_loss_scaling_unscales_skips_overflows_halves_and_grows_by_hand():
    with tf.Graph().as_default():
        optimizer, w, x, gradient, train, global_step = _one_weight_graph(initial_loss_scale=4.0, growth_interval=2)
        state = [w, optimizer.loss_scale, optimizer.skipped_steps, global_step]
        with tf1.Session() as session:
            session.run([tf1.global_variables_initializer(), tf1.local_variables_initializer()])
            # The scaled backward pass computes 4 * 3 = 12 in float16; divided by 4, the gradient is dL/dw = 3.
            assert session.run(gradient, {x: 3.0}) == 3.0
            session.run(train, {x: 3.0})
            assert session.run(state) == [2.0 - 0.5 * 3.0, 4.0, 0, 1]
            session.run(train, {x: 3.0})  # the second finite step in a row: the scale doubles
            assert session.run(state) == [0.5 - 1.5, 8.0, 0, 2]
            # 8 * 10000 = 80000 > 65504: the float16 gradient overflows. The weight is untouched, the scale
            # halves, the step is counted as run and as skipped.
            session.run(train, {x: 1e4})
            assert session.run(state) == [-1.0, 4.0, 1, 3]
            # At 4 * 10000 = 40000 the same input is finite again: the step applies the true gradient.
            session.run(train, {x: 1e4})
            assert session.run(state) == [-1.0 - 0.5 * 1e4, 4.0, 1, 4]


def test_with_accumulation_an_overflowing_micro_batch_is_dropped_and_still_counts():
    with tf.Graph().as_default():
        optimizer, w, x, _, train, global_step = _one_weight_graph(accumulate_steps=2, initial_loss_scale=8.0)
        state = [w, optimizer.loss_scale, optimizer.skipped_steps, global_step]
        with tf1.Session() as session:
            session.run([tf1.global_variables_initializer(), tf1.local_variables_initializer()])
            session.run(train, {x: 3.0})  # kept, gradient 3
            assert session.run(state) == [2.0, 8.0, 0, 0]
            session.run(train, {x: 1e4})  # 8 * 1e4 overflows: dropped; the accumulation applies the kept one
            assert session.run(state) == [2.0 - 0.5 * 3.0, 4.0, 1, 1]
            session.run(train, {x: 1e5})  # both micro-batches overflow: only the step counts
            session.run(train, {x: 1e5})
            assert session.run(state) == [0.5, 1.0, 3, 2]


def test_the_loss_scale_stops_at_its_floor_and_endless_overflows_stop_training():
    with tf.Graph().as_default():
        optimizer, w, x, _, train, global_step = _one_weight_graph(
            initial_loss_scale=2.0, min_loss_scale=1.0, max_consecutive_skips=3)
        guard = optimizer.overflow_guard(global_step)
        with tf1.Session() as session:
            session.run([tf1.global_variables_initializer(), tf1.local_variables_initializer()])
            for _ in range(3):  # 1e5 overflows float16 even unscaled
                session.run(guard)
                session.run(train, {x: 1e5})
            assert session.run([w, optimizer.loss_scale, optimizer.skipped_steps_in_a_row]) == [2.0, 1.0, 3]
            with pytest.raises(tf.errors.InvalidArgumentError) as raised:
                session.run(guard)
    message = train_op_lib.describe_nan_guard_error(raised.value)
    assert message.startswith("Training stopped: the float16 gradients overflowed at every one of the last 3 "
                              "steps before global step 3, down to a loss scale of 1: training diverged")
    assert "--precision=mixed_bf16" in message


def test_the_wrapper_shares_the_wrapped_optimizers_slots():
    with tf.Graph().as_default():
        w = tf1.get_variable("w", initializer=1.0)
        adam = tf1.train.AdamOptimizer(0.1)
        optimizer = mixed_precision.DynamicLossScaleOptimizer(adam)
        optimizer.apply_gradients(optimizer.compute_gradients(w * 2.0, var_list=[w]))
        assert optimizer.get_slot_names() == ["m", "v"] and optimizer.get_slot(w, "m") is adam.get_slot(w, "m")
        # Its own state is local: never in a checkpoint, so any precision restores any checkpoint.
        assert {v.op.name for v in tf1.local_variables()} == {
            "DynamicLossScale/loss_scale", "DynamicLossScale/finite_steps_in_a_row", "DynamicLossScale/skipped_steps",
            "DynamicLossScale/skipped_steps_in_a_row", "DynamicLossScale/applied_updates"}
        assert not any("DynamicLossScale" in v.op.name for v in tf1.global_variables())


# ----------------------------------------------------------------------------- the trainer's graph


def _training_graph(spec, **options):
    opts = TrainingConfig(**{**TINY, **options})
    return graph_lib.build_training_graph(opts, spec, machines.deployment_for(opts))


@pytest.mark.parametrize("precision, low", [("mixed_bf16", tf.bfloat16), ("mixed_fp16", tf.float16)])
def test_the_towers_compute_low_and_keep_variables_losses_and_gradients_in_float32(sample_dataset_dir, precision,
                                                                                    low):
    spec = dataset_factory.get_dataset(None, "trainval", sample_dataset_dir)
    with tf.Graph().as_default():
        parts = _training_graph(spec, precision=precision, num_clones=2, clone_on_cpu=True, batch_size=1)
        operations = tf1.get_default_graph().get_operations()
        convolutions = [op for op in operations if op.type == "Conv2D"]
        assert len(convolutions) == 2 * 35 and {op.get_attr("T") for op in convolutions} == {low}
        assert {v.dtype.base_dtype for v in tf1.global_variables()} == {tf.float32, tf.int64}
        model_variables = tf1.model_variables()
        assert model_variables and all(v.dtype.base_dtype == tf.float32 for v in model_variables)
        # Everything the multibox loss computes (softmax, hard-negative ranking, sums) is float32.
        loss_ops = [op for op in operations if "/ssd_losses/" in op.name and "T" in op.node_def.attr]
        assert len(loss_ops) > 20
        assert {op.get_attr("T") for op in loss_ops if op.get_attr("T").is_floating} == {tf.float32}
        assert all(g.dtype == tf.float32 for g, _ in parts.train.grads_and_vars)
        assert parts.train.total_loss.dtype == tf.float32
        # The two towers' gradients are summed on the optimizer device, in float32.
        assert (parts.loss_scale_optimizer is not None) == (precision == "mixed_fp16")
        tags = {op.inputs[0].op.get_attr("value").string_val[0].decode() for op in operations
                if op.type == "ScalarSummary" and op.inputs[0].op.type == "Const"}
        assert ("mixed_precision/loss_scale" in tags) == (precision == "mixed_fp16")


@pytest.mark.parametrize("precision", ["mixed_bf16", "mixed_fp16"])
def test_a_few_steps_lower_the_loss(sample_dataset_dir, precision):
    spec = dataset_factory.get_dataset(None, "trainval", sample_dataset_dir)
    with tf.Graph().as_default():
        parts = _training_graph(spec, precision=precision, augmentation="none", learning_rate=0.001,
                                warmup_steps=0, weight_decay=0.0, shuffle_buffer_size=1)
        with tf1.Session(config=devices.session_config()) as session:
            session.run([tf1.global_variables_initializer(), tf1.local_variables_initializer()])
            losses = [session.run(parts.train.train_tensor) for _ in range(24)]
            skipped = session.run(parts.loss_scale_optimizer.skipped_steps) if parts.loss_scale_optimizer else 0
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-6:]) < 0.7 * np.mean(losses[:6]), losses
    assert skipped < 6  # a few while the scale finds its level


def test_an_injected_overflow_halves_the_scale_and_leaves_the_weights(sample_dataset_dir):
    spec = dataset_factory.get_dataset(None, "trainval", sample_dataset_dir)
    with tf.Graph().as_default():
        parts = _training_graph(spec, precision="mixed_fp16", moving_average_decay=0.9)
        scale = parts.loss_scale_optimizer.loss_scale
        trained = [v for _, v in parts.train.grads_and_vars]
        averages = [parts.train.moving_average.average(v) for v in trained]
        with tf1.Session(config=devices.session_config()) as session:
            session.run([tf1.global_variables_initializer(), tf1.local_variables_initializer()])
            skipped = parts.loss_scale_optimizer.skipped_steps
            for _ in range(6):  # until a step applies: Adam's slots and the averages move off their start
                session.run(parts.train.train_tensor)
            applied = 6 - session.run(skipped)
            assert applied >= 1
            before = session.run(trained + averages)
            # 2**100 times any gradient overflows float16 (and float32 beyond 2**128): the step must skip.
            session.run(tf1.assign(scale, 2.0 ** 100))
            session.run(parts.train.train_tensor)
            after = session.run(trained + averages)
            slots = [parts.optimizer.get_slot(v, "m") for v in trained[:3]]
            assert session.run([scale, skipped, parts.global_step]) == [2.0 ** 99, 7 - applied, 7]
            assert all(np.isfinite(session.run(slot)).all() for slot in slots)
    changed = [i for i, (a, b) in enumerate(zip(before, after)) if not np.array_equal(a, b)]
    assert not changed, (len(trained), changed)


def test_a_nan_loss_is_a_divergence_not_an_overflow_skip(sample_dataset_dir):
    spec = dataset_factory.get_dataset(None, "trainval", sample_dataset_dir)
    with tf.Graph().as_default():
        parts = _training_graph(spec, precision="mixed_fp16")
        head = [v for v in tf1.model_variables() if "block4_box/conv_cls/weights" in v.op.name][0]
        with tf1.Session(config=devices.session_config()) as session:
            session.run([tf1.global_variables_initializer(), tf1.local_variables_initializer()])
            session.run(head.assign(tf.fill(head.shape, np.nan)))
            with pytest.raises(tf.errors.InvalidArgumentError) as raised:
                session.run(parts.train.train_tensor)
    message = train_op_lib.describe_nan_guard_error(raised.value)
    assert message.startswith("Training stopped: loss term") and "became NaN or Inf at global step 0" in message


def test_a_checkpoint_of_one_precision_restores_in_another(sample_dataset_dir, tmp_path):
    spec = dataset_factory.get_dataset(None, "trainval", sample_dataset_dir)
    prefix = str(tmp_path / "model.ckpt")
    with tf.Graph().as_default():
        parts = _training_graph(spec, precision="mixed_fp16")
        variables = tf1.global_variables()
        with tf1.Session(config=devices.session_config()) as session:
            session.run([tf1.global_variables_initializer(), tf1.local_variables_initializer()])
            session.run(parts.train.train_tensor)
            written = dict(zip([v.op.name for v in variables], session.run(variables)))
            tf1.train.Saver().save(session, prefix)
    stored = tf.train.load_checkpoint(prefix).get_variable_to_dtype_map()
    assert set(stored) == set(written) and set(stored.values()) == {tf.float32, tf.int64}
    # The float16 run's checkpoint restores into a bfloat16 graph (and, below, a float32 run resumes one).
    with tf.Graph().as_default():
        _training_graph(spec, precision="mixed_bf16")
        variables = tf1.global_variables()
        with tf1.Session(config=devices.session_config()) as session:
            tf1.train.Saver().restore(session, prefix)
            restored = dict(zip([v.op.name for v in variables], session.run(variables)))
    assert restored.keys() == written.keys()
    assert all(np.array_equal(restored[name], written[name]) for name in written)


@pytest.mark.slow
def test_a_float16_run_resumes_in_float32_and_logs_its_loss_scale(sample_dataset_dir, tmp_path):
    train_dir = tmp_path / "train"
    env = dict(os.environ, SSD_TOWERS_CACHE=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="2")

    def train(precision, steps):
        command = [sys.executable, os.path.join(REPO_ROOT, "train_ssd_network.py"), f"--train_dir={train_dir}",
                   f"--dataset_dir={sample_dataset_dir}", "--image_size=64", "--batch_size=2", "--num_readers=1",
                   "--num_preprocessing_threads=1", "--log_every_n_steps=1", "--validation_split=",
                   "--save_summaries_secs=0", "--num_summary_images=0", f"--max_number_of_steps={steps}",
                   f"--precision={precision}"]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        return result.stderr

    log = train("mixed_fp16", 2)
    assert "towers in mixed_fp16" in log and "loss_scale = 32768" in log and "skipped_steps = " in log
    log = train("fp32", 3)
    assert "Initialization: resuming" in log or "resum" in log.lower()
    assert "loss_scale" not in log
    reader = tf.train.load_checkpoint(str(train_dir))
    assert int(reader.get_tensor("global_step")) == 3
    assert not any("DynamicLossScale" in name for name in reader.get_variable_to_shape_map())


# ----------------------------------------------------------------------------- --precision=auto


def test_auto_precision_is_bfloat16_only_on_a_bfloat16_cpu_without_a_gpu(tmp_path):
    from deployment import devices as devices_lib
    from training import plan

    auto = TrainingConfig(precision="auto")
    assert plan.resolve_precision(auto, gpu_visible=False, cpu_bfloat16=True).precision == "mixed_bf16"
    assert plan.resolve_precision(auto, gpu_visible=False, cpu_bfloat16=False).precision == "fp32"
    assert plan.resolve_precision(auto, gpu_visible=True, cpu_bfloat16=True).precision == "fp32"
    chosen = TrainingConfig(precision="mixed_fp16")
    assert plan.resolve_precision(chosen, gpu_visible=False, cpu_bfloat16=True) is chosen
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_vnni avx512_bf16 fma\n")
    assert devices_lib.cpu_computes_bfloat16(str(cpuinfo))
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16x\n")
    assert not devices_lib.cpu_computes_bfloat16(str(cpuinfo))
    assert not devices_lib.cpu_computes_bfloat16(str(tmp_path / "absent"))
