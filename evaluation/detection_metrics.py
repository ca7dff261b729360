"""Pascal VOC detection metrics, accumulated on the host one image at a time (numpy only).

Conventions (the same for every method here):

* Boxes are ``[ymin, xmin, ymax, xmax]``. By default they are in pixels of the original
  image, which is what ``eval_ssd_network.py`` passes. With ``relative_boxes=True`` they
  are fractions of the image size and :meth:`DetectionEvaluator.add_image` needs
  ``image_height`` and ``image_width`` to scale them to pixels on the way in.
* Labels are ``1..num_classes``; 0 is the background class and is rejected here.
* ``pixel_inclusive=False`` (the default) treats coordinates as continuous: a box is
  ``xmax - xmin`` wide. That fits boxes decoded by the network and the relative boxes
  of our TFRecords. ``pixel_inclusive=True`` is the VOC development kit's integer-pixel
  convention (``xmax - xmin + 1`` wide, intersections likewise), for numbers comparable
  with the devkit on the integer boxes of the XML files.
* Matching follows the VOC devkit (``voc_eval.py``): per class, detections are taken in
  descending score order (ties keep the order of ``add_image`` calls, then the order
  within the image); each goes to the ground-truth box of its class in its image with the
  highest IoU. If that IoU is above ``iou_threshold`` (strictly, the devkit's
  ``ovmax > ovthresh``): a difficult box makes the detection ignored (neither true nor
  false positive), an unclaimed box makes it a true positive and claims the box, a box
  already claimed makes it a false positive (duplicate). Otherwise it is a false
  positive. As in the devkit, a detection whose best box is already claimed is a false
  positive even when a second box would overlap it enough. Difficult boxes do not count
  as positives.
* AP: VOC07 11-point interpolation at recalls ``np.arange(0, 1.1, 0.1)`` (exactly the
  thresholds of ``voc_eval.py``, including their float rounding), and the VOC2010+
  "area" AP (all-point interpolation of the monotone precision envelope).
* A class without non-difficult ground truth has no defined AP: it gets NaN, is left out
  of both mAPs and is listed in ``EvaluationResult.classes_without_ground_truth``. (The
  devkit divides by zero there.) A class with ground truth but no detections has AP 0.

Matching happens inside :meth:`add_image`; the accumulator keeps per class one score
and one true/false-positive flag per non-ignored detection, so memory grows linearly with
the number of detections. With ``keep_images=True`` (the default) it also keeps each
image's boxes, which :mod:`evaluation.coco_metrics` needs.
"""

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

# voc_eval.py's recall thresholds, float rounding and all (0.1 * 3 > 0.3 here).
VOC07_RECALL_THRESHOLDS = np.arange(0.0, 1.1, 0.1)

_TRUE_POSITIVE = 1
_FALSE_POSITIVE = 0
_IGNORED = -1


def pairwise_iou(boxes_a, boxes_b, pixel_inclusive=False):
    """IoU matrix [len(a), len(b)] of [ymin, xmin, ymax, xmax] boxes; 0 where the union is empty."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    extra = 1.0 if pixel_inclusive else 0.0
    inter_h = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + extra
    inter_w = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + extra
    intersection = np.maximum(inter_h, 0.0) * np.maximum(inter_w, 0.0)
    area_a = (a[:, 2] - a[:, 0] + extra) * (a[:, 3] - a[:, 1] + extra)
    area_b = (b[:, 2] - b[:, 0] + extra) * (b[:, 3] - b[:, 1] + extra)
    union = area_a[:, None] + area_b[None, :] - intersection
    iou = np.zeros_like(intersection)
    np.divide(intersection, union, out=iou, where=union > 0)
    return iou


def voc07_average_precision(recall, precision):
    """VOC2007 11-point interpolated AP: mean over t in 0, 0.1, .., 1 of max precision at recall >= t."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    total = 0.0
    for threshold in VOC07_RECALL_THRESHOLDS:
        reached = recall >= threshold
        total += precision[reached].max() if reached.any() else 0.0
    return total / len(VOC07_RECALL_THRESHOLDS)


def voc_area_average_precision(recall, precision):
    """VOC2010+ AP: area under the precision envelope (max precision at any higher recall), all points."""
    recall = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64), [1.0]))
    envelope = np.concatenate(([0.0], np.asarray(precision, dtype=np.float64), [0.0]))
    envelope = np.maximum.accumulate(envelope[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * envelope[steps + 1]))


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One evaluated image, boxes in pixels as [ymin, xmin, ymax, xmax] (float64)."""

    image_id: object
    height: float | None
    width: float | None
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_difficult: np.ndarray
    det_boxes: np.ndarray
    det_scores: np.ndarray
    det_labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class ClassResult:
    """Metrics of one class. The arrays run over its non-ignored detections, highest score first."""

    label: int
    name: str
    num_images: int  # images with at least one non-difficult ground-truth box of this class
    num_ground_truth: int  # non-difficult ground-truth boxes (the VOC "npos")
    num_difficult: int
    num_detections: int  # every detection of this class, ignored ones included
    num_true_positives: int
    voc07_ap: float  # NaN when num_ground_truth == 0
    voc_area_ap: float  # NaN when num_ground_truth == 0
    scores: np.ndarray
    is_true_positive: np.ndarray
    precision: np.ndarray
    recall: np.ndarray  # NaN-filled when num_ground_truth == 0

    @property
    def has_ground_truth(self):
        return self.num_ground_truth > 0


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """What :meth:`DetectionEvaluator.compute` returns. mAPs are NaN when no class has ground truth."""

    num_images: int
    per_class: tuple
    voc07_map: float
    voc_area_map: float
    classes_without_ground_truth: tuple
    iou_threshold: float
    pixel_inclusive: bool


def _mean_of_defined(values):
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


def _class_names(num_classes, class_names):
    if class_names is None:
        return [f"class_{label}" for label in range(1, num_classes + 1)]
    if isinstance(class_names, Mapping):
        # A label map as read from labels.txt; id 0 (background) may be in it.
        missing = [label for label in range(1, num_classes + 1) if label not in class_names]
        if missing:
            raise ValueError(f"class_names has no name for labels {missing} (num_classes={num_classes})")
        return [str(class_names[label]) for label in range(1, num_classes + 1)]
    names = [str(name) for name in class_names]
    if len(names) != num_classes:
        raise ValueError(
            f"class_names has {len(names)} names but num_classes is {num_classes} "
            "(give one name per label 1..num_classes, background excluded)"
        )
    return names


class DetectionEvaluator:
    """Accumulates per-class VOC matches image by image; :meth:`compute` turns them into APs.

    Args:
      num_classes: object classes, background excluded; labels run 1..num_classes.
      class_names: one name per label 1..num_classes, or a mapping label -> name
        (a label map; label 0 is ignored). Defaults to ``class_<label>``.
      iou_threshold: a detection matches when IoU > iou_threshold (VOC: 0.5).
      pixel_inclusive: VOC devkit's ``+1`` pixel widths (see the module docstring).
      relative_boxes: boxes given to :meth:`add_image` are relative to the image size.
      keep_images: keep every image's boxes (needed for COCO metrics).
    """

    def __init__(
        self,
        num_classes,
        class_names=None,
        iou_threshold=0.5,
        pixel_inclusive=False,
        relative_boxes=False,
        keep_images=True,
    ):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1 (background excluded), got {num_classes}")
        self.num_classes = int(num_classes)
        self.class_names = _class_names(self.num_classes, class_names)
        self.iou_threshold = float(iou_threshold)
        self.pixel_inclusive = bool(pixel_inclusive)
        self.relative_boxes = bool(relative_boxes)
        self.keep_images = bool(keep_images)
        self.reset()

    def reset(self):
        """Forgets every image added so far."""
        n = self.num_classes + 1  # index 0 (background) stays unused
        self._scores = [[] for _ in range(n)]
        self._outcomes = [[] for _ in range(n)]
        self._num_ground_truth = np.zeros(n, np.int64)
        self._num_difficult = np.zeros(n, np.int64)
        self._num_images = np.zeros(n, np.int64)
        self._num_detections = np.zeros(n, np.int64)
        self._image_ids = set()
        self._images = []

    @property
    def num_images(self):
        return len(self._image_ids)

    @property
    def images(self):
        """The ImageRecords added so far (boxes in pixels); needs keep_images=True."""
        if not self.keep_images:
            raise RuntimeError("DetectionEvaluator(keep_images=False) does not keep per-image boxes")
        return tuple(self._images)

    def add_image(
        self,
        image_id,
        gt_boxes,
        gt_labels,
        gt_difficult,
        det_boxes,
        det_scores,
        det_labels,
        image_height=None,
        image_width=None,
    ):
        """Matches one image's detections to its ground truth and accumulates the outcome.

        Args:
          image_id: any hashable id, unique over the evaluation (a filename or source id).
          gt_boxes: [G, 4] ground-truth boxes, [ymin, xmin, ymax, xmax].
          gt_labels: [G] labels in 1..num_classes.
          gt_difficult: [G] VOC difficult flags, or None for none difficult.
          det_boxes: [D, 4] detected boxes, same units as gt_boxes.
          det_scores: [D] confidences (higher is surer).
          det_labels: [D] labels in 1..num_classes.
          image_height, image_width: the image size in pixels; required with
            relative_boxes=True, otherwise optional (passed on to COCO).
        """
        where = f"image {image_id!r}"
        if image_id in self._image_ids:
            raise ValueError(f"{where} was already added to this evaluation")
        scale = self._pixel_scale(where, image_height, image_width)
        gt_boxes = self._boxes(where, "gt_boxes", gt_boxes) * scale
        det_boxes = self._boxes(where, "det_boxes", det_boxes) * scale
        gt_labels = self._labels(where, "gt_labels", gt_labels, len(gt_boxes))
        det_labels = self._labels(where, "det_labels", det_labels, len(det_boxes))
        if gt_difficult is None:
            gt_difficult = np.zeros(len(gt_boxes), bool)
        gt_difficult = self._vector(where, "gt_difficult", gt_difficult, len(gt_boxes)).astype(bool)
        det_scores = self._vector(where, "det_scores", det_scores, len(det_boxes)).astype(np.float64)
        if not np.all(np.isfinite(det_scores)):
            raise ValueError(f"{where}: det_scores has non-finite values")

        self._image_ids.add(image_id)
        for label in np.unique(np.concatenate([gt_labels, det_labels])):
            self._add_class(
                label,
                gt_boxes[gt_labels == label],
                gt_difficult[gt_labels == label],
                det_boxes[det_labels == label],
                det_scores[det_labels == label],
            )
        if self.keep_images:
            self._images.append(
                ImageRecord(
                    image_id=image_id,
                    height=None if image_height is None else float(image_height),
                    width=None if image_width is None else float(image_width),
                    gt_boxes=gt_boxes,
                    gt_labels=gt_labels,
                    gt_difficult=gt_difficult,
                    det_boxes=det_boxes,
                    det_scores=det_scores,
                    det_labels=det_labels,
                )
            )

    def _add_class(self, label, gt_boxes, gt_difficult, det_boxes, det_scores):
        num_positive = int(np.count_nonzero(~gt_difficult))
        self._num_ground_truth[label] += num_positive
        self._num_difficult[label] += len(gt_difficult) - num_positive
        self._num_images[label] += num_positive > 0
        self._num_detections[label] += len(det_scores)
        if not len(det_scores):
            return
        order = np.argsort(-det_scores, kind="stable")
        outcomes = np.full(len(order), _FALSE_POSITIVE, np.int8)
        if len(gt_boxes):
            iou = pairwise_iou(det_boxes[order], gt_boxes, self.pixel_inclusive)
            best = iou.argmax(axis=1)
            claimed = np.zeros(len(gt_boxes), bool)
            for i in np.flatnonzero(iou[np.arange(len(order)), best] > self.iou_threshold):
                box = best[i]
                if gt_difficult[box]:
                    outcomes[i] = _IGNORED
                elif not claimed[box]:
                    outcomes[i] = _TRUE_POSITIVE
                    claimed[box] = True
        kept = outcomes != _IGNORED
        self._scores[label].append(det_scores[order][kept])
        self._outcomes[label].append(outcomes[kept] == _TRUE_POSITIVE)

    def compute(self):
        """Per-class precision/recall and APs, and both mAPs, over the images added so far."""
        per_class = []
        for label in range(1, self.num_classes + 1):
            per_class.append(self._class_result(label))
        return EvaluationResult(
            num_images=self.num_images,
            per_class=tuple(per_class),
            voc07_map=_mean_of_defined([c.voc07_ap for c in per_class]),
            voc_area_map=_mean_of_defined([c.voc_area_ap for c in per_class]),
            classes_without_ground_truth=tuple(c.name for c in per_class if not c.has_ground_truth),
            iou_threshold=self.iou_threshold,
            pixel_inclusive=self.pixel_inclusive,
        )

    def _class_result(self, label):
        scores = np.concatenate(self._scores[label]) if self._scores[label] else np.zeros(0)
        is_tp = np.concatenate(self._outcomes[label]) if self._outcomes[label] else np.zeros(0, bool)
        order = np.argsort(-scores, kind="stable")
        scores, is_tp = scores[order], is_tp[order]
        true_positives = np.cumsum(is_tp, dtype=np.float64)
        false_positives = np.cumsum(~is_tp, dtype=np.float64)
        precision = true_positives / np.maximum(true_positives + false_positives, np.finfo(np.float64).eps)
        num_ground_truth = int(self._num_ground_truth[label])
        if num_ground_truth:
            recall = true_positives / num_ground_truth
            voc07_ap = voc07_average_precision(recall, precision)
            voc_area_ap = voc_area_average_precision(recall, precision)
        else:
            recall = np.full(len(scores), np.nan)
            voc07_ap = voc_area_ap = math.nan
        return ClassResult(
            label=label,
            name=self.class_names[label - 1],
            num_images=int(self._num_images[label]),
            num_ground_truth=num_ground_truth,
            num_difficult=int(self._num_difficult[label]),
            num_detections=int(self._num_detections[label]),
            num_true_positives=int(np.count_nonzero(is_tp)),
            voc07_ap=float(voc07_ap),
            voc_area_ap=float(voc_area_ap),
            scores=scores,
            is_true_positive=is_tp,
            precision=precision,
            recall=recall,
        )

    def _pixel_scale(self, where, image_height, image_width):
        if not self.relative_boxes:
            return np.ones(4)
        if image_height is None or image_width is None:
            raise ValueError(f"{where}: relative_boxes=True needs image_height and image_width")
        if not (image_height > 0 and image_width > 0):
            raise ValueError(f"{where}: image size {image_height}x{image_width} is not positive")
        return np.array([image_height, image_width, image_height, image_width], np.float64)

    @staticmethod
    def _boxes(where, field, boxes):
        boxes = np.asarray([] if boxes is None else boxes, dtype=np.float64)
        if boxes.size == 0:
            return np.zeros((0, 4))
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"{where}: {field} must have shape [N, 4] ([ymin, xmin, ymax, xmax]), got {boxes.shape}")
        if not np.all(np.isfinite(boxes)):
            raise ValueError(f"{where}: {field} has non-finite coordinates")
        inverted = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
        if len(inverted):
            raise ValueError(
                f"{where}: {field}[{inverted[0]}] = {boxes[inverted[0]].tolist()} has ymax < ymin or xmax < xmin "
                "(boxes are [ymin, xmin, ymax, xmax])"
            )
        return boxes

    def _labels(self, where, field, labels, count):
        labels = self._vector(where, field, labels, count)
        if labels.size and not np.all(labels == np.round(labels)):
            raise ValueError(f"{where}: {field} must be integers")
        labels = labels.astype(np.int64)
        bad = labels[(labels < 1) | (labels > self.num_classes)]
        if len(bad):
            raise ValueError(
                f"{where}: {field} has label {bad[0]}, outside 1..{self.num_classes} "
                "(0 is background and is not evaluated)"
            )
        return labels

    @staticmethod
    def _vector(where, field, values, count):
        values = np.asarray([] if values is None else values).reshape(-1)
        if len(values) != count:
            raise ValueError(f"{where}: {field} has {len(values)} entries, expected {count} (one per box)")
        return values if values.size else values.astype(np.float64)
