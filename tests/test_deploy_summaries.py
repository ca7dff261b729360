"""Summaries: written to an event file and read back."""

import glob

import numpy as np
import tensorflow as tf

from deployment import model_deploy, summaries
from deployment.learning_rate import configure_learning_rate
from deployment.model_deploy import DeploymentConfig
from deployment.train_op import build_train_op
from preprocessing import visualization
from tf_compat import slim, tf1

RNG = np.random.default_rng(5)
IMAGES = RNG.normal(size=(2, 8, 8, 3)).astype(np.float32)
LABELS = RNG.normal(size=(2, 2)).astype(np.float32)


def toy_model():
    end_points = {}
    with slim.arg_scope([slim.conv2d], weights_regularizer=slim.l2_regularizer(0.01)):
        net = end_points["conv1"] = slim.conv2d(tf.constant(IMAGES), 4, [3, 3], scope="conv1")
        net = end_points["conv2"] = slim.conv2d(net, 2, [3, 3], activation_fn=None, scope="conv2")
    predictions = tf.reduce_mean(net, axis=[1, 2])
    tf1.losses.mean_squared_error(tf.constant(LABELS), predictions, scope="localization")
    tf1.losses.absolute_difference(tf.constant(LABELS), predictions, scope="classification")
    return end_points


def read_tags(logdir):
    tags = {}
    for path in glob.glob(f"{logdir}/events.out.tfevents.*"):
        for event in tf1.train.summary_iterator(path):
            for value in event.summary.value:
                kind = value.WhichOneof("value")
                tags[value.tag] = kind
    return tags


def test_training_summaries_round_trip_through_an_event_file(tmp_path):
    with tf.Graph().as_default():
        config = DeploymentConfig(num_clones=2, clone_on_cpu=True)
        global_step = model_deploy.get_or_create_global_step(config)
        clones = model_deploy.create_clones(config, toy_model)
        with tf1.device(config.optimizer_device()):
            learning_rate = configure_learning_rate(global_step, 0.01, "exponential", decay_steps=10, decay_rate=0.5)
        train = build_train_op(config, clones, tf1.train.MomentumOptimizer(learning_rate, 0.9),
                               global_step=global_step)
        summaries.add_loss_summaries(train.total_loss, clones)
        summaries.add_learning_rate_summary(learning_rate)
        summaries.add_activation_summaries(clones[0].outputs)
        summaries.add_variable_summaries(slim.get_model_variables())
        boxes = tf.constant([[[0.1, 0.1, 0.5, 0.6]], [[0.2, 0.3, 0.9, 0.8]]], tf.float32)
        visualization.ground_truth_image_summary(tf.constant(IMAGES) * 50.0 - 20.0, boxes, tf.constant([[1], [2]]),
                                                 {1: "cat", 2: "dog"}, name="training_images")
        summary_op = tf1.summary.merge_all()
        writer = tf1.summary.FileWriter(str(tmp_path))
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            session.run(train.train_tensor)
            writer.add_summary(session.run(summary_op), 1)
        writer.close()
    tags = read_tags(str(tmp_path))
    expected_scalars = [
        "Losses/total_loss", "Losses/localization/value", "Losses/classification/value",
        "Losses/clone_0/clone_loss", "Losses/clone_1/clone_loss", "Losses/regularization_loss",
        "learning_rate", "gradient_global_norm", "sparsity/conv1", "sparsity/conv2",
    ]
    for tag in expected_scalars:
        assert tags.get(tag) == "simple_value", (tag, sorted(tags))
    for tag in ["activations/conv1", "activations/conv2", "variables/conv1/weights", "variables/conv2/biases"]:
        assert tags.get(tag) == "histo", (tag, sorted(tags))
    assert any(tag.startswith("ground_truth_images/training_images/image") and kind == "image"
               for tag, kind in tags.items()), sorted(tags)
