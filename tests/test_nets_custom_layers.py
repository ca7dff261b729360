"""Custom layers: L2 normalisation with learned scale, padding, channel moves, slim-compatible conv/pool."""

import numpy as np
import pytest
import tensorflow as tf

from nets import custom_layers
from tf_compat import slim, tf1


def _run(fetches, feed=None):
    with tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        return sess.run(fetches, feed)


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
def test_l2_normalization_scale_starts_at_20(data_format):
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    with tf.Graph().as_default():
        with tf1.variable_scope("block4_box"):
            y = custom_layers.l2_normalization(tf.constant(x), data_format=data_format)
        gamma = slim.get_model_variables()[0]
        assert gamma.op.name == "block4_box/L2Normalization/gamma"
        channels = 5 if data_format == "NHWC" else 3
        assert gamma.shape.as_list() == [channels]
        out, gamma_np = _run([y, gamma])
    axis = -1 if data_format == "NHWC" else 1
    np.testing.assert_allclose(gamma_np, 20.0)
    np.testing.assert_allclose(out, 20.0 * x / np.linalg.norm(x, axis=axis, keepdims=True), rtol=1e-5)


def test_pad2d_and_channel_to_last():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    with tf.Graph().as_default():
        nhwc = custom_layers.pad2d(tf.constant(x), pad=(1, 2))
        nchw = custom_layers.pad2d(tf.constant(x.transpose(0, 3, 1, 2)), pad=(1, 2), data_format="NCHW")
        back = custom_layers.channel_to_last(nchw, data_format="NCHW")
        same = custom_layers.channel_to_last(nhwc)
        nhwc_np, back_np, same_np = _run([nhwc, back, same])
    np.testing.assert_array_equal(nhwc_np, np.pad(x, [[0, 0], [1, 1], [2, 2], [0, 0]]))
    np.testing.assert_array_equal(back_np, nhwc_np)
    np.testing.assert_array_equal(same_np, nhwc_np)
    with tf.Graph().as_default(), pytest.raises(ValueError, match="data_format"):
        custom_layers.pad2d(tf.constant(x), data_format="NWHC")


@pytest.mark.parametrize("kernel,stride,rate,padding", [(3, 1, 1, "SAME"), (3, 2, 1, "VALID"), (3, 1, 6, "SAME"),
                                                         (1, 1, 1, "SAME"), (4, 1, 1, "VALID")])
def test_conv2d_equals_slim_conv2d(kernel, stride, rate, padding):
    x = np.random.default_rng(1).normal(size=(2, 13, 13, 4)).astype(np.float32)
    with tf.Graph().as_default():
        tf1.set_random_seed(0)
        regularizer = slim.l2_regularizer(0.01)
        ours = custom_layers.conv2d(tf.constant(x), 6, [kernel, kernel], stride=stride, rate=rate, padding=padding,
                                    weights_regularizer=regularizer, scope="ours")
        theirs = slim.conv2d(tf.constant(x), 6, [kernel, kernel], stride=stride, rate=rate, padding=padding,
                             weights_regularizer=regularizer, scope="theirs")
        names = sorted(v.op.name for v in slim.get_model_variables())
        assert names == ["ours/biases", "ours/weights", "theirs/biases", "theirs/weights"]
        assert len(tf1.get_collection(tf1.GraphKeys.REGULARIZATION_LOSSES)) == 2
        copy = [tf1.assign(slim.get_variables_by_name(f"theirs/{k}")[0], slim.get_variables_by_name(f"ours/{k}")[0])
                for k in ("weights", "biases")]
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            sess.run(copy)
            ours_np, theirs_np = sess.run([ours, theirs])
    np.testing.assert_allclose(ours_np, theirs_np, rtol=1e-5, atol=1e-5)


def test_max_pool2d_equals_slim():
    x = np.random.default_rng(2).normal(size=(1, 7, 7, 3)).astype(np.float32)
    with tf.Graph().as_default():
        ours = custom_layers.max_pool2d(tf.constant(x), [3, 3], stride=1)
        theirs = slim.max_pool2d(tf.constant(x), [3, 3], stride=1, padding="SAME")
        ours_np, theirs_np = _run([ours, theirs])
    np.testing.assert_array_equal(ours_np, theirs_np)
