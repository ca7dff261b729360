"""The shared vgg_16 checkpoint really is ImageNet VGG-16 with RGB input, and the check can tell."""

import copy

import numpy as np
import pytest
import tensorflow as tf

from checkpoints import keras_vgg16, vgg16_imagenet_check


def test_reference_image_is_the_one_the_statistics_were_recorded_on():
    image = vgg16_imagenet_check.reference_image()
    assert image.shape == (224, 224, 3) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 255.0
    assert image.mean(dtype=np.float64) == pytest.approx(vgg16_imagenet_check.load_reference()["image_mean"], rel=1e-9)


def test_compare_accepts_noise_within_tolerance_and_reports_each_difference():
    reference = vgg16_imagenet_check.load_reference()
    close = copy.deepcopy(reference)
    close["mean"] *= 1 + 2e-5
    close["samples"][0]["value"] *= 1 - 2e-5
    assert vgg16_imagenet_check.compare_with_reference(close, reference) == []
    far = copy.deepcopy(reference)
    far["std"] *= 1.001
    far["samples"][2]["value"] += 1.0
    problems = vgg16_imagenet_check.compare_with_reference(far, reference)
    assert len(problems) == 2
    assert problems[0].startswith("conv5_3 std")
    assert problems[1].startswith(f"conv5_3{reference['samples'][2]['index']}")


@pytest.mark.shared_data
def test_conv_base_has_tf_slims_vgg_16_variable_names(vgg16_checkpoint):
    with tf.Graph().as_default():
        vgg16_imagenet_check.vgg16_conv_base(tf.zeros([1, 32, 32, 3]))
        ours = {v.op.name: tuple(v.shape) for v in tf.compat.v1.global_variables()}
    stored = tf.train.load_checkpoint(vgg16_checkpoint).get_variable_to_shape_map()
    assert ours == {name: tuple(shape) for name, shape in stored.items()}


@pytest.mark.shared_data
def test_shared_checkpoint_matches_the_recorded_conv5_3_statistics(vgg16_checkpoint, capsys):
    assert vgg16_imagenet_check.main([f"--checkpoint_path={vgg16_checkpoint}"]) == 0
    assert "matches the ImageNet VGG-16 reference" in capsys.readouterr().out


@pytest.mark.shared_data
def test_check_rejects_the_same_weights_with_bgr_input_order(vgg16_checkpoint, tmp_path):
    reader = tf.train.load_checkpoint(vgg16_checkpoint)
    tensors = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    tensors["vgg_16/conv1/conv1_1/weights"] = tensors["vgg_16/conv1/conv1_1/weights"][:, :, ::-1, :]
    swapped = keras_vgg16.write_checkpoint(tensors, tmp_path / "bgr.ckpt")
    statistics, problems = vgg16_imagenet_check.check_checkpoint(swapped)
    assert problems, f"BGR-ordered weights passed the check: {statistics}"
