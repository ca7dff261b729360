"""Box-aware geometric ops of SSD augmentation: zoom-out, min-IoU crop, flip, clip and filter.

Boxes are float32 ``[N, 4]`` as ``[ymin, xmin, ymax, xmax]`` relative to a frame (the image
or a window of it). A *window* is a ``[4]`` box in the same convention that may reach
outside ``[0, 1]``: the zoom-out canvas is a window larger than the image, a crop a window
inside the canvas. Stages compose windows instead of materialising pixels, and
:func:`render_window` draws the final window once, straight from the original image,
with everything outside the image filled by zero (the mean colour once the mean is
subtracted). A 4x zoom-out therefore never builds the 16x larger canvas, which keeps the
input pipeline fast; the sampled pixels are those of the materialised canvas.

Continuous coordinates: the image spans ``[0, H] x [0, W]`` in pixels with pixel centres at
``k + 0.5``; a relative box multiplies by ``H`` and ``W``. This is the convention of
``tf.image.resize`` (half-pixel centres), so boxes stay exact under resizing.
"""

import tensorflow as tf

from preprocessing import seeds

IMAGE_WINDOW = (0.0, 0.0, 1.0, 1.0)


def box_areas(boxes):
    return tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0) * tf.maximum(boxes[..., 3] - boxes[..., 1], 0.0)


def box_centers(boxes):
    """``[N, 2]`` (y, x) centres."""
    return tf.stack([boxes[..., 0] + boxes[..., 2], boxes[..., 1] + boxes[..., 3]], axis=-1) / 2.0


def pairwise_iou(windows, boxes):
    """IoU of each of ``windows [T, 4]`` with each of ``boxes [N, 4]``: ``[T, N]``."""
    windows = windows[:, None, :]
    boxes = boxes[None, :, :]
    top_left = tf.maximum(windows[..., :2], boxes[..., :2])
    bottom_right = tf.minimum(windows[..., 2:], boxes[..., 2:])
    intersection = tf.reduce_prod(tf.maximum(bottom_right - top_left, 0.0), axis=-1)
    union = box_areas(windows) + box_areas(boxes) - intersection
    return tf.math.divide_no_nan(intersection, union)


def centers_inside(windows, boxes):
    """Whether each box centre lies in each window (borders included): ``[T, N]`` bool."""
    centers = box_centers(boxes)[None, :, :]
    windows = windows[:, None, :]
    return tf.reduce_all((centers >= windows[..., :2]) & (centers <= windows[..., 2:]), axis=-1)


def boxes_in_window(boxes, window):
    """Re-expresses frame-relative ``boxes`` relative to ``window`` (given in frame coordinates)."""
    window = tf.convert_to_tensor(window, tf.float32)
    origin = tf.tile(window[:2], [2])
    size = tf.tile(window[2:] - window[:2], [2])
    return (boxes - origin) / size


def window_in_frame(inner_window, outer_window):
    """The frame coordinates of ``inner_window``, which is given relative to ``outer_window``."""
    outer_window = tf.convert_to_tensor(outer_window, tf.float32)
    origin = tf.tile(outer_window[:2], [2])
    size = tf.tile(outer_window[2:] - outer_window[:2], [2])
    return origin + inner_window * size


def gather_boxes(keep, boxes, *per_box):
    """Keeps the entries where the bool ``keep [N]`` is true in ``boxes`` and each per-box tensor."""
    indices = tf.reshape(tf.where(keep), [-1])
    return (tf.gather(boxes, indices),) + tuple(tf.gather(t, indices) for t in per_box)


def random_expand_window(seed, max_ratio=4.0, probability=0.5):
    """Samples the zoom-out canvas as a window in image coordinates.

    With ``probability``, a canvas ``ratio`` times the image size (ratio uniform in
    ``[1, max_ratio]``) with the image at a uniformly random position; else the image itself.
    """
    ratio = tf.random.stateless_uniform([], seeds.op_seed(seed, "expand/ratio"), 1.0, max_ratio)
    position = tf.random.stateless_uniform([2], seeds.op_seed(seed, "expand/position"))
    apply = tf.random.stateless_uniform([], seeds.op_seed(seed, "expand/apply")) < probability
    ratio = tf.where(apply, ratio, 1.0)
    top_left = -position * (ratio - 1.0)
    return tf.concat([top_left, top_left + ratio], axis=0)


def sample_crop_windows(seed, num_windows, scale_range=(0.3, 1.0), aspect_ratio_range=(0.5, 2.0)):
    """``[T, 4]`` candidate crops of the unit frame, as in Caffe SSD's ``SampleBBox``.

    A crop has side scale ``s`` uniform in ``scale_range`` and aspect ratio (width /
    height, in frame-relative units) uniform in ``aspect_ratio_range`` narrowed to
    ``[s^2, 1/s^2]`` so that it fits the frame, at a uniformly random position.
    """
    uniforms = tf.random.stateless_uniform([num_windows, 4], seeds.op_seed(seed, "crop/windows"))
    scale = scale_range[0] + uniforms[:, 0] * (scale_range[1] - scale_range[0])
    min_aspect = tf.maximum(aspect_ratio_range[0], tf.square(scale))
    max_aspect = tf.minimum(aspect_ratio_range[1], 1.0 / tf.square(scale))
    aspect = min_aspect + uniforms[:, 1] * (max_aspect - min_aspect)
    height = tf.minimum(scale / tf.sqrt(aspect), 1.0)
    width = tf.minimum(scale * tf.sqrt(aspect), 1.0)
    ymin = uniforms[:, 2] * (1.0 - height)
    xmin = uniforms[:, 3] * (1.0 - width)
    return tf.stack([ymin, xmin, ymin + height, xmin + width], axis=1)


def sample_min_iou_crop(
    boxes,
    seed,
    min_iou_choices=(None, 0.1, 0.3, 0.5, 0.7, 0.9),
    max_iou=1.0,
    max_trials=50,
    scale_range=(0.3, 1.0),
    aspect_ratio_range=(0.5, 2.0),
):
    """Samples the SSD min-IoU crop of the unit frame holding ``boxes``; returns a ``[4]`` window.

    One entry of ``min_iou_choices`` is drawn uniformly; ``None`` keeps the whole frame.
    Otherwise ``max_trials`` candidate crops are drawn (:func:`sample_crop_windows`) and
    the first one kept in which some box has its centre inside and an IoU with the crop
    in ``[min_iou, max_iou]``; when none qualifies (or there are no boxes) the whole frame
    is kept. Drawing all trials at once instead of looping keeps the graph small and fast.
    """
    if not min_iou_choices:
        raise ValueError("min_iou_choices must hold at least one entry (None = whole image)")
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    whole = tf.constant(IMAGE_WINDOW, tf.float32)
    choice = tf.random.stateless_uniform(
        [], seeds.op_seed(seed, "crop/choice"), 0, len(min_iou_choices), tf.int32
    )
    min_ious = tf.constant([2.0 if m is None else float(m) for m in min_iou_choices], tf.float32)
    min_iou = tf.gather(min_ious, choice)
    keeps_whole_frame = tf.gather(tf.constant([m is None for m in min_iou_choices]), choice)

    candidates = sample_crop_windows(seed, max_trials, scale_range, aspect_ratio_range)
    ious = pairwise_iou(candidates, boxes)
    qualifies = centers_inside(candidates, boxes) & (ious >= min_iou) & (ious <= max_iou)
    candidate_ok = tf.reduce_any(qualifies, axis=1)
    first_ok = tf.argmax(tf.cast(candidate_ok, tf.int32), output_type=tf.int32)
    use_candidate = tf.reduce_any(candidate_ok) & tf.logical_not(keeps_whole_frame)
    return tf.where(use_candidate, candidates[first_ok], whole)


def crop_boxes(window, boxes, *per_box):
    """Crops ``boxes`` to ``window`` (both in frame coordinates): keeps the boxes whose centre
    lies inside it with their per-box tensors, re-expressed relative to the window and clipped."""
    window = tf.convert_to_tensor(window, tf.float32)
    keep = centers_inside(window[None, :], boxes)[0]
    kept = gather_boxes(keep, boxes, *per_box)
    cropped = tf.clip_by_value(boxes_in_window(kept[0], window), 0.0, 1.0)
    return (cropped,) + kept[1:]


def flip_boxes_left_right(boxes):
    ymin, xmin, ymax, xmax = tf.unstack(boxes, num=4, axis=-1)
    return tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1)


def random_flip_left_right(boxes, seed, probability=0.5):
    """Returns ``(flipped boxes, flip)``: ``flip`` a bool scalar the image must follow."""
    flip = tf.random.stateless_uniform([], seeds.op_seed(seed, "flip/apply")) < probability
    return tf.cond(flip, lambda: flip_boxes_left_right(boxes), lambda: boxes), flip


def remove_degenerate_boxes(boxes, *per_box):
    """Clips ``boxes`` to ``[0, 1]`` and drops those left without positive area, with their
    per-box tensors (e.g. the zero-area boxes real annotations contain)."""
    boxes = tf.clip_by_value(boxes, 0.0, 1.0)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return gather_boxes(keep, boxes, *per_box)


def _sample_span(start, stop, input_size, output_size):
    """crop_and_resize box coordinates for the span ``[start, stop)`` (continuous pixels of an
    image of ``input_size`` padded by one pixel per side) sampled at half-pixel centres."""
    step = (stop - start) / output_size
    first = start + 0.5 * step - 0.5 + 1.0
    last = start + (output_size - 0.5) * step - 0.5 + 1.0
    padded_extent = input_size + 1.0  # (input_size + 2) - 1: crop_and_resize's normaliser
    return first / padded_extent, last / padded_extent


def render_window(image, window, out_shape, flip=False, method="bilinear"):
    """Resamples ``window`` of ``image`` to ``out_shape``, optionally mirrored left-right.

    Args:
      image: float32 ``[H, W, C]`` whose fill colour is 0 (i.e. mean-subtracted).
      window: ``[4]`` in image-relative coordinates; outside the image reads as 0.
      out_shape: (height, width) Python ints.
      flip: bool (scalar tensor or Python bool): mirror the output left-right.
      method: 'bilinear' or 'nearest'.

    Samples at output pixel centres mapped through the window, like ``tf.image.resize`` on
    the materialised window. Inside the image, samples within half a pixel of its border
    clamp to the edge (as ``tf.image.resize`` does); a window reaching outside the image
    blends the edge into the fill instead, as the materialised zoom-out canvas would.
    """
    if method not in ("bilinear", "nearest"):
        raise ValueError(f"method must be 'bilinear' or 'nearest', got {method!r}")
    out_height, out_width = (int(v) for v in out_shape)
    image = tf.convert_to_tensor(image, tf.float32)
    window = tf.convert_to_tensor(window, tf.float32)
    shape = tf.shape(image)
    height = tf.cast(shape[0], tf.float32)
    width = tf.cast(shape[1], tf.float32)

    inside_image = tf.reduce_all(window[:2] >= 0.0) & tf.reduce_all(window[2:] <= 1.0)
    padding = [[1, 1], [1, 1], [0, 0]]
    padded = tf.cond(
        inside_image,
        lambda: tf.pad(image, padding, mode="SYMMETRIC"),
        lambda: tf.pad(image, padding),
    )
    y1, y2 = _sample_span(window[0] * height, window[2] * height, height, out_height)
    x1, x2 = _sample_span(window[1] * width, window[3] * width, width, out_width)
    x1, x2 = tf.where(flip, x2, x1), tf.where(flip, x1, x2)  # crop_and_resize mirrors when x1 > x2
    crop_box = tf.stack([y1, x1, y2, x2])[None, :]
    resized = tf.image.crop_and_resize(
        padded[None], crop_box, tf.zeros([1], tf.int32), [out_height, out_width],
        method=method, extrapolation_value=0.0,
    )
    return resized[0]
