"""SSD default boxes (anchors): per-layer centres and sizes, computed once in numpy.

Coordinates are relative to the image, in [0, 1]. Per feature layer the anchors of one
cell come in SSD-Tensorflow's (and Caffe's PriorBox) order, which the box heads'
output channels follow, so published checkpoints keep their meaning:

1. a square of side ``sizes[0]``,
2. a square of side ``sqrt(sizes[0] * sizes[1])`` (when a second size is given),
3. one box per ratio ``r`` with height ``sizes[0] / sqrt(r)`` and width ``sizes[0] * sqrt(r)``.

Cell ``(i, j)`` of a layer with step ``s`` is centred at ``((i + offset) * s_y / H_img,
(j + offset) * s_x / W_img)``.
"""

import collections
import math

import numpy as np

AnchorLayer = collections.namedtuple("AnchorLayer", ["y", "x", "h", "w"])
AnchorLayer.__doc__ = """Anchors of one feature layer: centres ``y, x`` [H, W, 1], sizes ``h, w`` [K]."""


def _pair(value):
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"expected a number or a (y, x) pair, got {value!r}")
        return float(value[0]), float(value[1])
    return float(value), float(value)


def num_anchors_per_cell(sizes, ratios):
    return len(sizes) + len(ratios)


def anchor_layer(img_shape, feat_shape, sizes, ratios, step, offset=0.5, dtype=np.float32):
    """Anchors of one layer. ``sizes`` in pixels (1 or 2 values), ``step`` a number or (y, x) pair in pixels."""
    if not 1 <= len(sizes) <= 2:
        raise ValueError(f"anchor sizes must hold one or two values, got {sizes!r}")
    img_h, img_w = float(img_shape[0]), float(img_shape[1])
    step_y, step_x = _pair(step)
    y, x = np.mgrid[0 : feat_shape[0], 0 : feat_shape[1]]
    y = ((y.astype(np.float64) + offset) * step_y / img_h)[..., np.newaxis]
    x = ((x.astype(np.float64) + offset) * step_x / img_w)[..., np.newaxis]
    side = float(sizes[0])
    heights = [side / img_h]
    widths = [side / img_w]
    if len(sizes) > 1:
        geometric = math.sqrt(side * float(sizes[1]))
        heights.append(geometric / img_h)
        widths.append(geometric / img_w)
    for ratio in ratios:
        heights.append(side / img_h / math.sqrt(ratio))
        widths.append(side / img_w * math.sqrt(ratio))
    return AnchorLayer(y.astype(dtype), x.astype(dtype), np.array(heights, dtype), np.array(widths, dtype))


def anchors_all_layers(img_shape, feat_shapes, anchor_sizes, anchor_ratios, anchor_steps, offset=0.5, dtype=np.float32):
    """One :class:`AnchorLayer` per feature layer."""
    lengths = {len(feat_shapes), len(anchor_sizes), len(anchor_ratios), len(anchor_steps)}
    if len(lengths) != 1:
        raise ValueError(
            "feat_shapes, anchor_sizes, anchor_ratios and anchor_steps must have one entry per feature layer, "
            f"got lengths {len(feat_shapes)}, {len(anchor_sizes)}, {len(anchor_ratios)}, {len(anchor_steps)}"
        )
    return [
        anchor_layer(img_shape, shape, sizes, ratios, step, offset, dtype)
        for shape, sizes, ratios, step in zip(feat_shapes, anchor_sizes, anchor_ratios, anchor_steps)
    ]


def flatten_anchor_layers(layers):
    """[num_anchors, 4] centre form ``(cy, cx, h, w)``, ordered layer, row, column, anchor-in-cell.

    This is the order in which flattened head outputs ``[B, H, W, K, ...] -> [B, H*W*K, ...]``
    concatenated over layers come out.
    """
    flat = []
    for layer in layers:
        rows, cols = layer.y.shape[:2]
        k = layer.h.shape[0]
        cy = np.broadcast_to(layer.y, (rows, cols, k))
        cx = np.broadcast_to(layer.x, (rows, cols, k))
        h = np.broadcast_to(layer.h, (rows, cols, k))
        w = np.broadcast_to(layer.w, (rows, cols, k))
        flat.append(np.stack([cy, cx, h, w], axis=-1).reshape(-1, 4))
    return np.concatenate(flat, axis=0)
