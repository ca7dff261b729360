"""Network name -> SSDNet (parameters, anchors, targets, loss) and its network function.

:func:`get_network_fn` is TF-Slim's ``nets_factory.get_network_fn`` for SSD: the one way training,
evaluation, export and the checkpoint tools run the network, with its arg scope (weight decay, data
format) applied inside, so that no caller repeats it.
"""

import tensorflow as tf

from nets import ssd_net, ssd_vgg_300, ssd_vgg_512
from tf_compat import slim

_ARCHITECTURES = {
    ssd_vgg_300.NAME: ssd_vgg_300.ARCHITECTURE,
    ssd_vgg_512.NAME: ssd_vgg_512.ARCHITECTURE,
}


def list_networks():
    return sorted(_ARCHITECTURES)


def get_network(name, **overrides):
    """An :class:`nets.ssd_net.SSDNet` for ``name`` (see :func:`list_networks`).

    ``overrides`` are :class:`nets.ssd_net.SSDParams` fields. ``img_shape`` and
    ``num_classes`` rebuild the defaults for that input size (feature shapes, steps and anchor
    sizes follow); other fields replace the resulting values as given.
    """
    if name not in _ARCHITECTURES:
        raise ValueError(f"unknown network {name!r}; known: {', '.join(list_networks())}")
    unknown = set(overrides) - ssd_net.PARAM_NAMES
    if unknown:
        raise ValueError(f"unknown SSD parameters {sorted(unknown)}; known: {sorted(ssd_net.PARAM_NAMES)}")
    architecture = _ARCHITECTURES[name]
    params = ssd_net.default_params(
        architecture, overrides.pop("img_shape", None), overrides.pop("num_classes", 21)
    )
    return ssd_net.SSDNet(architecture, params._replace(**overrides))


def get_network_fn(name, num_classes, weight_decay=0.0, is_training=False, data_format="NHWC",
                   dropout_keep_prob=1.0, dropout_seed=None, **params):
    """``network_fn(images)`` for the network ``name`` with ``num_classes`` (background included).

    ``params`` are further :class:`nets.ssd_net.SSDParams` overrides (``img_shape``, ...). The function
    takes NHWC images [B, H, W, 3] (transposed here for ``data_format='NCHW'``) and returns
    ``(predictions, localisations, logits, end_points)``; ``network_fn.net`` is the
    :class:`nets.ssd_net.SSDNet` (anchors, targets, loss, post-processing) and
    ``network_fn.default_image_size`` its input height.
    """
    net = get_network(name, num_classes=num_classes, **params)
    return network_fn_of(net, weight_decay=weight_decay, is_training=is_training, data_format=data_format,
                         dropout_keep_prob=dropout_keep_prob, dropout_seed=dropout_seed)


def network_fn_of(net, weight_decay=0.0, is_training=False, data_format="NHWC", dropout_keep_prob=1.0,
                  dropout_seed=None):
    """:func:`get_network_fn` for an :class:`nets.ssd_net.SSDNet` already built (e.g. from a training record)."""

    def network_fn(images):
        inputs = tf.transpose(images, [0, 3, 1, 2]) if data_format == "NCHW" else images
        with slim.arg_scope(net.arg_scope(weight_decay=weight_decay, data_format=data_format)):
            return net.net(inputs, is_training=is_training, dropout_keep_prob=dropout_keep_prob,
                           data_format=data_format, dropout_seed=dropout_seed)

    network_fn.net = net
    network_fn.default_image_size = net.params.img_shape[0]
    return network_fn


def parse_image_size(text):
    """'S', 'H,W' or 'HxW' -> (H, W); None/'' -> None."""
    if text is None or text == "":
        return None
    if isinstance(text, (tuple, list)):
        parts = [int(v) for v in text]
    else:
        parts = [int(p) for p in str(text).replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise ValueError(f"image size must be 'S' or 'H,W' with positive sizes, got {text!r}")
    return tuple(parts)
