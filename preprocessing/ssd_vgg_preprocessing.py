"""SSD VGG training augmentation and evaluation preprocessing (graph ops for the input pipeline).

Training follows the paper (Liu et al. 2016, section 3.6, and its Caffe code), stage by stage:

1. photometric distortion (:mod:`preprocessing.photometric`): brightness, contrast,
   saturation, hue in random order, each with probability 0.5; optional channel swap;
2. zoom-out: with probability 0.5 the image is placed at a random position in a canvas
   up to 4x its size filled with the mean colour;
3. min-IoU random crop: one of {whole image, min IoU 0.1, 0.3, 0.5, 0.7, 0.9}, up to 50
   crops of scale 0.3-1 and aspect 0.5-2 until one has a box whose centre lies inside with
   the required IoU; boxes whose centre leaves the crop are dropped with their labels and
   difficult flags, the rest clipped to it;
4. horizontal flip with probability 0.5;
5. resize to the network input, subtract the RGB means (123, 117, 104) of the VGG-16
   ImageNet weights.

Stages 2-5 are composed as windows over the original image and rendered once
(:func:`preprocessing.box_ops.render_window`), so a 4x zoom-out costs no more than a plain
resize. Finally boxes are clipped to [0, 1] and those without positive area dropped.

Randomness: every random op is a stateless op seeded from the ``seed`` argument, the
per-example seed, see :mod:`preprocessing.seeds` for why stateless ops and how to derive
per-example seeds in ``tf.data`` (``example_seed(global_seed, index)``). A fixed seed gives
the same output in any graph and session, whatever ``num_parallel_calls``.

Evaluation: resize ('warp' to the input shape, or 'pad': keep the aspect ratio and pad with
the mean colour, centred), subtract the means, and return ``info`` from which
:func:`boxes_to_original_pixels` maps detections back to original image pixels.
"""

import dataclasses
import inspect

import numpy as np
import tensorflow as tf

from preprocessing import box_ops, photometric, seeds

RGB_MEANS = (123.0, 117.0, 104.0)
TRAIN_INTERPOLATIONS = ("bilinear", "nearest")
EVAL_INTERPOLATIONS = {
    "bilinear": tf.image.ResizeMethod.BILINEAR,
    "nearest": tf.image.ResizeMethod.NEAREST_NEIGHBOR,
    "bicubic": tf.image.ResizeMethod.BICUBIC,
    "area": tf.image.ResizeMethod.AREA,
}
RESIZE_MODES = ("warp", "pad")


def _check_range(name, value_range, low=None, high=None):
    if len(value_range) != 2 or value_range[0] > value_range[1]:
        raise ValueError(f"TrainAugmentation.{name} must be (min, max) with min <= max, got {value_range!r}")
    if low is not None and value_range[0] < low or high is not None and value_range[1] > high:
        raise ValueError(f"TrainAugmentation.{name} must lie in [{low}, {high}], got {value_range!r}")


def _check_probability(name, value):
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"TrainAugmentation.{name} must be a probability in [0, 1], got {value!r}")


@dataclasses.dataclass(frozen=True)
class TrainAugmentation:
    """Switches and ranges of every training stage; defaults are the paper's recipe.

    ``photometric``, ``expand``, ``crop`` and ``flip`` switch whole stages off for
    ablations and tests (:meth:`none` switches all of them off). In
    ``crop_min_iou_choices`` ``None`` means "keep the whole image".
    """

    photometric: bool = True
    brightness_probability: float = 0.5
    brightness_max_delta: float = 32.0 / 255.0
    contrast_probability: float = 0.5
    contrast_range: tuple = (0.5, 1.5)
    saturation_probability: float = 0.5
    saturation_range: tuple = (0.5, 1.5)
    hue_probability: float = 0.5
    hue_max_delta: float = 18.0 / 360.0
    photometric_random_order: bool = True
    channel_swap_probability: float = 0.0

    expand: bool = True
    expand_probability: float = 0.5
    expand_max_ratio: float = 4.0

    crop: bool = True
    crop_min_iou_choices: tuple = (None, 0.1, 0.3, 0.5, 0.7, 0.9)
    crop_max_iou: float = 1.0
    crop_max_trials: int = 50
    crop_scale_range: tuple = (0.3, 1.0)
    crop_aspect_ratio_range: tuple = (0.5, 2.0)

    flip: bool = True
    flip_probability: float = 0.5

    interpolation: str = "bilinear"
    rgb_means: tuple = RGB_MEANS

    def __post_init__(self):
        for name in ("brightness_probability", "contrast_probability", "saturation_probability",
                     "hue_probability", "channel_swap_probability", "expand_probability",
                     "flip_probability"):
            _check_probability(name, getattr(self, name))
        _check_range("contrast_range", self.contrast_range, low=0.0)
        _check_range("saturation_range", self.saturation_range, low=0.0)
        _check_range("crop_scale_range", self.crop_scale_range, low=1e-3, high=1.0)
        _check_range("crop_aspect_ratio_range", self.crop_aspect_ratio_range, low=1e-3)
        if not 0.0 <= self.brightness_max_delta <= 1.0:
            raise ValueError(f"TrainAugmentation.brightness_max_delta must lie in [0, 1], got {self.brightness_max_delta!r}")
        if not 0.0 <= self.hue_max_delta <= 0.5:
            raise ValueError(f"TrainAugmentation.hue_max_delta must lie in [0, 0.5] turns, got {self.hue_max_delta!r}")
        if self.expand_max_ratio < 1.0:
            raise ValueError(f"TrainAugmentation.expand_max_ratio must be >= 1, got {self.expand_max_ratio!r}")
        if not self.crop_min_iou_choices or any(
            m is not None and not 0.0 <= m <= 1.0 for m in self.crop_min_iou_choices
        ):
            raise ValueError(
                "TrainAugmentation.crop_min_iou_choices must be a non-empty tuple of IoUs in [0, 1] "
                f"or None (whole image), got {self.crop_min_iou_choices!r}"
            )
        if not 0.0 < self.crop_max_iou <= 1.0:
            raise ValueError(f"TrainAugmentation.crop_max_iou must lie in (0, 1], got {self.crop_max_iou!r}")
        if self.crop_max_trials < 1:
            raise ValueError(f"TrainAugmentation.crop_max_trials must be >= 1, got {self.crop_max_trials!r}")
        if self.interpolation not in TRAIN_INTERPOLATIONS:
            raise ValueError(
                f"TrainAugmentation.interpolation must be one of {TRAIN_INTERPOLATIONS}, got {self.interpolation!r}"
            )
        if len(self.rgb_means) != 3:
            raise ValueError(f"TrainAugmentation.rgb_means must hold 3 values, got {self.rgb_means!r}")

    @classmethod
    def none(cls, **overrides):
        """Every stage off (resize and mean subtraction only), then ``overrides``."""
        return cls(**{"photometric": False, "expand": False, "crop": False, "flip": False, **overrides})


def _check_inputs(image, labels, boxes, difficult):
    image = tf.ensure_shape(tf.convert_to_tensor(image), [None, None, 3])
    boxes = tf.ensure_shape(tf.cast(boxes, tf.float32), [None, 4])
    labels = tf.ensure_shape(tf.convert_to_tensor(labels), [None])
    difficult = tf.ensure_shape(tf.convert_to_tensor(difficult), [None])
    return image, labels, boxes, difficult


def _out_shape(out_shape):
    if len(out_shape) != 2 or min(int(v) for v in out_shape) < 1:
        raise ValueError(f"out_shape must be (height, width) of positive ints, got {out_shape!r}")
    return int(out_shape[0]), int(out_shape[1])


def _stage_arguments(options, stage, prefix="", **fields):
    """The keyword arguments of the stage function ``stage`` from ``options``: every parameter with a
    default takes the :class:`TrainAugmentation` field ``prefix + parameter`` (``fields`` names the
    exceptions), so a field the stage needs and the options lack fails at once."""
    return {
        name: getattr(options, fields.get(name, prefix + name))
        for name, parameter in inspect.signature(stage).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def subtract_means(image, rgb_means=RGB_MEANS):
    """float32 RGB in [0, 255] minus the per-channel means."""
    return tf.cast(image, tf.float32) - tf.constant(rgb_means, tf.float32)


def preprocess_for_train(image, labels, boxes, difficult, out_shape, seed, options=None):
    """The SSD training augmentation of one example.

    Args:
      image: uint8 ``[H, W, 3]`` RGB (or float in [0, 255]).
      labels, difficult: ``[N]`` per box (any dtype; returned with the same dtype).
      boxes: float32 ``[N, 4]`` ``[ymin, xmin, ymax, xmax]`` relative to the image; N may be 0.
      out_shape: (height, width) of the network input.
      seed: per-example seed, a Python int, a scalar or a ``[2]`` int tensor
        (see :func:`preprocessing.seeds.example_seed`).
      options: :class:`TrainAugmentation` (default: the paper's recipe).

    Returns:
      ``(image float32 [h, w, 3] mean-subtracted RGB, labels [M], boxes [M, 4] in [0, 1]
      with positive area, difficult [M])``.
    """
    options = options or TrainAugmentation()
    out_shape = _out_shape(out_shape)
    with tf.name_scope("ssd_preprocessing_train"):
        image, labels, boxes, difficult = _check_inputs(image, labels, boxes, difficult)
        seed = seeds.as_stateless_seed(seed)
        image = tf.cast(image, tf.float32) / 255.0
        if options.photometric:
            image = photometric.random_photometric_distortion(image, seed, **_stage_arguments(
                options, photometric.random_photometric_distortion, random_order="photometric_random_order"))
        # Subtracting the mean first makes the zoom-out fill colour zero for render_window.
        image = subtract_means(image * 255.0, options.rgb_means)

        window = tf.constant(box_ops.IMAGE_WINDOW, tf.float32)
        if options.expand:
            window = box_ops.random_expand_window(
                seed, **_stage_arguments(options, box_ops.random_expand_window, "expand_"))
            boxes = box_ops.boxes_in_window(boxes, window)
        if options.crop:
            crop = box_ops.sample_min_iou_crop(
                boxes, seed, **_stage_arguments(options, box_ops.sample_min_iou_crop, "crop_"))
            boxes, labels, difficult = box_ops.crop_boxes(crop, boxes, labels, difficult)
            window = box_ops.window_in_frame(crop, window)
        flip = False
        if options.flip:
            boxes, flip = box_ops.random_flip_left_right(
                boxes, seed, **_stage_arguments(options, box_ops.random_flip_left_right, "flip_"))
        boxes, labels, difficult = box_ops.remove_degenerate_boxes(boxes, labels, difficult)
        image = box_ops.render_window(image, window, out_shape, flip=flip, method=options.interpolation)
        image = tf.ensure_shape(image, [out_shape[0], out_shape[1], 3])
        return image, labels, boxes, difficult


def preprocess_for_eval(
    image, labels, boxes, difficult, out_shape, resize_mode="warp", interpolation="bilinear", rgb_means=RGB_MEANS
):
    """Resizes one evaluation example to the network input and subtracts the means.

    Args:
      image: uint8 ``[H, W, 3]`` RGB (or float in [0, 255]).
      labels, boxes, difficult: as for training; all boxes are kept (difficult ones too).
      out_shape: (height, width) of the network input.
      resize_mode: 'warp' (stretch to ``out_shape``) or 'pad' (keep the aspect ratio,
        centre the image and fill the rest with the mean colour).
      interpolation: 'bilinear', 'nearest', 'bicubic' or 'area'.

    Returns:
      ``(image float32 [h, w, 3], labels, boxes relative to the network input, difficult,
      info)``; ``info`` is a dict of tensors: ``original_shape`` int32 [2] (H, W),
      ``scale`` float32 [2] (network-input pixels per original pixel, y and x),
      ``offset`` float32 [2] (padding before the image, in network-input pixels, y and x),
      ``output_shape`` int32 [2]. See :func:`boxes_to_original_pixels`.
    """
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    if interpolation not in EVAL_INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {tuple(EVAL_INTERPOLATIONS)}, got {interpolation!r}")
    out_height, out_width = _out_shape(out_shape)
    with tf.name_scope("ssd_preprocessing_eval"):
        image, labels, boxes, difficult = _check_inputs(image, labels, boxes, difficult)
        original_shape = tf.shape(image)[:2]
        original_size = tf.cast(original_shape, tf.float32)
        output_size = tf.constant([out_height, out_width], tf.float32)
        image = subtract_means(image, rgb_means)
        method = EVAL_INTERPOLATIONS[interpolation]
        if resize_mode == "warp":
            image = tf.image.resize(image, [out_height, out_width], method=method)
            scale = output_size / original_size
            offset = tf.zeros([2], tf.float32)
        else:
            resized_shape = tf.maximum(
                tf.cast(tf.round(original_size * tf.reduce_min(output_size / original_size)), tf.int32), 1
            )
            resized_shape = tf.minimum(resized_shape, [out_height, out_width])
            image = tf.image.resize(image, resized_shape, method=method)
            padding = tf.constant([out_height, out_width], tf.int32) - resized_shape
            before = padding // 2
            image = tf.pad(image, tf.stack([tf.stack([before[0], padding[0] - before[0]]),
                                            tf.stack([before[1], padding[1] - before[1]]),
                                            tf.zeros([2], tf.int32)]))
            scale = tf.cast(resized_shape, tf.float32) / original_size
            offset = tf.cast(before, tf.float32)
            boxes = (boxes * tf.tile(scale * original_size, [2]) + tf.tile(offset, [2])) / tf.tile(output_size, [2])
        image = tf.ensure_shape(tf.cast(image, tf.float32), [out_height, out_width, 3])
        info = {
            "original_shape": tf.cast(original_shape, tf.int32),
            "scale": scale,
            "offset": offset,
            "output_shape": tf.constant([out_height, out_width], tf.int32),
        }
        return image, labels, boxes, difficult, info


def boxes_to_original_pixels(boxes, info):
    """Maps boxes relative to the network input back to original-image pixels.

    Works on numpy arrays (returns numpy) and on tensors (returns a tensor), unbatched
    (``boxes [K, 4]``, ``info`` values ``[2]``) or batched (``boxes [B, K, 4]``, ``info``
    values ``[B, 2]``). Returns float ``[..., K, 4]`` ``[ymin, xmin, ymax, xmax]`` in
    continuous pixel coordinates (the image spans ``[0, H] x [0, W]``), clipped to the image.
    """
    use_tf = any(isinstance(v, (tf.Tensor, tf.Variable)) for v in (boxes, *info.values()))
    if use_tf:
        as_float = lambda v: tf.cast(v, tf.float32)  # noqa: E731
        tile, clip, expand = (lambda v: tf.concat([v, v], -1)), tf.clip_by_value, tf.expand_dims
    else:
        as_float = lambda v: np.asarray(v, np.float32)  # noqa: E731
        tile, clip, expand = (lambda v: np.concatenate([v, v], -1)), np.clip, np.expand_dims
    boxes = as_float(boxes)
    output_size = tile(expand(as_float(info["output_shape"]), -2))
    scale = tile(expand(as_float(info["scale"]), -2))
    offset = tile(expand(as_float(info["offset"]), -2))
    image_size = tile(expand(as_float(info["original_shape"]), -2))
    pixels = (boxes * output_size - offset) / scale
    return clip(pixels, 0.0, image_size)
