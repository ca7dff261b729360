"""Anchors: counts and exact values of the reference networks, order, tiny inputs."""

import numpy as np
import pytest

from nets import anchors as anchors_lib
from nets import nets_factory


def centers_to_corners(anchors):
    """``(cy, cx, h, w)`` -> ``(ymin, xmin, ymax, xmax)``, numpy, any leading shape (the tests' reference)."""
    cy, cx, h, w = np.moveaxis(np.asarray(anchors), -1, 0)
    return np.stack([cy - h / 2.0, cx - w / 2.0, cy + h / 2.0, cx + w / 2.0], axis=-1)


def _cell(net, layer_index, row, col):
    """The K anchors (cy, cx, h, w) of one cell, read from the flattened array."""
    params = net.params
    offset = 0
    for index, ((h, w), sizes, ratios) in enumerate(zip(params.feat_shapes, params.anchor_sizes, params.anchor_ratios)):
        k = len(sizes) + len(ratios)
        if index == layer_index:
            start = offset + (row * w + col) * k
            return net.flat_anchors()[start : start + k]
        offset += h * w * k
    raise IndexError(layer_index)


@pytest.mark.parametrize("name,count", [("ssd_300_vgg", 8732), ("ssd_512_vgg", 24564)])
def test_reference_anchor_counts(name, count):
    net = nets_factory.get_network(name)
    assert net.num_anchors == count
    assert net.flat_anchors().shape == (count, 4)
    assert net.flat_anchors().dtype == np.float32


def test_ssd300_feature_shapes_and_steps_are_the_reference():
    params = nets_factory.get_network("ssd_300_vgg").params
    assert params.feat_shapes == [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    assert params.anchor_steps == [8, 16, 32, 64, 100, 300]
    assert params.prior_scaling == [0.1, 0.1, 0.2, 0.2]
    assert params.anchor_offset == 0.5
    assert params.normalizations == [20, -1, -1, -1, -1, -1]


def test_ssd512_feature_shapes_and_steps_are_the_reference():
    params = nets_factory.get_network("ssd_512_vgg").params
    assert params.feat_shapes == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert params.anchor_steps == [8, 16, 32, 64, 128, 256, 512]


# (layer, row, col) -> expected (cy, cx) and the K (h, w) pairs, all relative. Values written out
# from the paper's formulas: centre (i + 0.5) * step / 300, sizes s_k, sqrt(s_k s_k+1), s_k / sqrt(r) x s_k sqrt(r).
SSD300_CELLS = [
    (0, 0, 0, (0.0133333, 0.0133333), [(0.07, 0.07), (0.1024695, 0.1024695), (0.0494975, 0.0989949),
                                       (0.0989949, 0.0494975)]),
    (0, 37, 37, (1.0, 1.0), [(0.07, 0.07), (0.1024695, 0.1024695), (0.0494975, 0.0989949), (0.0989949, 0.0494975)]),
    (1, 0, 3, (0.0266667, 0.1866667), [(0.15, 0.15), (0.2224860, 0.2224860), (0.1060660, 0.2121320),
                                         (0.2121320, 0.1060660), (0.0866025, 0.2598076), (0.2598076, 0.0866025)]),
    (2, 4, 9, (0.48, 1.0133333), [(0.33, 0.33), (0.4102438, 0.4102438), (0.2333452, 0.4666905),
                                  (0.4666905, 0.2333452), (0.1905256, 0.5715768), (0.5715768, 0.1905256)]),
    (3, 2, 2, (0.5333333, 0.5333333), [(0.51, 0.51), (0.5932116, 0.5932116), (0.3606245, 0.7212489),
                                         (0.7212489, 0.3606245), (0.2944486, 0.8833459), (0.8833459, 0.2944486)]),
    (4, 2, 1, (0.8333333, 0.5), [(0.69, 0.69), (0.7747903, 0.7747903), (0.4879037, 0.9758074), (0.9758074, 0.4879037)]),
    (5, 0, 0, (0.5, 0.5), [(0.87, 0.87), (0.9557719, 0.9557719), (0.6151829, 1.2303658), (1.2303658, 0.6151829)]),
]


@pytest.mark.parametrize("layer,row,col,centre,sizes", SSD300_CELLS)
def test_ssd300_anchor_values(layer, row, col, centre, sizes):
    cell = _cell(nets_factory.get_network("ssd_300_vgg"), layer, row, col)
    np.testing.assert_allclose(cell[:, 0], centre[0], atol=1e-6)
    np.testing.assert_allclose(cell[:, 1], centre[1], atol=1e-6)
    np.testing.assert_allclose(cell[:, 2:], np.array(sizes), atol=1e-6)


def test_ssd512_anchor_values_first_and_last_layer():
    net = nets_factory.get_network("ssd_512_vgg")
    first = _cell(net, 0, 63, 0)
    np.testing.assert_allclose(first[:, :2], [[0.9921875, 0.0078125]] * 4, atol=1e-6)
    np.testing.assert_allclose(first[:2, 2:], [[0.04, 0.04], [0.0632456, 0.0632456]], atol=1e-6)
    last = _cell(net, 6, 0, 0)
    np.testing.assert_allclose(last[:, :2], 0.5, atol=1e-6)
    np.testing.assert_allclose(last[:, 2:], [[0.9, 0.9], [0.9767292, 0.9767292], [0.6363961, 1.2727922],
                                            [1.2727922, 0.6363961]], atol=1e-6)


def test_flattened_order_is_layer_row_column_anchor():
    layers = anchors_lib.anchors_all_layers((64, 64), [(2, 3)], [(10.0, 20.0)], [[2.0]], [16], 0.5)
    flat = anchors_lib.flatten_anchor_layers(layers)
    assert flat.shape == (2 * 3 * 3, 4)
    # Second row, third column, third anchor (ratio 2).
    cy, cx, h, w = flat[(1 * 3 + 2) * 3 + 2]
    assert (cy, cx) == pytest.approx((1.5 * 16 / 64, 2.5 * 16 / 64))
    assert (h, w) == pytest.approx((10 / 64 / np.sqrt(2), 10 / 64 * np.sqrt(2)))


def test_non_square_step_pairs_and_mismatched_lengths():
    layer = anchors_lib.anchor_layer((100, 200), (2, 4), (10.0,), [], (50.0, 50.0))
    np.testing.assert_allclose(layer.y[:, 0, 0], [0.25, 0.75])
    np.testing.assert_allclose(layer.x[0, :, 0], [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_allclose([layer.h[0], layer.w[0]], [0.1, 0.05])
    with pytest.raises(ValueError, match="one entry per feature layer"):
        anchors_lib.anchors_all_layers((64, 64), [(2, 2)], [(1.0,), (2.0,)], [[]], [8])


@pytest.mark.parametrize("name", ["ssd_300_vgg", "ssd_512_vgg"])
@pytest.mark.parametrize("size", [32, 64, 96, 256, 257])
def test_tiny_inputs_keep_every_layer_and_tile_the_image(name, size):
    net = nets_factory.get_network(name, img_shape=(size, size))
    assert all(h >= 1 and w >= 1 for h, w in net.params.feat_shapes)
    anchors = net.flat_anchors()
    assert anchors.shape[0] == sum(
        h * w * (len(s) + len(r))
        for (h, w), s, r in zip(net.params.feat_shapes, net.params.anchor_sizes, net.params.anchor_ratios)
    )
    assert anchors[:, :2].min() > 0.0 and anchors[:, :2].max() < 1.0
    # Anchor sizes keep their relative size across input sizes.
    reference = nets_factory.get_network(name).params
    assert net.params.anchor_sizes[0][0] / size == pytest.approx(reference.anchor_sizes[0][0] / reference.img_shape[0])


def test_ssd300_at_64_pixels():
    params = nets_factory.get_network("ssd_300_vgg", img_shape=(64, 64)).params
    assert params.feat_shapes == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1), (1, 1)]
    assert params.anchor_steps == [8.0, 16.0, 32.0, 64.0, 64.0, 64.0]
