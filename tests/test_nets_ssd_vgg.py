"""SSD300 / SSD512 graphs: variable names and shapes (docs/design.md, "The network"), parameter counts,
tiny inputs, NCHW, outputs, gradients to every head."""

import numpy as np
import pytest
import tensorflow as tf

from nets import nets_factory, ssd_net
from test_nets_anchors import centers_to_corners
from tf_compat import slim, tf1

VGG16 = (("conv1", 2, 64), ("conv2", 2, 128), ("conv3", 3, 256), ("conv4", 3, 512), ("conv5", 3, 512))
# Extra blocks as docs/design.md tables them: (block, input channels, conv1x1 channels, kernel, output channels).
EXTRA_300 = [("block8", 1024, 256, 3, 512), ("block9", 512, 128, 3, 256), ("block10", 256, 128, 3, 256),
             ("block11", 256, 128, 3, 256)]
EXTRA_512 = EXTRA_300 + [("block12", 256, 128, 4, 256)]
EXTRA_512[3] = ("block11", 256, 128, 3, 256)
HEADS_300 = [("block4", 512, 4), ("block7", 1024, 6), ("block8", 512, 6), ("block9", 256, 6), ("block10", 256, 4),
             ("block11", 256, 4)]
HEADS_512 = [("block4", 512, 4), ("block7", 1024, 6), ("block8", 512, 6), ("block9", 256, 6), ("block10", 256, 6),
             ("block11", 256, 4), ("block12", 256, 4)]


def expected_variables(scope, extra, heads, num_classes):
    shapes = {}
    channels = 3
    for block, repeats, out in VGG16:
        for index in range(1, repeats + 1):
            shapes[f"{scope}/{block}/{block}_{index}/weights"] = (3, 3, channels, out)
            shapes[f"{scope}/{block}/{block}_{index}/biases"] = (out,)
            channels = out
    shapes[f"{scope}/conv6/weights"], shapes[f"{scope}/conv6/biases"] = (3, 3, 512, 1024), (1024,)
    shapes[f"{scope}/conv7/weights"], shapes[f"{scope}/conv7/biases"] = (1, 1, 1024, 1024), (1024,)
    for block, cin, mid, kernel, out in extra:
        shapes[f"{scope}/{block}/conv1x1/weights"], shapes[f"{scope}/{block}/conv1x1/biases"] = (1, 1, cin, mid), (mid,)
        conv = f"{scope}/{block}/conv{kernel}x{kernel}"
        shapes[f"{conv}/weights"], shapes[f"{conv}/biases"] = (kernel, kernel, mid, out), (out,)
    for block, cin, k in heads:
        box = f"{scope}/{block}_box"
        shapes[f"{box}/conv_loc/weights"], shapes[f"{box}/conv_loc/biases"] = (3, 3, cin, 4 * k), (4 * k,)
        shapes[f"{box}/conv_cls/weights"] = (3, 3, cin, num_classes * k)
        shapes[f"{box}/conv_cls/biases"] = (num_classes * k,)
    shapes[f"{scope}/block4_box/L2Normalization/gamma"] = (512,)
    return shapes


def _build(net, data_format="NHWC", batch=None, **kwargs):
    height, width = net.params.img_shape
    shape = [batch, height, width, 3] if data_format == "NHWC" else [batch, 3, height, width]
    inputs = tf1.placeholder(tf.float32, shape, name="images")
    with slim.arg_scope(net.arg_scope(data_format=data_format)):
        outputs = net.net(inputs, data_format=data_format, **kwargs)
    return inputs, outputs


@pytest.mark.parametrize(
    "name,extra,heads,num_classes,parameters",
    [("ssd_300_vgg", EXTRA_300, HEADS_300, 21, 26_285_486), ("ssd_512_vgg", EXTRA_512, HEADS_512, 21, 27_188_676),
     ("ssd_300_vgg", EXTRA_300, HEADS_300, 4, 24_013_232)],
)
def test_full_size_variables_and_parameter_counts(name, extra, heads, num_classes, parameters):
    net = nets_factory.get_network(name, num_classes=num_classes)
    with tf.Graph().as_default():
        _build(net)
        actual = {v.op.name: tuple(v.shape.as_list()) for v in tf1.global_variables()}
        trainable = sum(v.shape.num_elements() for v in tf1.trainable_variables())
        regularised = len(tf1.get_collection(tf1.GraphKeys.REGULARIZATION_LOSSES))
        model_variables = len(slim.get_model_variables())
    expected = expected_variables(name, extra, heads, num_classes)
    assert actual == expected
    assert trainable == sum(int(np.prod(s)) for s in expected.values()) == parameters
    assert regularised == sum(1 for n in expected if n.endswith("/weights"))  # weight decay on every conv, not gamma
    assert model_variables == len(expected)


@pytest.mark.parametrize("name, max_ops", [("ssd_300_vgg", 1300), ("ssd_512_vgg", 1450)])
def test_tiny_input_builds_a_graph_no_larger_than_the_reference(name, max_ops):
    """A 64x64 input builds no more ops than the reference size, and the number of ops (the work of
    graph building, whatever the machine's speed) stays within a bound."""
    sizes = {}
    for img_shape in [(64, 64), None]:
        net = nets_factory.get_network(name, img_shape=img_shape)
        with tf.Graph().as_default() as graph:
            _, (predictions, _, _, _) = _build(net)
            sizes[img_shape] = len(graph.get_operations())
        assert [tuple(p.shape.as_list()[1:3]) for p in predictions] == net.params.feat_shapes
    assert sizes[(64, 64)] <= sizes[None] <= max_ops, sizes


def test_vgg16_architecture_needs_one_anchor_entry_per_feature_layer():
    with pytest.raises(ValueError, match=r"one entry per feature layer \('block4', 'block7'\)"):
        ssd_net.vgg16_architecture("ssd", 300, extra_blocks=(), anchor_sizes=((21.0, 45.0),), anchors_per_cell=(4, 6),
                                   anchor_steps=(8, 16))


def test_forward_pass_shapes_probabilities_and_dropout():
    net = nets_factory.get_network("ssd_300_vgg", img_shape=(64, 64), num_classes=5)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    with tf.Graph().as_default():
        tf1.set_random_seed(1)
        is_training = tf1.placeholder(tf.bool, [])
        inputs, (predictions, localisations, logits, end_points) = _build(net, is_training=is_training, dropout_seed=3)
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            train = sess.run([predictions, localisations, end_points["block6"], end_points["block7"]],
                             {inputs: images, is_training: True})
            infer = sess.run([predictions, localisations, end_points["block6"], end_points["block7"]],
                             {inputs: images, is_training: False})
            infer_again = sess.run(predictions, {inputs: images, is_training: False})
    for layer, ((h, w), sizes, ratios) in enumerate(
        zip(net.params.feat_shapes, net.params.anchor_sizes, net.params.anchor_ratios)
    ):
        k = len(sizes) + len(ratios)
        assert infer[0][layer].shape == (2, h, w, k, 5)
        assert infer[1][layer].shape == (2, h, w, k, 4)
        np.testing.assert_allclose(infer[0][layer].sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(train[2], infer[2])  # conv6's output is taken before its dropout
    assert not np.allclose(train[3], infer[3])  # dropout after conv6 changes conv7 while training
    for a, b in zip(infer[0], infer_again):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["ssd_300_vgg", "ssd_512_vgg"])
def test_nchw_graph_builds_with_the_same_variables_and_shapes(name):
    net = nets_factory.get_network(name, img_shape=(96, 96))
    with tf.Graph().as_default():
        _, (_, nhwc_loc, nhwc_logits, _) = _build(net, batch=2)
        nhwc_vars = {v.op.name: v.shape.as_list() for v in tf1.global_variables()}
    with tf.Graph().as_default():
        _, (_, nchw_loc, nchw_logits, end_points) = _build(net, data_format="NCHW", batch=2)
        nchw_vars = {v.op.name: v.shape.as_list() for v in tf1.global_variables()}
        assert end_points["block4"].shape.as_list()[1] == 512  # channels first inside the network
    assert nchw_vars == nhwc_vars
    assert [t.shape.as_list() for t in nchw_loc] == [t.shape.as_list() for t in nhwc_loc]
    assert [t.shape.as_list() for t in nchw_logits] == [t.shape.as_list() for t in nhwc_logits]


def test_gradients_reach_every_head():
    net = nets_factory.get_network("ssd_300_vgg", img_shape=(64, 64), num_classes=3)
    # One ground-truth box equal to the first anchor of a cell in every feature layer: each layer gets a positive.
    layer_anchors = net.anchors()
    boxes = []
    for layer in layer_anchors:
        h, w = layer.y.shape[:2]
        cy, cx = layer.y[h // 2, w // 2, 0], layer.x[h // 2, w // 2, 0]
        boxes.append(centers_to_corners(np.array([cy, cx, layer.h[0], layer.w[0]])))
    boxes = np.clip(np.array(boxes, np.float32), 0, 1)
    labels = np.array([1, 2, 1, 2, 1, 2])
    images = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    with tf.Graph().as_default():
        tf1.set_random_seed(0)
        inputs, (predictions, localisations, logits, _) = _build(net, dropout_keep_prob=1.0)
        targets = net.bboxes_encode(np.stack([labels, labels]), np.stack([boxes, boxes]))
        gclasses = targets.classes
        losses = net.losses(logits, localisations, targets)
        variables = tf1.trainable_variables()
        grads = tf.gradients(tf.add_n(list(losses)), variables)
        assert all(g is not None for g in grads)
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            loss_values, grad_values, gclasses_np = sess.run([losses, grads, gclasses], {inputs: images})
    assert all(np.isfinite(v) and v > 0 for v in loss_values)
    start = 0
    for (h, w), sizes, ratios in zip(net.params.feat_shapes, net.params.anchor_sizes, net.params.anchor_ratios):
        count = h * w * (len(sizes) + len(ratios))
        assert (gclasses_np[:, start : start + count] > 0).any()
        start += count
    by_name = {v.op.name: g for v, g in zip(variables, grad_values)}
    for layer in net.params.feat_layers:
        for head in ("conv_loc", "conv_cls"):
            grad = by_name[f"ssd_300_vgg/{layer}_box/{head}/weights"]
            assert np.isfinite(grad).all() and np.abs(grad).sum() > 0, f"no gradient reaches {layer}_box/{head}"
    assert np.abs(by_name["ssd_300_vgg/block4_box/L2Normalization/gamma"]).sum() > 0
    assert np.abs(by_name["ssd_300_vgg/conv1/conv1_1/weights"]).sum() > 0


def test_wrong_input_size_and_unknown_names_raise():
    net = nets_factory.get_network("ssd_300_vgg", img_shape=(64, 64))
    with tf.Graph().as_default(), pytest.raises(ValueError, match="img_shape"):
        with slim.arg_scope(net.arg_scope()):
            net.net(tf1.placeholder(tf.float32, [1, 96, 96, 3]))
    with pytest.raises(ValueError, match="unknown network"):
        nets_factory.get_network("ssd_600_resnet")
    with pytest.raises(ValueError, match="unknown SSD parameters"):
        nets_factory.get_network("ssd_300_vgg", num_class=3)
    with pytest.raises(ValueError, match="num_classes"):
        nets_factory.get_network("ssd_300_vgg", num_classes=1)
    assert nets_factory.list_networks() == ["ssd_300_vgg", "ssd_512_vgg"]


def test_feat_shapes_override_is_checked_against_the_graph():
    net = nets_factory.get_network("ssd_300_vgg", img_shape=(64, 64), feat_shapes=[(8, 8), (4, 4), (2, 2), (1, 1),
                                                                                    (1, 1), (2, 2)])
    with tf.Graph().as_default(), pytest.raises(ValueError, match="block11"):
        _build(net)


def test_scope_and_reuse_share_variables():
    net = nets_factory.get_network("ssd_300_vgg", img_shape=(64, 64))
    with tf.Graph().as_default():
        inputs = tf1.placeholder(tf.float32, [None, 64, 64, 3])
        with slim.arg_scope(net.arg_scope()):
            net.net(inputs)
            count = len(tf1.global_variables())
            net.net(inputs, reuse=True, is_training=False)
        assert len(tf1.global_variables()) == count


@pytest.mark.parametrize("name", ["ssd_300_vgg", "ssd_512_vgg"])
@pytest.mark.parametrize("img_shape", [(33, 33), (256, 256), (257, 257), (200, 320)])
def test_graph_feature_maps_match_the_computed_shapes(name, img_shape):
    net = nets_factory.get_network(name, img_shape=img_shape)
    with tf.Graph().as_default():
        _, (predictions, _, _, end_points) = _build(net)  # raises if a feature map differs from params
        valid_convs = [op for op in tf1.get_default_graph().get_operations()
                       if op.type == "Conv2D" and op.get_attr("padding") == b"VALID" and "/block" in op.name]
    assert [tuple(p.shape.as_list()[1:3]) for p in predictions] == net.params.feat_shapes
    # Every extra block keeps its reference VALID convolution from 257 px up; below, some fall back to SAME.
    reference_count = 4 if name == "ssd_300_vgg" else 5
    if min(img_shape) >= 257:
        assert len(valid_convs) == reference_count
    else:
        assert len(valid_convs) < reference_count
