"""Photometric ops against numpy references on a small image."""

import colorsys

import numpy as np
import pytest
import tensorflow as tf

from preprocessing import photometric
from tf_compat import tf1

RNG = np.random.RandomState(4)
SMALL_IMAGE = RNG.uniform(0.0, 1.0, size=(4, 5, 3)).astype(np.float32)


def _run(fn, *args):
    with tf.Graph().as_default():
        output = fn(tf.constant(SMALL_IMAGE), *args)
        with tf1.Session() as session:
            return session.run(output)


def _map_hsv(image, hsv_fn):
    flat = image.reshape(-1, 3).astype(np.float64)
    out = np.array([colorsys.hsv_to_rgb(*hsv_fn(*colorsys.rgb_to_hsv(*pixel))) for pixel in flat])
    return out.reshape(image.shape)


def reference_brightness(image, delta):
    return np.clip(image + delta, 0.0, 1.0)


def reference_contrast(image, factor):
    mean = image.mean(axis=(0, 1), keepdims=True)
    return np.clip((image - mean) * factor + mean, 0.0, 1.0)


def reference_saturation(image, factor):
    return np.clip(_map_hsv(image, lambda h, s, v: (h, min(max(s * factor, 0.0), 1.0), v)), 0.0, 1.0)


def reference_hue(image, delta):
    return np.clip(_map_hsv(image, lambda h, s, v: ((h + delta) % 1.0, s, v)), 0.0, 1.0)


@pytest.mark.parametrize("delta", [-32.0 / 255.0, 0.05, 0.9])
def test_brightness_matches_numpy(delta):
    np.testing.assert_allclose(_run(photometric.adjust_brightness, delta), reference_brightness(SMALL_IMAGE, delta), atol=1e-6)


@pytest.mark.parametrize("factor", [0.5, 1.0, 1.5])
def test_contrast_matches_numpy(factor):
    np.testing.assert_allclose(_run(photometric.adjust_contrast, factor), reference_contrast(SMALL_IMAGE, factor), atol=1e-5)


@pytest.mark.parametrize("factor", [0.5, 1.2, 1.5])
def test_saturation_matches_numpy(factor):
    np.testing.assert_allclose(
        _run(photometric.adjust_saturation, factor), reference_saturation(SMALL_IMAGE, factor), atol=1e-4
    )


@pytest.mark.parametrize("delta", [-0.05, 0.02, 0.05])
def test_hue_matches_numpy(delta):
    np.testing.assert_allclose(_run(photometric.adjust_hue, delta), reference_hue(SMALL_IMAGE, delta), atol=1e-4)


@pytest.mark.parametrize("index", range(len(photometric.CHANNEL_PERMUTATIONS)))
def test_channel_swap_matches_numpy(index):
    expected = SMALL_IMAGE[..., list(photometric.CHANNEL_PERMUTATIONS[index])]
    np.testing.assert_array_equal(_run(photometric.swap_channels, index), expected)


def _distort(seed, **kwargs):
    return _run(lambda image: photometric.random_photometric_distortion(image, seed, **kwargs))


def test_distortion_with_zero_probabilities_is_identity():
    output = _distort(3, brightness_probability=0.0, contrast_probability=0.0, saturation_probability=0.0,
                      hue_probability=0.0)
    np.testing.assert_array_equal(output, SMALL_IMAGE)


def test_single_distortion_stays_within_its_range():
    # Only brightness, always applied: the output is the numpy brightness of some delta within range.
    output = _distort(11, contrast_probability=0.0, saturation_probability=0.0, hue_probability=0.0,
                      brightness_probability=1.0)
    unclipped = (output > 0.0) & (output < 1.0)
    deltas = (output - SMALL_IMAGE)[unclipped]
    assert np.ptp(deltas) < 1e-5
    assert 0.0 < abs(deltas[0]) <= 32.0 / 255.0 + 1e-6
    np.testing.assert_allclose(output, reference_brightness(SMALL_IMAGE, deltas[0]), atol=1e-5)


def test_fixed_order_composes_the_numpy_references():
    # With probability 1 and a fixed order, the result is hue(sat(contrast(brightness(x)))) for factors
    # within the configured ranges; each range is pinned to one value so the factors are known.
    output = _distort(5, brightness_probability=1.0, brightness_max_delta=0.0, contrast_probability=1.0,
                      contrast_range=(1.3, 1.3), saturation_probability=1.0, saturation_range=(0.7, 0.7),
                      hue_probability=1.0, hue_max_delta=0.0, random_order=False)
    expected = reference_saturation(reference_contrast(SMALL_IMAGE, 1.3), 0.7)
    np.testing.assert_allclose(output, expected, atol=1e-4)


def test_channel_swap_with_probability_one_permutes_channels():
    output = _distort(2, brightness_probability=0.0, contrast_probability=0.0, saturation_probability=0.0,
                      hue_probability=0.0, channel_swap_probability=1.0)
    assert any(np.array_equal(output, SMALL_IMAGE[..., list(p)]) for p in photometric.CHANNEL_PERMUTATIONS)


def test_random_order_outputs_stay_in_unit_range_and_depend_on_seed():
    outputs = [_distort(seed, brightness_probability=1.0, contrast_probability=1.0, saturation_probability=1.0,
                        hue_probability=1.0) for seed in range(4)]
    for output in outputs:
        assert output.shape == SMALL_IMAGE.shape
        assert output.min() >= 0.0 and output.max() <= 1.0
    assert len({output.tobytes() for output in outputs}) == len(outputs)
