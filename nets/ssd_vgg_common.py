"""Pieces shared by SSD300 and SSD512: the reduced VGG-16 base, the extra blocks, the box heads,
and the feature-map shapes computed from the input size.

Layer names are SSD-Tensorflow's, so its checkpoints load without renaming:
``conv1/conv1_1`` ... ``conv5/conv5_3``, ``conv6`` (3x3, dilation 6, 1024), ``conv7`` (1x1, 1024),
``block8/conv1x1``, ``block8/conv3x3``, ..., ``block4_box/L2Normalization/gamma``,
``<block>_box/conv_loc``, ``<block>_box/conv_cls``. Convolutions are
:func:`nets.custom_layers.conv2d` (slim.conv2d's variables and collections, built faster).

Input sizes: any size of at least 1x1 builds, and every feature layer is at least 1x1. The last
extra blocks shrink their map with VALID convolutions (SSD300's block10/block11: 3x3 without
padding; SSD512's block12: 4x4 after padding 1). From 257 px up (both networks) the maps are large
enough and the graph is exactly the reference one; below that, a block whose input map is too
small for its VALID convolution uses SAME padding instead (no explicit pad), so its map stays
at least 1x1 and its variables keep their shapes. Tests use 64x64 (SSD300: 390 anchors).
"""

import collections

import tensorflow as tf

from nets import anchors as anchors_lib
from nets import custom_layers
from tf_compat import slim

ExtraBlock = collections.namedtuple("ExtraBlock", ["name", "bottleneck", "channels", "kernel", "stride", "pad"])
ExtraBlock.__doc__ = """conv1x1 to ``bottleneck`` channels, then a ``kernel`` conv (``conv{k}x{k}``) to ``channels``
with ``stride``, after zero padding ``pad`` on each side (VALID)."""

# VGG-16 blocks: (scope, number of convs, channels).
VGG16_BLOCKS = (("conv1", 2, 64), ("conv2", 2, 128), ("conv3", 3, 256), ("conv4", 3, 512), ("conv5", 3, 512))


def vgg16_base_scopes(model_scope):
    """The variable scopes of the VGG-16 base (conv1 .. conv5) of an SSD built under ``model_scope``."""
    return [f"{model_scope}/{block}" for block, _, _ in VGG16_BLOCKS]


def _same_size(size, stride):
    return -(-size // stride)


def extra_block_keeps_valid(size, block):
    """Whether a map of ``size`` is large enough for the block's padded VALID convolution."""
    return size + 2 * block.pad >= block.kernel


def _extra_block_shape(shape, block):
    """Output (H, W) of an extra block; VALID (after its pad) only when both sides are large enough."""
    if all(extra_block_keeps_valid(size, block) for size in shape):
        return tuple((size + 2 * block.pad - block.kernel) // block.stride + 1 for size in shape)
    return tuple(_same_size(size, block.stride) for size in shape)


def feature_shapes(img_shape, extra_blocks, feat_layers):
    """(H, W) of each feature layer for an input of ``img_shape`` (height, width), as the graph builds it."""
    height, width = int(img_shape[0]), int(img_shape[1])
    if height < 1 or width < 1:
        raise ValueError(f"img_shape must be positive, got {img_shape!r}")
    sizes = {}
    h, w = height, width
    for _ in range(3):
        h, w = _same_size(h, 2), _same_size(w, 2)
    sizes["block4"] = (h, w)
    h, w = _same_size(h, 2), _same_size(w, 2)
    sizes["block7"] = (h, w)
    for block in extra_blocks:
        h, w = _extra_block_shape((h, w), block)
        sizes[block.name] = (h, w)
    missing = [name for name in feat_layers if name not in sizes]
    if missing:
        raise ValueError(f"unknown feature layers {missing}; known: {sorted(sizes)}")
    return [sizes[name] for name in feat_layers]


def _spatial(net, data_format):
    shape = net.shape.as_list()
    return shape[1:3] if data_format == "NHWC" else shape[2:4]


def vgg_base(inputs, end_points, is_training, dropout_keep_prob, dropout_seed=None):
    """VGG-16 conv1..conv5, pool5 3x3/1, conv6 (dilated), conv7; fills end_points block1..block7."""
    net = inputs
    for index, (scope, repeats, channels) in enumerate(VGG16_BLOCKS, start=1):
        net = slim.repeat(net, repeats, custom_layers.conv2d, channels, [3, 3], scope=scope)
        end_points[f"block{index}"] = net
        if index < len(VGG16_BLOCKS):
            net = custom_layers.max_pool2d(net, [2, 2], scope=f"pool{index}")
    net = custom_layers.max_pool2d(net, [3, 3], stride=1, scope="pool5")
    net = custom_layers.conv2d(net, 1024, [3, 3], rate=6, scope="conv6")
    end_points["block6"] = net
    net = _dropout(net, dropout_keep_prob, is_training, dropout_seed, "dropout6")
    net = custom_layers.conv2d(net, 1024, [1, 1], scope="conv7")
    end_points["block7"] = net
    net = _dropout(net, dropout_keep_prob, is_training, dropout_seed, "dropout7")
    return net


def _dropout(net, keep_prob, is_training, seed, scope):
    if keep_prob >= 1.0:
        return net
    seed = None if seed is None else seed + (6 if scope == "dropout6" else 7)
    with tf.name_scope(scope):
        return slim.utils.smart_cond(
            is_training, lambda: tf.nn.dropout(net, rate=1.0 - keep_prob, seed=seed), lambda: tf.identity(net)
        )


def extra_blocks(net, blocks, end_points, data_format):
    for block in blocks:
        with tf.compat.v1.variable_scope(block.name):
            net = custom_layers.conv2d(net, block.bottleneck, [1, 1], scope="conv1x1")
            conv_scope = f"conv{block.kernel}x{block.kernel}"
            if all(extra_block_keeps_valid(size, block) for size in _spatial(net, data_format)):
                if block.pad:
                    net = custom_layers.pad2d(net, pad=(block.pad, block.pad))
                padding = "VALID"
            else:
                padding = "SAME"
            net = custom_layers.conv2d(
                net, block.channels, [block.kernel] * 2, stride=block.stride, padding=padding, scope=conv_scope
            )
        end_points[block.name] = net
    return net


def multibox_head(inputs, num_classes, sizes, ratios, normalization):
    """Class logits [B, H, W, K, num_classes] and offsets [B, H, W, K, 4] of one feature layer."""
    net = inputs
    if normalization > 0:
        net = custom_layers.l2_normalization(
            net, scaling=True, scale_initializer=tf.compat.v1.constant_initializer(float(normalization))
        )
    num_anchors = anchors_lib.num_anchors_per_cell(sizes, ratios)
    loc = custom_layers.conv2d(net, num_anchors * 4, [3, 3], activation_fn=None, scope="conv_loc")
    loc = custom_layers.channel_to_last(loc)
    cls = custom_layers.conv2d(net, num_anchors * num_classes, [3, 3], activation_fn=None, scope="conv_cls")
    cls = custom_layers.channel_to_last(cls)
    height, width = loc.shape.as_list()[1:3]
    batch = tf.shape(loc)[0]
    loc = tf.reshape(loc, [batch, height, width, num_anchors, 4])
    cls = tf.reshape(cls, [batch, height, width, num_anchors, num_classes])
    return cls, loc


def ssd_vgg_net(
    inputs,
    params,
    blocks,
    default_scope,
    is_training=True,
    dropout_keep_prob=0.5,
    prediction_fn=slim.softmax,
    reuse=None,
    scope=None,
    data_format="NHWC",
    dropout_seed=None,
):
    """(predictions, localisations, logits, end_points), per-layer lists, for an SSD on VGG-16.

    Call it inside the network's arg scope. ``inputs`` [B, H, W, 3] (NHWC) or [B, 3, H, W]
    (NCHW, GPU only) must have the static spatial size ``params.img_shape``.
    """
    spatial = _spatial(inputs, data_format)
    if list(spatial) != list(params.img_shape):
        raise ValueError(
            f"inputs have spatial shape {spatial} ({data_format}) but the network was built for img_shape "
            f"{tuple(params.img_shape)}; build it with get_network(..., img_shape=...)"
        )
    end_points = {}
    # A fixed scope name (not a uniquified default) lets towers share variables with reuse=True.
    variable_scope = tf.compat.v1.variable_scope(scope or default_scope, values=[inputs], reuse=reuse)
    with _data_format_scope(data_format), variable_scope:
        net = vgg_base(inputs, end_points, is_training, dropout_keep_prob, dropout_seed)
        extra_blocks(net, blocks, end_points, data_format)
        predictions, localisations, logits = [], [], []
        for index, layer in enumerate(params.feat_layers):
            actual = _spatial(end_points[layer], data_format)
            if list(actual) != list(params.feat_shapes[index]):
                raise ValueError(
                    f"feature layer {layer} is {actual} but params.feat_shapes[{index}] is {params.feat_shapes[index]}"
                )
            with tf.compat.v1.variable_scope(layer + "_box"):
                cls, loc = multibox_head(
                    end_points[layer],
                    params.num_classes,
                    params.anchor_sizes[index],
                    params.anchor_ratios[index],
                    params.normalizations[index],
                )
            predictions.append(prediction_fn(cls))
            logits.append(cls)
            localisations.append(loc)
        return predictions, localisations, logits, end_points


def _data_format_scope(data_format):
    layers = [custom_layers.conv2d, custom_layers.max_pool2d, custom_layers.pad2d, custom_layers.l2_normalization]
    return slim.arg_scope(layers + [custom_layers.channel_to_last], data_format=data_format)


def ssd_arg_scope(weight_decay=0.0005, data_format="NHWC"):
    """Weight decay on conv weights, Xavier init, ReLU, SAME padding, the data format everywhere."""
    with slim.arg_scope(
        [custom_layers.conv2d, slim.conv2d, slim.fully_connected],
        activation_fn=tf.nn.relu,
        weights_regularizer=slim.l2_regularizer(weight_decay),
        weights_initializer=tf.compat.v1.glorot_uniform_initializer(),
        biases_initializer=tf.compat.v1.zeros_initializer(),
    ):
        convs_and_pools = [custom_layers.conv2d, custom_layers.max_pool2d, slim.conv2d, slim.max_pool2d]
        with slim.arg_scope(convs_and_pools, padding="SAME", data_format=data_format):
            with slim.arg_scope(
                [custom_layers.pad2d, custom_layers.l2_normalization, custom_layers.channel_to_last],
                data_format=data_format,
            ) as scope:
                return scope
