"""VGG-16 ImageNet checkpoint -> SSD base: fc6/fc7 reduction, the start-up hook, ImageNet detection."""

import numpy as np
import pytest
import tensorflow as tf

from deployment import checkpoint_init
from nets import nets_factory, vgg_checkpoint
from tf_compat import slim, tf1


def test_fc6_reduction_keeps_every_third_tap_and_fourth_channel():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(7, 7, 3, 4096)).astype(np.float32)  # 3 input channels instead of 512: same rule
    conv_w = vgg_checkpoint.reduce_fc6_weights(weights)
    assert conv_w.shape == (3, 3, 3, 1024)
    for i, j, c, o in [(0, 0, 0, 0), (1, 2, 1, 5), (2, 2, 2, 1023)]:
        assert conv_w[i, j, c, o] == weights[3 * i, 3 * j, c, 4 * o]
    with pytest.raises(ValueError, match=r"fc6 weights must be \[7, 7, C, 4096\]"):
        vgg_checkpoint.reduce_fc6_weights(weights[:3])


def test_fc7_and_bias_reduction_keep_every_fourth_channel():
    weights = np.arange(4096 * 4096, dtype=np.float32).reshape(1, 1, 4096, 4096)
    conv_w = vgg_checkpoint.reduce_fc7_weights(weights)
    assert conv_w.shape == (1, 1, 1024, 1024)
    assert conv_w[0, 0, 3, 9] == weights[0, 0, 12, 36]
    biases = np.arange(4096, dtype=np.float32)
    np.testing.assert_array_equal(vgg_checkpoint.reduce_fc_biases(biases), np.arange(0, 4096, 4))
    with pytest.raises(ValueError, match="fc biases"):
        vgg_checkpoint.reduce_fc_biases(biases[:100])


class _FakeReader:
    """A checkpoint reader over numpy arrays (the real fc6 alone would be a 400 MB file)."""

    def __init__(self, tensors):
        self.tensors = tensors

    def get_variable_to_shape_map(self):
        return {name: list(value.shape) for name, value in self.tensors.items()}

    def get_tensor(self, name):
        return self.tensors[name]


def test_derive_hook_reduces_fc6_fc7_and_ignores_everything_else():
    fc6 = np.zeros((7, 7, 512, 4096), np.float32)
    fc6[3, 6, 10, 8] = 1.5  # kept: taps 0/3/6, channel 8 = 4 * 2
    fc6[4, 6, 10, 8] = 9.0  # dropped: tap 4
    fc6[3, 6, 10, 9] = 9.0  # dropped: channel 9
    fc7 = np.zeros((1, 1, 4096, 4096), np.float32)
    fc7[0, 0, 4, 12] = 2.5
    biases = np.arange(4096, dtype=np.float32)
    reader = _FakeReader({"vgg_16/fc6/weights": fc6, "vgg_16/fc6/biases": biases, "vgg_16/fc7/weights": fc7})
    conv6, source = vgg_checkpoint.derive_reduced_fc("vgg_16/conv6/weights", reader)
    assert conv6.shape == (3, 3, 512, 1024) and conv6.sum() == 1.5 and conv6[1, 2, 10, 2] == 1.5
    assert source == "vgg_16/fc6/weights reduced to [3, 3, 512, 1024]"
    bias, _ = vgg_checkpoint.derive_reduced_fc("vgg_16/conv6/biases", reader)
    np.testing.assert_array_equal(bias, np.arange(0, 4096, 4))
    conv7, _ = vgg_checkpoint.derive_reduced_fc("vgg_16/conv7/weights", reader)
    assert conv7.shape == (1, 1, 1024, 1024) and conv7[0, 0, 1, 3] == 2.5
    assert vgg_checkpoint.derive_reduced_fc("vgg_16/conv7/biases", reader) is None  # no fc7 biases here
    assert vgg_checkpoint.derive_reduced_fc("vgg_16/block8/conv1x1/weights", reader) is None
    assert vgg_checkpoint.derive_reduced_fc("conv6", reader) is None


def test_imagenet_vgg16_is_a_backbone_not_an_ssd():
    backbone = ["vgg_16/conv1/conv1_1/weights", "vgg_16/fc6/weights"]
    assert vgg_checkpoint.is_imagenet_vgg16(backbone)
    assert not vgg_checkpoint.is_imagenet_vgg16(backbone + ["vgg_16/block4_box/conv_cls/weights"])
    assert not vgg_checkpoint.is_imagenet_vgg16(["ssd_300_vgg/conv1/conv1_1/weights"])
    assert vgg_checkpoint.is_imagenet_vgg16(["ssd_300_vgg/conv1/conv1_1/weights"], "ssd_300_vgg")


def _build_tiny_ssd300():
    net = nets_factory.get_network("ssd_300_vgg", img_shape=(64, 64))
    with slim.arg_scope(net.arg_scope()):
        net.net(tf1.placeholder(tf.float32, [None, 64, 64, 3]))
    return net


@pytest.mark.shared_data
def test_shared_vgg16_checkpoint_restores_into_the_ssd300_base_without_fc(vgg16_checkpoint):
    reader = tf.train.load_checkpoint(vgg16_checkpoint)
    with tf.Graph().as_default():
        _build_tiny_ssd300()
        plan = checkpoint_init.plan_initialization(
            None, vgg16_checkpoint, checkpoint_model_scope="vgg_16", model_scope="ssd_300_vgg",
            derive_missing=vgg_checkpoint.derive_reduced_fc)
        init_fn = checkpoint_init.init_fn_from_plan(plan)
        model_vars = {v.op.name: v for v in tf1.global_variables()}
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            conv6_before = sess.run(model_vars["ssd_300_vgg/conv6/weights"])
            init_fn(sess)
            restored = sess.run({ckpt: model_vars[name] for name, ckpt in plan.restore})
            conv6_after = sess.run(model_vars["ssd_300_vgg/conv6/weights"])
    assert len(restored) == 26 and not plan.derived
    for ckpt_name, value in restored.items():
        np.testing.assert_array_equal(value, reader.get_tensor(ckpt_name))
    np.testing.assert_array_equal(conv6_before, conv6_after)  # no fc6 in the shared checkpoint
    assert vgg_checkpoint.is_imagenet_vgg16(reader.get_variable_to_shape_map())
