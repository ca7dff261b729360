"""VGG-16 ImageNet checkpoint -> SSD base: name map, fc6/fc7 subsampling, real restore."""

import numpy as np
import pytest
import tensorflow as tf

from nets import nets_factory, vgg_checkpoint
from tf_compat import slim, tf1


def test_name_map_covers_the_26_conv_variables():
    names = vgg_checkpoint.vgg16_conv_name_map("ssd_300_vgg")
    assert len(names) == 26
    assert names["vgg_16/conv1/conv1_1/weights"] == "ssd_300_vgg/conv1/conv1_1/weights"
    assert names["vgg_16/conv5/conv5_3/biases"] == "ssd_300_vgg/conv5/conv5_3/biases"
    assert vgg_checkpoint.vgg16_conv_name_map("ssd_512_vgg")["vgg_16/conv4/conv4_3/weights"] == (
        "ssd_512_vgg/conv4/conv4_3/weights"
    )


def test_fc6_subsampling_keeps_every_third_tap_and_fourth_channel():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(7, 7, 3, 4096)).astype(np.float32)  # 3 input channels instead of 512: same rule
    biases = rng.normal(size=(4096,)).astype(np.float32)
    conv_w, conv_b = vgg_checkpoint.subsample_fc6(weights, biases)
    assert conv_w.shape == (3, 3, 3, 1024) and conv_b.shape == (1024,)
    for i, j, c, o in [(0, 0, 0, 0), (1, 2, 1, 5), (2, 2, 2, 1023)]:
        assert conv_w[i, j, c, o] == weights[3 * i, 3 * j, c, 4 * o]
    np.testing.assert_array_equal(conv_b, biases[[4 * o for o in range(1024)]])
    with pytest.raises(ValueError, match="fc6"):
        vgg_checkpoint.subsample_fc6(weights[:3], biases)


def test_fc7_subsampling_keeps_every_fourth_channel():
    rng = np.random.default_rng(1)
    weights = np.arange(4096 * 4096, dtype=np.float32).reshape(1, 1, 4096, 4096)
    biases = rng.normal(size=(4096,)).astype(np.float32)
    conv_w, conv_b = vgg_checkpoint.subsample_fc7(weights, biases)
    assert conv_w.shape == (1, 1, 1024, 1024) and conv_b.shape == (1024,)
    assert conv_w[0, 0, 3, 9] == weights[0, 0, 12, 36]
    assert conv_b[10] == biases[40]


def _build_tiny_ssd300():
    net = nets_factory.get_network("ssd_300_vgg", img_shape=(64, 64))
    with slim.arg_scope(net.arg_scope()):
        net.net(tf1.placeholder(tf.float32, [None, 64, 64, 3]))


class _FakeReader:
    """A checkpoint reader over numpy arrays (the real fc6 alone would be a 400 MB file)."""

    def __init__(self, tensors):
        self.tensors = tensors

    def get_variable_to_shape_map(self):
        return {name: list(value.shape) for name, value in self.tensors.items()}

    def get_tensor(self, name):
        return self.tensors[name]


def test_fc_initial_values_from_a_reader():
    fc6 = np.zeros((7, 7, 512, 4096), np.float32)
    fc6[3, 6, 10, 8] = 1.5  # kept: taps 0/3/6, channel 8 = 4 * 2
    fc6[4, 6, 10, 8] = 9.0  # dropped: tap 4
    fc6[3, 6, 10, 9] = 9.0  # dropped: channel 9
    fc7 = np.zeros((1, 1, 4096, 4096), np.float32)
    fc7[0, 0, 4, 12] = 2.5
    biases = np.arange(4096, dtype=np.float32)
    reader = _FakeReader({"vgg_16/fc6/weights": fc6, "vgg_16/fc6/biases": biases, "vgg_16/fc7/weights": fc7,
                          "vgg_16/fc7/biases": biases})
    values = vgg_checkpoint.fc_initial_values(reader)
    assert sorted(values) == ["conv6/biases", "conv6/weights", "conv7/biases", "conv7/weights"]
    assert values["conv6/weights"].shape == (3, 3, 512, 1024) and values["conv6/weights"].sum() == 1.5
    assert values["conv6/weights"][1, 2, 10, 2] == 1.5
    assert values["conv7/weights"].shape == (1, 1, 1024, 1024) and values["conv7/weights"][0, 0, 1, 3] == 2.5
    np.testing.assert_array_equal(values["conv7/biases"], np.arange(0, 4096, 4))
    assert vgg_checkpoint.fc_initial_values(_FakeReader({"vgg_16/fc7/weights": fc7})) == {}


@pytest.mark.shared_data
def test_shared_vgg16_checkpoint_restores_into_the_ssd300_base(vgg16_checkpoint):
    reader = tf.train.load_checkpoint(vgg16_checkpoint)
    with tf.Graph().as_default():
        _build_tiny_ssd300()
        init_fn = vgg_checkpoint.vgg16_init_fn(vgg16_checkpoint, "ssd_300_vgg")
        names = vgg_checkpoint.vgg16_conv_name_map("ssd_300_vgg")
        model_vars = {v.op.name: v for v in tf1.global_variables()}
        conv6_before = None
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            conv6_before = sess.run(model_vars["ssd_300_vgg/conv6/weights"])
            init_fn(sess)
            restored = sess.run({ckpt: model_vars[model] for ckpt, model in names.items()})
            conv6_after = sess.run(model_vars["ssd_300_vgg/conv6/weights"])
    assert len(restored) == 26
    for ckpt_name, value in restored.items():
        np.testing.assert_array_equal(value, reader.get_tensor(ckpt_name))
    np.testing.assert_array_equal(conv6_before, conv6_after)  # no fc6 in the shared checkpoint


def test_missing_variables_raise_clear_errors(tmp_path):
    with tf.Graph().as_default():
        variable = tf1.Variable(np.zeros(3, np.float32), name="vgg_16/conv1/conv1_1/biases")
        with tf1.Session() as sess:
            sess.run(variable.initializer)
            path = tf1.train.Saver([variable]).save(sess, str(tmp_path / "partial.ckpt"))
    with tf.Graph().as_default():
        _build_tiny_ssd300()
        with pytest.raises(ValueError, match="vgg_16/conv1/conv1_1/weights"):
            vgg_checkpoint.vgg16_init_fn(path, "ssd_300_vgg")
