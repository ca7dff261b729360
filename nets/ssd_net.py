"""SSDNet: one class for every SSD variant (SSD-Tensorflow's interface), parameters as a namedtuple.

An :class:`SSDNet` couples an architecture (``ssd_vgg_300.ARCHITECTURE``,
``ssd_vgg_512.ARCHITECTURE``) with its :class:`SSDParams`; it builds the network, its arg
scope, its anchors (numpy, computed once), target encoding, the multibox loss and the
post-processing, all consistent with each other.
"""

import collections

import numpy as np
import tensorflow as tf

from nets import anchors as anchors_lib
from nets import box_coding, custom_layers, matching, multibox_loss, post_processing, ssd_vgg_common

SSDParams = collections.namedtuple(
    "SSDParams",
    [
        "img_shape",
        "num_classes",
        "feat_layers",
        "feat_shapes",
        "anchor_sizes",
        "anchor_ratios",
        "anchor_steps",
        "anchor_offset",
        "normalizations",
        "prior_scaling",
    ],
)
SSDParams.__doc__ = """SSD hyper-parameters. ``img_shape`` (height, width) in pixels; ``num_classes`` includes
background (class 0); per feature layer: ``feat_shapes`` (H, W), ``anchor_sizes`` (1-2 sizes in
pixels), ``anchor_ratios``, ``anchor_steps`` (pixels, number or (y, x) pair), ``normalizations``
(> 0: L2 normalisation with that initial scale; -1: none)."""

Architecture = collections.namedtuple(
    "Architecture",
    [
        "name",
        "reference_img_shape",
        "extra_blocks",
        "feat_layers",
        "anchor_sizes",
        "anchor_ratios",
        "reference_anchor_steps",
        "normalizations",
    ],
)
Architecture.__doc__ = """A network family: its scope name, the input size its anchor sizes are given for, its extra
blocks (``ssd_vgg_common.ExtraBlock``), feature layers and per-layer anchor sizes, ratios, steps (at the
reference size) and normalisations."""

PARAM_NAMES = frozenset(SSDParams._fields)

# The paper's anchor shapes: a layer with 4 anchors per cell adds boxes of ratio 2 and 1/2 to its
# two squares, one with 6 also 3 and 1/3.
RATIOS_BY_ANCHORS_PER_CELL = {4: (2, 0.5), 6: (2, 0.5, 3, 1.0 / 3)}


def vgg16_architecture(name, img_size, extra_blocks, anchor_sizes, anchors_per_cell, anchor_steps):
    """An :class:`Architecture` on VGG-16 laid out as SSD300 and SSD512 are (docs/design.md, "The network").

    The feature layers are conv4_3 (``block4``, L2-normalised with a scale initialised to
    :data:`nets.custom_layers.L2_NORMALIZATION_SCALE`), conv7 (``block7``) and every extra block,
    in that order; per feature layer ``anchor_sizes`` (pixels at ``img_size`` x ``img_size``),
    ``anchors_per_cell`` (4 or 6, see :data:`RATIOS_BY_ANCHORS_PER_CELL`) and ``anchor_steps``.
    """
    feat_layers = ("block4", "block7") + tuple(block.name for block in extra_blocks)
    if not len(feat_layers) == len(anchor_sizes) == len(anchors_per_cell) == len(anchor_steps):
        raise ValueError(f"{name}: anchor_sizes, anchors_per_cell and anchor_steps need one entry per feature "
                         f"layer {feat_layers}")
    return Architecture(
        name=name,
        reference_img_shape=(img_size, img_size),
        extra_blocks=tuple(extra_blocks),
        feat_layers=feat_layers,
        anchor_sizes=tuple(anchor_sizes),
        anchor_ratios=tuple(RATIOS_BY_ANCHORS_PER_CELL[count] for count in anchors_per_cell),
        reference_anchor_steps=tuple(anchor_steps),
        normalizations=(custom_layers.L2_NORMALIZATION_SCALE,) + (-1,) * (len(feat_layers) - 1),
    )


def uniform_steps(img_shape, feat_shapes):
    """Steps that tile the image evenly: image size / map size, a (y, x) pair where they differ."""
    steps = []
    for feat_h, feat_w in feat_shapes:
        step_y, step_x = img_shape[0] / feat_h, img_shape[1] / feat_w
        steps.append(step_y if step_y == step_x else (step_y, step_x))
    return steps


def default_params(architecture, img_shape=None, num_classes=21):
    """SSDParams for ``img_shape`` (default: the reference size).

    Feature shapes follow the input. Steps: the reference network's at its reference size
    (SSD300: 8, 16, 32, 64, 100, 300), otherwise image size / map size so every grid tiles the
    image (at 512 this gives SSD512's reference steps exactly). Anchor sizes scale with the
    shorter side relative to the reference size.
    """
    img_shape = tuple(int(v) for v in (img_shape or architecture.reference_img_shape))
    if len(img_shape) != 2:
        raise ValueError(f"img_shape must be (height, width), got {img_shape!r}")
    feat_shapes = ssd_vgg_common.feature_shapes(img_shape, architecture.extra_blocks, architecture.feat_layers)
    if img_shape == tuple(architecture.reference_img_shape):
        steps = list(architecture.reference_anchor_steps)
    else:
        steps = uniform_steps(img_shape, feat_shapes)
    scale = min(img_shape) / min(architecture.reference_img_shape)
    sizes = architecture.anchor_sizes
    if scale != 1.0:
        sizes = [tuple(size * scale for size in layer) for layer in sizes]
    return SSDParams(
        img_shape=img_shape,
        num_classes=int(num_classes),
        feat_layers=list(architecture.feat_layers),
        feat_shapes=feat_shapes,
        anchor_sizes=[tuple(layer) for layer in sizes],
        anchor_ratios=[list(layer) for layer in architecture.anchor_ratios],
        anchor_steps=steps,
        anchor_offset=0.5,
        normalizations=list(architecture.normalizations),
        prior_scaling=list(box_coding.PRIOR_SCALING),
    )


class SSDNet:
    """An SSD network with its anchors, targets, loss and post-processing."""

    def __init__(self, architecture, params=None):
        self.architecture = architecture
        self.params = params or default_params(architecture)
        if self.params.num_classes < 2:
            raise ValueError(f"num_classes counts background and must be >= 2, got {self.params.num_classes}")
        self._anchor_layers = None
        self._flat_anchors = None

    @property
    def name(self):
        return self.architecture.name

    # Network -----------------------------------------------------------------------------------
    def net(self, inputs, is_training=True, dropout_keep_prob=0.5, reuse=None, scope=None, data_format="NHWC",
            dropout_seed=None):
        """(predictions, localisations, logits, end_points): per feature layer, class probabilities
        and logits [B, H, W, K, num_classes] and box offsets [B, H, W, K, 4].

        ``dropout_keep_prob`` applies after conv6 and conv7 while training (1.0 switches it off;
        the paper's Caffe model has none). NCHW builds anywhere but runs on GPU only.
        """
        return ssd_vgg_common.ssd_vgg_net(
            inputs,
            self.params,
            self.architecture.extra_blocks,
            self.architecture.name,
            is_training=is_training,
            dropout_keep_prob=dropout_keep_prob,
            reuse=reuse,
            scope=scope,
            data_format=data_format,
            dropout_seed=dropout_seed,
        )

    def arg_scope(self, weight_decay=0.0005, data_format="NHWC"):
        return ssd_vgg_common.ssd_arg_scope(weight_decay, data_format)

    # Anchors -----------------------------------------------------------------------------------
    def anchors(self):
        """Per-layer :class:`nets.anchors.AnchorLayer` (numpy, computed once)."""
        if self._anchor_layers is None:
            p = self.params
            self._anchor_layers = anchors_lib.anchors_all_layers(
                p.img_shape, p.feat_shapes, p.anchor_sizes, p.anchor_ratios, p.anchor_steps, p.anchor_offset
            )
        return self._anchor_layers

    def flat_anchors(self):
        """[num_anchors, 4] float32 numpy, centre form ``(cy, cx, h, w)``, in flattened head order."""
        if self._flat_anchors is None:
            self._flat_anchors = anchors_lib.flatten_anchor_layers(self.anchors()).astype(np.float32)
            self._flat_anchors.setflags(write=False)
        return self._flat_anchors

    @property
    def num_anchors(self):
        return int(self.flat_anchors().shape[0])

    # Targets, loss, detections -----------------------------------------------------------------
    def bboxes_encode(self, labels, boxes, match_threshold=0.5, negative_threshold=None, scope=None):
        """:class:`nets.matching.Targets` flattened over anchors, for one image or a padded batch.
        See :func:`nets.matching.bboxes_encode`."""
        with tf.name_scope(scope or "ssd_bboxes_encode"):
            return matching.bboxes_encode(
                labels, boxes, self.flat_anchors(), match_threshold, negative_threshold, self.params.prior_scaling
            )

    def losses(self, logits, localisations, targets, negative_ratio=3.0, alpha=1.0, label_smoothing=0.0,
               normaliser=None, scope=None):
        """:class:`nets.multibox_loss.MultiboxLosses`; see :func:`nets.multibox_loss.multibox_loss`."""
        return multibox_loss.multibox_loss(
            logits, localisations, targets, negative_ratio=negative_ratio, alpha=alpha,
            label_smoothing=label_smoothing, normaliser=normaliser, scope=scope,
        )

    def detected_bboxes(self, predictions, localisations, select_threshold=0.01, nms_threshold=0.45, top_k=400,
                        keep_top_k=200, clip=True, scope=None):
        """:class:`nets.post_processing.Detections`; see :func:`nets.post_processing.detected_bboxes`."""
        return post_processing.detected_bboxes(
            predictions, localisations, self.flat_anchors(), select_threshold, nms_threshold, top_k, keep_top_k,
            clip, self.params.prior_scaling, scope,
        )

    def __repr__(self):
        return f"SSDNet({self.name}, img_shape={self.params.img_shape}, num_classes={self.params.num_classes})"

