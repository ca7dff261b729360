"""--accumulate_steps through the real training graph and a short real training.

The exactness test: K=2 micro-batches of B images train exactly as one
step at batch 2B (plain SGD, so that the update is the learning rate times the applied gradient): every
variable's update equal to 1e-5 of its largest element.

The trainer's own graph (build_training_graph: input pipeline on the sample dataset, towers, step loss
normalisation, weight decay, the train op) at 64x64. The input pipeline's order and augmentation do
not depend on the batch size (each example's seed is its index), so the two micro-batches of B are
the batch of 2B, split. The micro-batches have different numbers of positives: the weights matter.
The learning rate is large so that each update is large beside the float32 rounding of the variable
it is added to (with a learning rate of 1, a 1.6e-4 update of a variable of 0.125 loses 5e-5 of
itself to that rounding alone).
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import command_line
from datasets import dataset_factory
from deployment import devices
from tf_compat import tf1
from training import graph as graph_lib, machines, plan as plan_lib
from training.config import TrainingConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = dict(image_size="64", optimizer="sgd", learning_rate=100.0, warmup_steps=0, augmentation="none",
               num_readers=1, num_preprocessing_threads=1, num_summary_images=0, summarize_activations=False,
               summarize_variables=False, seed=3)


def _one_global_step(dataset_dir, initial_values, batch_size, accumulate_steps, num_clones, **options):
    """({trainable variable: value after one global step}, initial values, the micro-batches' weights,
    {trainable variable: the first micro-batch's own gradient}): the train tensor run ``accumulate_steps``
    times from ``initial_values`` (None: the graph's own)."""
    opts = TrainingConfig(batch_size=batch_size, accumulate_steps=accumulate_steps, num_clones=num_clones,
                          clone_on_cpu=num_clones > 1, **{**OPTIONS, **options})
    spec = dataset_factory.get_dataset(None, "trainval", dataset_dir)
    with tf.Graph().as_default():
        parts = graph_lib.build_training_graph(opts, spec, machines.deployment_for(opts))
        variables = tf1.trainable_variables()
        names = [v.op.name for v in variables]
        weights = []
        first_gradients = {}
        with tf1.Session(config=devices.session_config()) as session:
            session.run([tf1.global_variables_initializer(), tf1.local_variables_initializer()])
            if initial_values is None:
                initial_values = dict(zip(names, session.run(variables)))
            else:
                for var in variables:
                    var.load(initial_values[var.op.name], session)
            for micro_batch in range(accumulate_steps):
                if micro_batch > 0:
                    # Between micro-batches: not one variable nor the global step has moved yet.
                    assert session.run(parts.global_step) == 0
                    for name, value in zip(names, session.run(variables)):
                        np.testing.assert_array_equal(value, initial_values[name], err_msg=name)
                fetches = [parts.train.train_tensor]
                if parts.micro_batch_weight is not None:
                    fetches.append(parts.micro_batch_weight)
                fetched = session.run(fetches)
                weights.extend(fetched[1:])
                if micro_batch == 0 and accumulate_steps > 1:
                    optimizer = parts.optimizer
                    first_gradients = {name: value / weights[0] for name, value in zip(names, session.run(
                        [optimizer.accumulator(var) for var in variables]))}
            assert session.run(parts.global_step) == 1
            after = dict(zip(names, session.run(variables)))
    return after, initial_values, weights, first_gradients


def _worst_relative_update_difference(after, reference, initial):
    """Max over variables of max |update - reference update| / max |reference update|."""
    worst = 0.0
    for name, expected in reference.items():
        expected_update = expected - initial[name]
        difference = float(np.abs((after[name] - initial[name]) - expected_update).max())
        scale = float(np.abs(expected_update).max())
        worst = max(worst, difference / scale if scale > 0 else (0.0 if difference == 0 else np.inf))
    return worst


@pytest.fixture(scope="module")
def big_step(sample_dataset_dir):
    """One tower's step at batch 4 and the initial values it started from."""
    big, initial, _, _ = _one_global_step(sample_dataset_dir, None, batch_size=4, accumulate_steps=1, num_clones=1)
    return big, initial


@pytest.mark.parametrize("num_clones", [1, 2])
def test_two_accumulated_micro_batches_train_as_one_step_at_twice_the_batch(sample_dataset_dir, big_step, num_clones):
    """2 micro-batches of 1 tower x 2 images, or of 2 towers x 1 image, against 1 tower x 4 images (which
    2 towers x 2 images equal: test_train_tower_normalisation.py)."""
    big, initial = big_step
    accumulated, _, weights, first_gradients = _one_global_step(
        sample_dataset_dir, initial, batch_size=2 // num_clones, accumulate_steps=2, num_clones=num_clones)
    assert len(weights) == 2 and weights[0] != weights[1], f"the micro-batches' positives should differ: {weights}"
    assert set(accumulated) == set(big) and len(big) > 40  # every conv, head and L2 scale
    assert _worst_relative_update_difference(accumulated, big, initial) <= 1e-5
    # Not vacuous: the first micro-batch's own update differs from the big batch's.
    alone = {name: initial[name] - OPTIONS["learning_rate"] * gradient for name, gradient in first_gradients.items()}
    assert _worst_relative_update_difference(alone, big, initial) > 1e-2


def test_a_global_step_counts_every_accumulated_micro_batch_in_epochs_and_schedules():
    # 40 images at batch 4 x 2 clones x 2 micro-batches = 16 images a global step: 2.5 steps an epoch.
    config = TrainingConfig(batch_size=4, num_clones=2, clone_on_cpu=True, accumulate_steps=2, warmup_epochs=2,
                            learning_rate_boundaries_epochs=["4"])
    deploy_config = machines.deployment_for(config)
    assert graph_lib.batches_per_step(config, deploy_config) == 2
    assert graph_lib.schedule_steps(config, 40, deploy_config) == (5, [10])
    assert config.images_per_clone_step == 16
    assert plan_lib.last_global_step(config.replace(num_epochs=4), 40, config.images_per_clone_step) == 10


def test_accumulate_steps_is_a_positive_count_and_not_for_sync_replicas():
    with pytest.raises(command_line.UsageError, match="--accumulate_steps"):
        TrainingConfig(accumulate_steps=0).check()
    with pytest.raises(command_line.UsageError, match="--accumulate_steps cannot be combined with --sync_replicas"):
        TrainingConfig(accumulate_steps=2, sync_replicas=True).check()
    TrainingConfig(accumulate_steps=2).check()
    TrainingConfig(sync_replicas=True).check()


STEP_LINE = re.compile(r"global step (\d+): loss = [0-9.eE+-]+, .* ([0-9.]+) images/s, ([0-9.]+) sec/step")


@pytest.mark.slow
def test_a_short_training_with_accumulation_counts_applied_updates(tmp_path):
    """Two global steps of two micro-batches each, the first in the first phase (new layers only)."""
    train_dir = tmp_path / "run"
    command = [sys.executable, os.path.join(REPO_ROOT, "train_ssd_network.py"), f"--train_dir={train_dir}",
               "--image_size=96", "--batch_size=2", "--accumulate_steps=2",
               "--max_number_of_steps=2", "--moving_average_decay=0.99", "--clip_gradient_norm=10",
               "--unfreeze_at_step=1", "--warmup_steps=0",
               "--num_readers=1", "--num_preprocessing_threads=2", "--num_summary_images=1", "--log_every_n_steps=1",
               "--save_summaries_secs=0", "--validation_split="]
    env = dict(os.environ, SSD_TOWERS_CACHE=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=str(tmp_path))
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "1 clone(s) x batch 2 x 2 accumulated micro-batches = 4 images per global step" in log, log[-3000:]
    # One line per global step (each of 2 micro-batches of 2 images), images/s over the 4 images.
    steps = STEP_LINE.findall(log)
    assert [int(step) for step, _, _ in steps] == [1, 2], log[-3000:]
    for _, images_per_second, seconds in steps:
        assert float(images_per_second) == pytest.approx(4 / float(seconds), rel=0.05, abs=0.06)
    assert "step 1/2 (epoch 0.03/0.05)" in log  # 160 training images at 4 a step: 40 steps an epoch
    # The phase switch after one applied update; each line's rate is the one its update applied.
    assert "Global step 1: the VGG-16 base starts training" in log
    assert re.search(r"global step 1: .*learning_rate = 0.001,", log) and re.search(
        r"global step 2: .*learning_rate = 5e-05,", log), log[-3000:]

    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(train_dir)))
    assert reader.get_tensor("global_step") == 2, "the global step counts applied updates, not micro-batches"
    names = reader.get_variable_to_shape_map()
    assert any(name.endswith("/ExponentialMovingAverage") for name in names)
    assert not [name for name in names if "accumulat" in name.lower()], "the accumulators are not checkpointed"
    assert json.loads((train_dir / "training_config.json").read_text())["flags"]["accumulate_steps"] == 2
