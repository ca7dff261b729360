"""Keras VGG-16 weights -> TF-Slim vgg_16 checkpoint: layouts, values, and Keras' own forward pass.

The weights files are written here with h5py in the layouts Keras 1 and Keras 2 used (the
downloadable ImageNet files are Keras 1 style), filled with random values of the real
shapes. Keras 3 itself, in a subprocess because the tests run TensorFlow with eager
execution disabled, loads them, computes the reference activations and writes its own
legacy ``.h5`` and ``.weights.h5`` files, which must convert to the same tensors.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import tensorflow as tf

from checkpoints import convert_keras_vgg16, keras_vgg16
from checkpoints.vgg16_imagenet_check import vgg16_conv_base
from tf_compat import tf1
from tf_slim.nets import vgg  # noqa: E402  TF-Slim's own vgg_16 (the layout promised), after tf_compat's fixes

CONV_NAMES = list(keras_vgg16.CONV_LAYERS)
NOTOP_IMAGE_SIZE = 64
# Layer names as the Keras VGG16 model (and its ImageNet files) list them, weightless ones included.
NOTOP_LAYER_ORDER = [
    name
    for block, convs in enumerate((2, 2, 3, 3, 3), start=1)
    for name in [f"block{block}_conv{index}" for index in range(1, convs + 1)] + [f"block{block}_pool"]
]


def _random_vgg16(seed, include_top):
    """{layer: (kernel, bias)} with the real shapes; He-scaled so activations stay finite."""
    rng = np.random.default_rng(seed)

    def layer(kernel_shape):
        fan_in = int(np.prod(kernel_shape[:-1]))
        kernel = rng.standard_normal(kernel_shape, dtype=np.float32)
        kernel *= np.float32(np.sqrt(2.0 / fan_in))
        bias = (5.0 * rng.standard_normal(kernel_shape[-1:])).astype(np.float32)
        return kernel, bias

    weights = {name: layer((3, 3, cin, cout)) for name, (_, cin, cout) in keras_vgg16.CONV_LAYERS.items()}
    if include_top:
        weights["fc1"] = layer((25088, 4096))
        weights["fc2"] = layer((4096, 4096))
        weights["predictions"] = layer((4096, 1000))
    return weights


def _write_legacy_h5(path, weights, naming, layer_order=None):
    """A legacy Keras weights file: root 'layer_names', per-layer 'weight_names' and datasets.

    naming "keras1": datasets 'block1_conv1_W_1:0' in the layer group (the downloadable files);
    naming "keras2": 'block1_conv1/kernel:0', i.e. a nested group per layer.
    """
    if layer_order is None:
        layer_order = ["input_1"] + NOTOP_LAYER_ORDER
        if "fc1" in weights:
            layer_order += ["flatten", "fc1", "fc2", "predictions"]
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = np.array([name.encode() for name in layer_order])
        handle.attrs["backend"] = b"tensorflow"
        handle.attrs["keras_version"] = b"2.2.4" if naming == "keras2" else b"1.2.2"
        for name in layer_order:
            group = handle.create_group(name)
            if name not in weights:
                group.attrs["weight_names"] = np.array([], dtype=np.float64)
                continue
            if naming == "keras1":
                weight_names = [f"{name}_W_1:0", f"{name}_b_1:0"]
            else:
                weight_names = [f"{name}/kernel:0", f"{name}/bias:0"]
            group.attrs["weight_names"] = np.array([weight_name.encode() for weight_name in weight_names])
            for weight_name, array in zip(weight_names, weights[name]):
                group.create_dataset(weight_name, data=array)


KERAS_REFERENCE_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import numpy as np
    import keras

    full_h5, notop_h5, work_dir = sys.argv[1:4]
    outputs = {}
    notop = keras.applications.VGG16(weights=None, include_top=False, input_shape=(%(size)d, %(size)d, 3))
    notop.load_weights(notop_h5)
    names = ["block1_conv1", "block5_conv3"]
    probe = keras.Model(notop.input, [notop.get_layer(name).output for name in names])
    for name, value in zip(names, probe.predict(np.load(os.path.join(work_dir, "small_bgr.npy")), verbose=0)):
        outputs["notop/" + name] = value
    notop.save(os.path.join(work_dir, "keras3_model.h5"))
    notop.save_weights(os.path.join(work_dir, "keras3.weights.h5"))
    del notop, probe

    full = keras.applications.VGG16(weights=None, include_top=True)
    full.load_weights(full_h5)
    names = ["block1_conv1", "block5_conv3", "fc1", "fc2", "predictions"]
    probe = keras.Model(full.input, [full.get_layer(name).output for name in names])
    for name, value in zip(names, probe.predict(np.load(os.path.join(work_dir, "image_bgr.npy")), verbose=0)):
        outputs["full/" + name] = value
    np.savez(os.path.join(work_dir, "keras_outputs.npz"), **outputs)
    """
) % {"size": NOTOP_IMAGE_SIZE}


def _centred_rgb_image(seed, size):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 255, (1, size, size, 3)) - np.asarray(keras_vgg16.RGB_MEANS)).astype(np.float32)


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """Random full (Keras 1 naming) and notop (Keras 2 naming) files, plus Keras 3's outputs on them."""
    if importlib.util.find_spec("keras") is None:
        pytest.skip("keras is not installed")
    work_dir = tmp_path_factory.mktemp("keras_vgg16")
    full_weights = _random_vgg16(seed=1, include_top=True)
    notop_weights = _random_vgg16(seed=2, include_top=False)
    full_h5 = work_dir / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    notop_h5 = work_dir / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    _write_legacy_h5(full_h5, full_weights, naming="keras1")
    _write_legacy_h5(notop_h5, notop_weights, naming="keras2")
    image_rgb = _centred_rgb_image(seed=3, size=224)
    small_rgb = _centred_rgb_image(seed=4, size=NOTOP_IMAGE_SIZE)
    # Keras' VGG-16 takes BGR (caffe preprocessing): the same pixels, channels reversed.
    np.save(work_dir / "image_bgr.npy", image_rgb[..., ::-1])
    np.save(work_dir / "small_bgr.npy", small_rgb[..., ::-1])
    script = work_dir / "keras_reference.py"
    script.write_text(KERAS_REFERENCE_SCRIPT)
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    result = subprocess.run([sys.executable, str(script), str(full_h5), str(notop_h5), str(work_dir)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(work_dir / "keras_outputs.npz") as outputs:
        keras_outputs = dict(outputs)
    return {
        "dir": work_dir,
        "full_h5": full_h5,
        "notop_h5": notop_h5,
        "full_weights": full_weights,
        "notop_weights": notop_weights,
        "image_rgb": image_rgb,
        "small_rgb": small_rgb,
        "keras": keras_outputs,
    }


@pytest.fixture(scope="module")
def full_checkpoint(keras_files):
    return keras_vgg16.convert(keras_files["full_h5"], keras_files["dir"] / "full" / "vgg_16.ckpt")


@pytest.fixture(scope="module")
def notop_checkpoint(keras_files):
    return keras_vgg16.convert(keras_files["notop_h5"], keras_files["dir"] / "notop" / "vgg_16.ckpt")


def _assert_close(ours, keras_value, what):
    scale = float(np.abs(keras_value).max())
    assert scale > 0, f"{what}: the Keras reference is all zeros, the comparison would prove nothing"
    np.testing.assert_allclose(ours, keras_value, rtol=1e-4, atol=1e-5 * scale, err_msg=what)


def _run_restored(checkpoint_path, build, image):
    with tf.Graph().as_default():
        images = tf1.placeholder(tf.float32, image.shape)
        end_points = build(images)
        saver = tf1.train.Saver(var_list={v.op.name: v for v in tf1.global_variables()})
        with tf1.Session() as session:
            saver.restore(session, checkpoint_path)
            return session.run(end_points, {images: image})


def test_notop_checkpoint_holds_the_26_conv_variables_with_conv1_1_flipped_to_rgb(keras_files, notop_checkpoint):
    assert notop_checkpoint.num_variables == 26
    assert notop_checkpoint.num_parameters == 14_714_688
    assert notop_checkpoint.shapes["vgg_16/conv1/conv1_1/weights"] == (3, 3, 3, 64)
    assert notop_checkpoint.shapes["vgg_16/conv5/conv5_3/biases"] == (512,)
    assert not any(name.startswith(("vgg_16/fc", "vgg_16/conv6", "vgg_16/conv7")) for name in notop_checkpoint.shapes)
    reader = tf.train.load_checkpoint(notop_checkpoint.path)
    kernel, bias = keras_files["notop_weights"]["block1_conv1"]
    np.testing.assert_array_equal(reader.get_tensor("vgg_16/conv1/conv1_1/weights"), kernel[:, :, ::-1, :])
    np.testing.assert_array_equal(reader.get_tensor("vgg_16/conv1/conv1_1/biases"), bias)
    kernel, bias = keras_files["notop_weights"]["block4_conv2"]
    np.testing.assert_array_equal(reader.get_tensor("vgg_16/conv4/conv4_2/weights"), kernel)
    np.testing.assert_array_equal(reader.get_tensor("vgg_16/conv4/conv4_2/biases"), bias)


def test_notop_conv_base_on_rgb_matches_keras_vgg16_on_bgr(keras_files, notop_checkpoint):
    ours = _run_restored(notop_checkpoint.path, vgg16_conv_base, keras_files["small_rgb"])
    _assert_close(ours["vgg_16/conv1/conv1_1"], keras_files["keras"]["notop/block1_conv1"], "conv1_1")
    _assert_close(ours["vgg_16/conv5/conv5_3"], keras_files["keras"]["notop/block5_conv3"], "conv5_3")


def test_slim_vgg_16_on_rgb_matches_keras_vgg16_on_bgr_through_fc8(keras_files, full_checkpoint):
    def build(images):
        logits, end_points = vgg.vgg_16(images, num_classes=1000, is_training=False)
        return {**end_points, "probabilities": tf.nn.softmax(logits)}

    ours = _run_restored(full_checkpoint.path, build, keras_files["image_rgb"])
    keras_outputs = keras_files["keras"]
    _assert_close(ours["vgg_16/conv1/conv1_1"], keras_outputs["full/block1_conv1"], "conv1_1")
    _assert_close(ours["vgg_16/conv5/conv5_3"], keras_outputs["full/block5_conv3"], "conv5_3")
    _assert_close(ours["vgg_16/fc6"][:, 0, 0, :], keras_outputs["full/fc1"], "fc6")
    _assert_close(ours["vgg_16/fc7"][:, 0, 0, :], keras_outputs["full/fc2"], "fc7")
    _assert_close(ours["probabilities"], keras_outputs["full/predictions"], "softmax(fc8)")


def test_full_checkpoint_has_tf_slims_fc_layers(full_checkpoint):
    expected = {
        "vgg_16/fc6/weights": (7, 7, 512, 4096), "vgg_16/fc6/biases": (4096,),
        "vgg_16/fc7/weights": (1, 1, 4096, 4096), "vgg_16/fc7/biases": (4096,),
        "vgg_16/fc8/weights": (1, 1, 4096, 1000), "vgg_16/fc8/biases": (1000,),
    }
    assert {name: full_checkpoint.shapes[name] for name in expected} == expected
    assert full_checkpoint.num_variables == 26 + len(expected)


def test_ssd_start_up_reduces_fc6_fc7_of_the_converted_file_into_conv6_conv7(keras_files, full_checkpoint):
    """The trainer's own start-up (plan, init_fn) on the converted full file: conv1..conv5 restored,
    conv6/conv7 the paper's reduced fc6/fc7, checked entry by entry against Keras' flattened kernels."""
    from deployment import checkpoint_init
    from nets import nets_factory
    from training import plan as plan_lib
    from training.config import TrainingConfig

    opts = TrainingConfig(checkpoint_model_scope="vgg_16")
    with tf.Graph().as_default():
        network_fn = nets_factory.get_network_fn("ssd_300_vgg", 4, img_shape=(64, 64))
        network_fn(tf1.placeholder(tf.float32, [1, 64, 64, 3]))
        net = network_fn.net
        plan = checkpoint_init.plan_initialization(
            None, os.path.dirname(full_checkpoint.path), **plan_lib.initialization_arguments(opts, net))
        init_fn = checkpoint_init.init_fn_from_plan(plan)
        variables = {v.op.name: v for v in tf1.global_variables()}
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            init_fn(session)
            conv6, conv6_bias, conv7, conv7_bias = session.run([variables[f"ssd_300_vgg/{name}"] for name in (
                "conv6/weights", "conv6/biases", "conv7/weights", "conv7/biases")])
    assert len(plan.restore) == 26 and len(plan.derived) == 4
    assert "26 restored, 4 derived (conv6 from vgg_16/fc6, conv7 from vgg_16/fc7)" in plan.summary_line()
    fc1_kernel, fc1_bias = keras_files["full_weights"]["fc1"]
    fc2_kernel, fc2_bias = keras_files["full_weights"]["fc2"]
    # Straight from Keras' flattened fc1: row (h * 7 + w) * 512 + c, column = fc6 output channel.
    for h, w, c, out in [(0, 0, 0, 0), (1, 2, 5, 7), (2, 2, 511, 1023), (2, 0, 300, 512)]:
        assert conv6[h, w, c, out] == fc1_kernel[((3 * h) * 7 + 3 * w) * 512 + c, 4 * out]
    for c, out in [(0, 0), (3, 1000), (1023, 1023), (500, 17)]:
        assert conv7[0, 0, c, out] == fc2_kernel[4 * c, 4 * out]
    np.testing.assert_array_equal(conv6_bias, fc1_bias[::4])
    np.testing.assert_array_equal(conv7_bias, fc2_bias[::4])
    np.testing.assert_array_equal(conv6, fc1_kernel.reshape(7, 7, 512, 4096)[::3, ::3, :, ::4])
    np.testing.assert_array_equal(conv7[0, 0], fc2_kernel[::4, ::4])


@pytest.mark.parametrize("keras_file", ["keras3_model.h5", "keras3.weights.h5"])
def test_files_written_by_keras_3_convert_to_the_same_tensors(keras_files, notop_checkpoint, keras_file, tmp_path):
    converted = keras_vgg16.convert(keras_files["dir"] / keras_file, tmp_path / "vgg_16.ckpt")
    assert converted.shapes == notop_checkpoint.shapes
    ours = tf.train.load_checkpoint(converted.path)
    reference = tf.train.load_checkpoint(notop_checkpoint.path)
    for name in converted.shapes:
        np.testing.assert_array_equal(ours.get_tensor(name), reference.get_tensor(name), err_msg=name)


def test_command_writes_the_checkpoint_and_prints_what_it_holds(keras_files, tmp_path, capsys):
    output = tmp_path / "pre_trained" / "vgg_16.ckpt"
    assert convert_keras_vgg16.main([f"--keras_weights={keras_files['notop_h5']}", f"--output={output}"]) == 0
    printed = capsys.readouterr().out
    assert "26 variables, 14,714,688 parameters" in printed
    assert "vgg_16/conv1/conv1_1/biases [64]" in printed
    assert "--checkpoint_model_scope=vgg_16" in printed
    # The directory's state file points at the new checkpoint, so the directory works as --checkpoint_path.
    assert tf.train.latest_checkpoint(str(output.parent)) == str(output)


# --------------------------------------------------------------------------- bad input


def _small_weights():
    """Real-shaped conv layers (zeros are enough where only the layout is under test)."""
    return {name: (np.zeros((3, 3, cin, cout), np.float32), np.zeros(cout, np.float32))
            for name, (_, cin, cout) in keras_vgg16.CONV_LAYERS.items()}


def test_missing_layer_is_named_with_the_file(tmp_path):
    weights = _small_weights()
    del weights["block3_conv2"]
    path = tmp_path / "partial.h5"
    _write_legacy_h5(path, weights, naming="keras2", layer_order=list(weights))
    with pytest.raises(keras_vgg16.KerasWeightsError, match=r"partial\.h5: missing VGG-16 layer\(s\) block3_conv2"):
        keras_vgg16.convert(path, tmp_path / "out.ckpt")


@pytest.mark.parametrize("layer, kernel_shape, expected", [
    ("block2_conv1", (3, 3, 64, 64),
     r"wrong\.h5: layer 'block2_conv1' kernel has shape \[3, 3, 64, 64\], expected \[3, 3, 64, 128\]"),
    ("block1_conv1", (64, 3, 3, 3), "channels-first"),  # a Theano-ordered file gets a hint
])
def test_wrong_kernel_shape_is_named_with_layer_and_shapes(tmp_path, layer, kernel_shape, expected):
    weights = _small_weights()
    weights[layer] = (np.zeros(kernel_shape, np.float32), np.zeros(64, np.float32))
    path = tmp_path / "wrong.h5"
    _write_legacy_h5(path, weights, naming="keras1", layer_order=list(weights))
    with pytest.raises(keras_vgg16.KerasWeightsError, match=expected):
        keras_vgg16.convert(path, tmp_path / "out.ckpt")


def test_dense_layers_need_both_fc1_and_fc2(tmp_path):
    weights = _small_weights()
    weights["fc1"] = (np.zeros((25088, 8), np.float32), np.zeros(8, np.float32))
    path = tmp_path / "half_top.h5"
    _write_legacy_h5(path, weights, naming="keras2", layer_order=list(weights))
    with pytest.raises(keras_vgg16.KerasWeightsError, match="not both fc1 and fc2"):
        keras_vgg16.convert(path, tmp_path / "out.ckpt")


def test_not_an_hdf5_file(tmp_path, capsys):
    path = tmp_path / "vgg16.h5"
    path.write_text("this is not HDF5")
    with pytest.raises(keras_vgg16.KerasWeightsError, match=r"vgg16\.h5: not an HDF5 file"):
        keras_vgg16.read_keras_layers(path)
    assert convert_keras_vgg16.main([f"--keras_weights={path}", f"--output={tmp_path / 'out.ckpt'}"]) == 2
    assert "not an HDF5 file" in capsys.readouterr().err
    assert not (tmp_path / "out.ckpt.index").exists()


def test_hdf5_file_without_keras_weights(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("x", data=np.zeros(3))
    with pytest.raises(keras_vgg16.KerasWeightsError, match=r"other\.h5: HDF5 file without Keras weights"):
        keras_vgg16.read_keras_layers(path)


def test_missing_file(tmp_path):
    with pytest.raises(keras_vgg16.KerasWeightsError, match=r"absent\.h5: no such file"):
        keras_vgg16.read_keras_layers(tmp_path / "absent.h5")


def test_chunked_layer_names_attribute_is_read(tmp_path):
    """Keras splits attributes over the 64 KB HDF5 header limit into name0, name1, ..."""
    weights = _small_weights()
    path = tmp_path / "chunked.h5"
    _write_legacy_h5(path, weights, naming="keras2", layer_order=list(weights))
    with h5py.File(path, "a") as handle:
        names = handle.attrs["layer_names"]
        del handle.attrs["layer_names"]
        handle.attrs["layer_names0"] = names[:5]
        handle.attrs["layer_names1"] = names[5:]
    assert list(keras_vgg16.read_keras_layers(path)) == CONV_NAMES


@pytest.mark.slow
def test_trainer_start_up_line_counts_conv6_conv7_from_a_full_vgg16(full_checkpoint, sample_dataset_dir, tmp_path):
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, SSD_TOWERS_CACHE=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="2")
    trained = subprocess.run(
        [sys.executable, os.path.join(repo_root, "train_ssd_network.py"), f"--train_dir={tmp_path / 'train'}",
         f"--checkpoint_path={full_checkpoint.path}", "--checkpoint_model_scope=vgg_16",
         f"--dataset_dir={sample_dataset_dir}", "--image_size=64", "--batch_size=2", "--max_number_of_steps=1",
         "--num_readers=1", "--num_preprocessing_threads=1"],
        capture_output=True, text=True, env=env, timeout=400, cwd=repo_root)
    assert trained.returncode == 0, trained.stderr[-3000:]
    line = next(line for line in trained.stderr.splitlines() if "Initialization: restoring" in line)
    assert f"{full_checkpoint.path}: 26 restored, 4 derived (conv6 from vgg_16/fc6, conv7 from vgg_16/fc7), " \
           "0 skipped (shape differs), 0 excluded, 41 missing from checkpoint" in line
    assert "frozen (not trained): conv1, conv2" in line
