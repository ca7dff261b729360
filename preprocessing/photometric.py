"""Photometric distortion of SSD training (Liu et al. 2016, section 3.6; Caffe SSD's ``DistortImage``).

Images here are float32 RGB in [0, 1]. Every op clips its result back to [0, 1], as the
8-bit images of the reference implementation do implicitly.

- brightness: add ``delta`` (the paper: up to 32/255);
- contrast: scale each channel's deviation from that channel's mean by ``factor``
  (``tf.image.adjust_contrast``; Caffe multiplies the raw values instead, which also
  darkens or brightens: the mean-preserving form keeps brightness and contrast separate);
- saturation: multiply the HSV saturation by ``factor``;
- hue: rotate the HSV hue by ``delta`` turns (18 degrees = 0.05);
- channel swap: permute the RGB channels.

:func:`random_photometric_distortion` applies brightness, contrast, saturation and hue in
a random order, each with its own probability, then an optional channel swap.
"""

import itertools

import tensorflow as tf

from preprocessing import seeds

CHANNEL_PERMUTATIONS = tuple(itertools.permutations(range(3)))


def adjust_brightness(image, delta):
    return tf.clip_by_value(image + delta, 0.0, 1.0)


def adjust_contrast(image, factor):
    return tf.clip_by_value(tf.image.adjust_contrast(image, factor), 0.0, 1.0)


def adjust_saturation(image, factor):
    return tf.clip_by_value(tf.image.adjust_saturation(image, factor), 0.0, 1.0)


def adjust_hue(image, delta):
    return tf.clip_by_value(tf.image.adjust_hue(image, delta), 0.0, 1.0)


def swap_channels(image, permutation_index):
    """Reorders the channels by ``CHANNEL_PERMUTATIONS[permutation_index]`` (a scalar int tensor)."""
    permutation = tf.gather(tf.constant(CHANNEL_PERMUTATIONS, tf.int32), permutation_index)
    return tf.gather(image, permutation, axis=-1)


def _uniform(seed, name, low, high):
    return tf.random.stateless_uniform([], seeds.op_seed(seed, name), minval=low, maxval=high)


def _with_probability(probability, seed, name, apply_fn, image):
    if probability <= 0.0:
        return image
    if probability >= 1.0:
        return apply_fn(image)
    coin = _uniform(seed, name + "/apply", 0.0, 1.0) < probability
    return tf.cond(coin, lambda: apply_fn(image), lambda: image)


def random_photometric_distortion(
    image,
    seed,
    brightness_probability=0.5,
    brightness_max_delta=32.0 / 255.0,
    contrast_probability=0.5,
    contrast_range=(0.5, 1.5),
    saturation_probability=0.5,
    saturation_range=(0.5, 1.5),
    hue_probability=0.5,
    hue_max_delta=18.0 / 360.0,
    random_order=True,
    channel_swap_probability=0.0,
):
    """Randomly distorts a float32 RGB image in [0, 1]; returns an image of the same shape.

    Args:
      image: float32 [H, W, 3] in [0, 1].
      seed: the per-example seed (see :mod:`preprocessing.seeds`); each op draws its
        own seed from it, so its random factor does not depend on the order of the ops.
      random_order: apply the four ops in a random permutation (else in the order
        brightness, contrast, saturation, hue).
    """
    image = tf.convert_to_tensor(image, tf.float32)
    distortions = [
        (
            brightness_probability,
            "brightness",
            lambda img, s: adjust_brightness(
                img, _uniform(s, "brightness/delta", -brightness_max_delta, brightness_max_delta)
            ),
        ),
        (
            contrast_probability,
            "contrast",
            lambda img, s: adjust_contrast(img, _uniform(s, "contrast/factor", *contrast_range)),
        ),
        (
            saturation_probability,
            "saturation",
            lambda img, s: adjust_saturation(img, _uniform(s, "saturation/factor", *saturation_range)),
        ),
        (
            hue_probability,
            "hue",
            lambda img, s: adjust_hue(img, _uniform(s, "hue/delta", -hue_max_delta, hue_max_delta)),
        ),
    ]

    def apply_distortion(index, img):
        probability, name, fn = distortions[index]
        return _with_probability(probability, seed, name, lambda x: fn(x, seed), img)

    if random_order:
        order = tf.argsort(
            tf.random.stateless_uniform([len(distortions)], seeds.op_seed(seed, "photometric/order"))
        )
        for position in range(len(distortions)):
            branches = [
                (lambda i=i, img=image: apply_distortion(i, img)) for i in range(len(distortions))
            ]
            image = tf.switch_case(order[position], branches)
    else:
        for index in range(len(distortions)):
            image = apply_distortion(index, image)

    def random_swap(img):
        permutation_index = tf.random.stateless_uniform(
            [], seeds.op_seed(seed, "channel_swap/permutation"), 0, len(CHANNEL_PERMUTATIONS), tf.int32
        )
        return swap_channels(img, permutation_index)

    image = _with_probability(channel_swap_probability, seed, "channel_swap", random_swap, image)
    return tf.ensure_shape(image, [None, None, 3])
