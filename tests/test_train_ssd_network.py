"""train_ssd_network.py: the towers' graph on two logical CPU devices, and short real trainings."""

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from datasets import dataset_factory
from deployment import devices, train_op as train_op_lib
from nets import nets_factory
from tf_compat import tf1
from training import graph as graph_lib, machines
from training.config import TrainingConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(image_size="96", batch_size=2, num_readers=1, num_preprocessing_threads=1, num_summary_images=1)
STEP_LINE = re.compile(r"global step (\d+): loss = ([0-9.eE+-]+|nan|inf)")
MULTIBOX_TERMS = re.compile(r"global step (\d+):.*cross_entropy_pos/value = ([0-9.eE+-]+), "
                            r"cross_entropy_neg/value = ([0-9.eE+-]+), localization/value = ([0-9.eE+-]+)")


def _device_index(device):
    match = re.search(r"CPU:(\d+)", device or "")
    return int(match.group(1)) if match else None


@pytest.fixture
def two_clone_graph(sample_dataset_dir):
    opts = TrainingConfig(num_clones=2, clone_on_cpu=True, **TINY)
    spec = dataset_factory.get_dataset(None, "trainval", sample_dataset_dir)
    graph = tf.Graph()
    with graph.as_default():
        parts = graph_lib.build_training_graph(opts, spec, machines.deployment_for(opts))
    return graph, parts


def test_two_towers_are_placed_as_designed(two_clone_graph):
    graph, parts = two_clone_graph
    with graph.as_default():
        variables = tf1.global_variables()
    assert variables and all(_device_index(v.device) == 0 for v in variables), "every variable lives on CPU:0"

    ops = graph.get_operations()
    for clone_index in (0, 1):
        scope = f"clone_{clone_index}/"
        convs = [op for op in ops if op.name.startswith(scope) and op.type == "Conv2D"]
        assert convs, f"no forward convolution in {scope}"
        assert {_device_index(op.device) for op in convs} == {clone_index}
    backprop = [op for op in ops if op.type == "Conv2DBackpropFilter"]
    assert {_device_index(op.device) for op in backprop} == {0, 1}, "each tower computes its own gradients"

    applies = [op for op in ops if op.type.startswith("ResourceApply")]
    assert applies and {_device_index(op.device) for op in applies} == {0}
    averages = [op for op in ops if op.name.startswith("average_clone_gradients/") and op.type == "AddN"]
    assert averages and {_device_index(op.device) for op in averages} == {0}

    dequeues = [op for op in ops if op.type == "IteratorGetNext"]
    assert len(dequeues) == 2 and {_device_index(op.device) for op in dequeues} == {0}, "inputs stay on the CPU"


def test_each_tower_gets_its_own_batch_and_a_step_runs(two_clone_graph):
    graph, parts = two_clone_graph
    with graph.as_default(), tf1.Session(graph=graph, config=devices.session_config()) as session:
        session.run([tf1.global_variables_initializer(), tf1.local_variables_initializer()])
        batches = [clone.outputs["_batch"]["image"] for clone in parts.clones]
        first, second, loss = session.run(batches + [parts.train.train_tensor])
        assert first.shape == second.shape == (2, 96, 96, 3)
        assert not np.array_equal(first, second), "the two towers must not see the same batch"
        assert np.isfinite(loss)
        assert session.run(parts.global_step) == 1


def _train(train_dir, *extra, env_dir):
    command = [sys.executable, os.path.join(REPO_ROOT, "train_ssd_network.py"), f"--train_dir={train_dir}",
               "--image_size=96", "--batch_size=4", "--num_readers=1", "--num_preprocessing_threads=2",
               # Summaries at the first step and every 20 s: each costs about a step (histograms of every
               # variable), and one write shows every tag.
               "--num_summary_images=2", "--log_every_n_steps=1", "--save_summaries_secs=20",
               # In-run validation has its own tests (test_training_validation.py); these time the rest.
               "--validation_split=", *extra]
    env = dict(os.environ, SSD_TOWERS_CACHE=str(env_dir), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=str(env_dir))
    return result, result.stdout + result.stderr


def _losses(log):
    return {int(step): float(loss) for step, loss in STEP_LINE.findall(log)}


def _multibox_losses(log):
    """{step: the multibox loss (both cross-entropies + localisation), regularisation left out}."""
    return {int(step): sum(float(term) for term in terms) for step, *terms in MULTIBOX_TERMS.findall(log)}


def _event_tags(train_dir):
    tags = set()
    for path in glob.glob(os.path.join(train_dir, "events.out.tfevents.*")):
        for event in tf1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    return tags


@pytest.mark.slow
def test_short_training_lowers_the_loss_writes_summaries_and_resumes(tmp_path):
    train_dir = tmp_path / "fine_tuning"
    # 24 steps: the loss falls from ~17 to ~11 by step 12 on this data and only wanders after that.
    result, log = _train(train_dir, "--max_number_of_steps=24", "--augmentation=none", "--optimizer=adam",
                         "--learning_rate=0.0001", env_dir=tmp_path)
    assert result.returncode == 0, log[-3000:]
    assert "No --dataset_dir: training on the built-in sample dataset" in log
    assert "from scratch" in log.lower()
    losses = _multibox_losses(log)
    assert sorted(losses) == list(range(1, 25)), log[-3000:]
    first, last = np.mean([losses[s] for s in range(1, 6)]), np.mean([losses[s] for s in range(20, 25)])
    assert last < 0.8 * first, f"loss did not fall clearly: first steps {first:.2f}, last steps {last:.2f}"

    assert tf.train.latest_checkpoint(str(train_dir)).endswith("-24")
    config = json.loads((train_dir / "training_config.json").read_text())
    assert config["network"]["img_shape"] == [96, 96] and config["dataset"]["num_classes"] == 4
    tags = _event_tags(str(train_dir))
    for expected in ("Losses/total_loss", "Losses/regularization_loss", "learning_rate", "global_step/sec",
                     "Losses/ssd_losses/cross_entropy_pos/value", "Losses/ssd_losses/localization/value"):
        assert expected in tags, f"missing summary {expected}: {sorted(tags)[:40]}"
    assert any(tag.startswith("ground_truth_images/") for tag in tags)
    assert any(tag.startswith("activations/") for tag in tags) and any(t.startswith("sparsity/") for t in tags)
    assert any(tag.startswith("variables/") for tag in tags)

    result, log = _train(train_dir, "--max_number_of_steps=27", env_dir=tmp_path)
    assert result.returncode == 0, log[-3000:]
    assert "resum" in log.lower()
    assert sorted(_losses(log)) == [25, 26, 27], "a restarted run continues from the saved global step"

    # The newest checkpoint cut short (a kill or a full disk during its write): the run resumes from
    # the one before, and the damaged files are kept aside, not deleted.
    latest = tf.train.latest_checkpoint(str(train_dir))
    assert latest.endswith("-27")
    data_file = latest + ".data-00000-of-00001"
    with open(data_file, "rb") as stream:
        whole = stream.read()
    with open(data_file, "wb") as stream:
        stream.write(whole[: len(whole) // 3])
    result, log = _train(train_dir, "--max_number_of_steps=26", env_dir=tmp_path)
    assert result.returncode == 0, log[-3000:]
    assert f"Checkpoint {latest} is unreadable" in log and "resuming from" in log, log[-3000:]
    assert sorted(_losses(log)) == [25, 26], "resumed from step 24"
    assert os.path.exists(os.path.join(train_dir, "corrupt_checkpoints", os.path.basename(data_file)))


@pytest.mark.slow
def test_an_absurd_learning_rate_stops_at_the_nan_guard(tmp_path):
    result, log = _train(tmp_path / "run", "--max_number_of_steps=50", "--optimizer=sgd", "--learning_rate=1e12",
                         env_dir=tmp_path)
    assert result.returncode == 1, log[-3000:]
    assert re.search(r"became NaN or Inf at global step \d+", log), log[-3000:]
    saved = tf.train.latest_checkpoint(str(tmp_path / "run"))
    if saved:
        reader = tf.train.load_checkpoint(saved)
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if np.issubdtype(np.asarray(value).dtype, np.floating):
                assert np.all(np.isfinite(value)), f"{name} saved with NaN/Inf"


def test_a_misspelled_checkpoint_path_fails_before_training(tmp_path, sample_dataset_dir):
    result, log = _train(tmp_path / "run", "--max_number_of_steps=1", f"--dataset_dir={sample_dataset_dir}",
                         f"--checkpoint_path={tmp_path / 'no_such_ckpt'}", env_dir=tmp_path)
    assert result.returncode == 2
    assert "no_such_ckpt" in log
    assert not glob.glob(str(tmp_path / "run" / "model.ckpt-*"))


def test_options_reject_unknown_names_and_parse_sizes():
    with pytest.raises(ValueError, match="unknown training options"):
        TrainingConfig.from_dict({"batchsize": 3})
    with pytest.raises(ValueError, match="unknown training options"):
        TrainingConfig().replace(batchsize=3)
    assert nets_factory.parse_image_size("96") == (96, 96)
    assert nets_factory.parse_image_size("128,96") == (128, 96)
    assert nets_factory.parse_image_size("128x96") == (128, 96)
    with pytest.raises(ValueError, match="image size"):
        nets_factory.parse_image_size("0")


def _train_in_process(spec, steps, with_summaries, tmp_path):
    """Variables after ``steps`` steps run through the trainer's train_step_fn, summaries fused or not."""
    opts = TrainingConfig(augmentation="none", optimizer="sgd", learning_rate=0.01, **TINY)
    with tf.Graph().as_default():
        parts = graph_lib.build_training_graph(opts, spec, machines.deployment_for(opts))
        writer = tf1.summary.FileWriter(str(tmp_path)) if with_summaries else None
        step_fn = train_op_lib.make_train_step_fn(
            summary_op=tf1.summary.merge_all() if with_summaries else None, summary_writer=writer,
            save_summaries_secs=0)
        with tf1.Session(config=devices.session_config()) as session:
            session.run(tf1.global_variables_initializer())
            for _ in range(steps):
                step_fn(session, parts.train.train_tensor, parts.global_step, {})
            values = session.run(tf1.trainable_variables())
        if writer:
            writer.close()
    return values


def test_summaries_show_the_trained_batch_and_take_none_of_their_own(sample_dataset_dir, tmp_path):
    spec = dataset_factory.get_dataset(None, "trainval", sample_dataset_dir)
    plain = _train_in_process(spec, 3, False, tmp_path / "plain")
    summarised = _train_in_process(spec, 3, True, tmp_path / "summarised")
    # Had the summaries pulled batches of their own, steps 2 and 3 would have trained on other images.
    for a, b in zip(plain, summarised):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    tags = _event_tags(str(tmp_path / "summarised"))
    assert any(tag.startswith("ground_truth_images/") for tag in tags) and "Losses/total_loss" in tags


def _imagenet_like_vgg16(path):
    """A conv-only TF-Slim vgg_16 checkpoint (random values, the real shapes): what an ImageNet start looks like."""
    from nets import ssd_vgg_common

    rng = np.random.default_rng(5)
    with tf.Graph().as_default():
        variables, channels_in = [], 3
        for block, repeats, channels in ssd_vgg_common.VGG16_BLOCKS:
            for index in range(1, repeats + 1):
                scale = np.sqrt(2.0 / (9 * channels_in))
                variables.append(tf1.Variable(rng.normal(0, scale, (3, 3, channels_in, channels)).astype(np.float32),
                                              name=f"vgg_16/{block}/{block}_{index}/weights"))
                variables.append(tf1.Variable(np.zeros(channels, np.float32), name=f"vgg_16/{block}/{block}_{index}/biases"))
                channels_in = channels
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            return tf1.train.Saver(variables).save(session, path)


@pytest.mark.slow
def test_from_imagenet_new_layers_train_first_then_the_base_and_a_resume_keeps_the_plan(sample_dataset_dir, tmp_path):
    """Default recipe from an ImageNet VGG-16: conv1/conv2 never train; conv3..conv5 only after the
    new-layers-only steps (here 2 steps of 4 images, given in epochs of the trainval split), with the
    switch logged; a resumed run keeps the plan recorded in training_config.json."""
    imagenet = _imagenet_like_vgg16(str(tmp_path / "imagenet" / "vgg_16.ckpt"))
    train_dir = tmp_path / "train"
    trainval = dataset_factory.get_dataset(None, "trainval", sample_dataset_dir).num_samples
    common = [f"--checkpoint_path={imagenet}", "--checkpoint_model_scope=vgg_16", f"--dataset_dir={sample_dataset_dir}",
              f"--new_layers_only_epochs={8 / trainval}", "--save_interval_secs=3600"]
    first, log = _train(train_dir, *common, "--max_number_of_steps=2", env_dir=tmp_path)
    assert first.returncode == 0, log[-3000:]
    assert "only SSD's new layers train (conv1..conv5 frozen) until global step 2 (--new_layers_only_epochs" in log
    assert "frozen (not trained): conv1, conv2 (the paper's recipe" in log
    assert json.load(open(train_dir / "training_config.json"))["new_layers_only_steps"] == 2
    after_phase_one = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(train_dir)))
    start = tf.train.load_checkpoint(imagenet)

    def same(reader, name):
        return np.array_equal(reader.get_tensor(f"ssd_300_vgg/{name}/weights"), start.get_tensor(f"vgg_16/{name}/weights"))

    assert same(after_phase_one, "conv1/conv1_1") and same(after_phase_one, "conv5/conv5_3")
    assert "Global step 2: the VGG-16 base (but conv1, conv2) starts training, at learning rate 5e-05" in log
    # Adam's slots exist for conv3..conv5 from the start (shared by both phases), zero while they are frozen.
    assert not after_phase_one.get_tensor("ssd_300_vgg/conv5/conv5_3/weights/Adam").any()
    assert after_phase_one.get_tensor("ssd_300_vgg/conv6/weights/Adam").any()

    # Without the flag: the resumed run takes its plan from training_config.json.
    resumed_flags = [flag for flag in common if not flag.startswith("--new_layers_only_epochs")]
    second, log = _train(train_dir, *resumed_flags, "--max_number_of_steps=4", env_dir=tmp_path)
    assert second.returncode == 0, log[-3000:]
    assert "until global step 2 (as in the run being resumed" in log
    final = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(train_dir)))
    assert int(final.get_tensor("global_step")) == 4
    assert same(final, "conv1/conv1_1") and same(final, "conv2/conv2_2")
    assert not same(final, "conv5/conv5_3") and not same(final, "conv3/conv3_1")
