"""Layers SSD needs beyond tf_slim's: learned L2 normalisation, explicit 2-D padding, channel moves."""

import tensorflow as tf

from tf_compat import slim, tf1

L2_NORMALIZATION_SCALE = 20.0


def _channel_axis(data_format):
    if data_format not in ("NHWC", "NCHW"):
        raise ValueError(f"data_format must be 'NHWC' or 'NCHW', got {data_format!r}")
    return -1 if data_format == "NHWC" else 1


@slim.add_arg_scope
def l2_normalization(
    inputs,
    scaling=True,
    scale_initializer=None,
    reuse=None,
    variables_collections=None,
    outputs_collections=None,
    data_format="NHWC",
    trainable=True,
    scope=None,
):
    """x / ||x||_channels, times a learned per-channel ``gamma`` (initialised to 20, as the SSD paper).

    The variable is ``<scope>/L2Normalization/gamma`` (SSD-Tensorflow's name). It is a model
    variable and gets no weight decay.
    """
    axis = _channel_axis(data_format)
    with tf1.variable_scope(scope, "L2Normalization", [inputs], reuse=reuse) as sc:
        # In float32 whatever the input's precision: a sum of 512 squares overflows float16, and bfloat16's
        # 8-bit mantissa would round the norm.
        outputs = tf.math.l2_normalize(tf.cast(inputs, tf.float32), axis=axis, epsilon=1e-12)
        outputs = tf.cast(outputs, inputs.dtype)
        if scaling:
            channels = inputs.shape[axis]
            initializer = scale_initializer or tf1.constant_initializer(L2_NORMALIZATION_SCALE)
            gamma = slim.model_variable(
                "gamma",
                shape=[channels],
                dtype=inputs.dtype.base_dtype,
                initializer=initializer,
                collections=slim.utils.get_variable_collections(variables_collections, "scale"),
                trainable=trainable,
            )
            if data_format == "NCHW":
                gamma = tf.reshape(gamma, [channels, 1, 1])
            outputs = outputs * gamma
        return slim.utils.collect_named_outputs(outputs_collections, sc.name, outputs)


@slim.add_arg_scope
def pad2d(inputs, pad=(0, 0), mode="CONSTANT", data_format="NHWC", scope=None):
    """Zero-pads the spatial dimensions by ``pad = (pad_h, pad_w)`` on each side."""
    with tf.name_scope(scope or "pad2d"):
        spatial = [[pad[0], pad[0]], [pad[1], pad[1]]]
        if _channel_axis(data_format) == -1:
            paddings = [[0, 0]] + spatial + [[0, 0]]
        else:
            paddings = [[0, 0], [0, 0]] + spatial
        return tf.pad(inputs, paddings, mode=mode)


@slim.add_arg_scope
def channel_to_last(inputs, data_format="NHWC", scope=None):
    """NCHW -> NHWC (identity for NHWC), so heads reshape the same way in both formats."""
    if _channel_axis(data_format) == -1:
        return inputs
    with tf.name_scope(scope or "channel_to_last"):
        return tf.transpose(inputs, [0, 2, 3, 1])


@slim.add_arg_scope
def conv2d(
    inputs,
    num_outputs,
    kernel_size,
    stride=1,
    padding="SAME",
    data_format="NHWC",
    rate=1,
    activation_fn=tf.nn.relu,
    weights_initializer=None,
    weights_regularizer=None,
    biases_initializer=tf1.zeros_initializer(),
    trainable=True,
    reuse=None,
    scope=None,
):
    """``slim.conv2d``'s behaviour and variable names (``<scope>/weights``, ``<scope>/biases``, model
    variables, regulariser in REGULARIZATION_LOSSES), without the Keras layer underneath, which
    makes building an SSD graph about twice as fast."""
    axis = _channel_axis(data_format)
    kernel = [kernel_size, kernel_size] if isinstance(kernel_size, int) else list(kernel_size)
    with tf1.variable_scope(scope, "Conv", [inputs], reuse=reuse):
        weights = slim.model_variable(
            "weights",
            shape=kernel + [inputs.shape[axis], num_outputs],
            dtype=inputs.dtype.base_dtype,
            initializer=weights_initializer or tf1.glorot_uniform_initializer(),
            regularizer=weights_regularizer,
            trainable=trainable,
        )
        outputs = tf.nn.convolution(
            inputs, weights, strides=stride, padding=padding, data_format=data_format, dilations=rate
        )
        if biases_initializer is not None:
            biases = slim.model_variable(
                "biases", shape=[num_outputs], dtype=inputs.dtype.base_dtype, initializer=biases_initializer,
                trainable=trainable,
            )
            outputs = tf.nn.bias_add(outputs, biases, data_format=data_format)
        if activation_fn is not None:
            outputs = activation_fn(outputs)
        return outputs


@slim.add_arg_scope
def max_pool2d(inputs, kernel_size, stride=2, padding="SAME", data_format="NHWC", scope=None):
    """``slim.max_pool2d`` without the Keras layer underneath."""
    _channel_axis(data_format)
    with tf.name_scope(scope or "MaxPool2D"):
        return tf.nn.max_pool2d(inputs, kernel_size, stride, padding, data_format=data_format)
