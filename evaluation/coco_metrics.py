"""COCO-style box metrics (AP@[.5:.95], AP50, AP75, AP small/medium/large, AR) through pycocotools.

The images a :class:`~evaluation.detection_metrics.DetectionEvaluator` kept are turned
into pycocotools' ground-truth and result objects in memory (no JSON files) and scored
by ``COCOeval`` unchanged, so the numbers are pycocotools' own. Conversions:

* boxes become ``[x, y, width, height]`` in pixels, continuous (a width is ``xmax - xmin``,
  COCO's own convention) whatever convention the evaluator's VOC matching uses;
* a ground-truth box's ``area`` (which decides small < 32², medium, large > 96²) is its
  box area, since VOC-style data has no masks;
* VOC ``difficult`` boxes become ``iscrowd=1``, which is how COCOeval ignores a region:
  detections on them count neither as true nor as false positives. (COCOeval measures
  overlap with a crowd box as intersection over the detection's own area.)
* image ids are 1..N in the order the images were added; category ids are the labels.

pycocotools is imported when a function here runs, not at import time, so the VOC
metrics work without it.
"""

import contextlib
import dataclasses
import io
import math

import numpy as np

_COCO_STAT_NAMES = (
    "ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large",
    "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class CocoMetrics:
    """COCOeval's 12 summary numbers (NaN where COCOeval says -1: nothing to score) and per-class AP@[.5:.95]."""

    ap: float
    ap50: float
    ap75: float
    ap_small: float
    ap_medium: float
    ap_large: float
    ar1: float  # recall names keep COCO's maxDets 1, 10, max_detections
    ar10: float
    ar100: float
    ar_small: float
    ar_medium: float
    ar_large: float
    per_class_ap: dict  # class name -> AP@[.5:.95], NaN for a class without ground truth
    summary_text: str  # COCOeval.summarize()'s printout


def _import_pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:
        raise ImportError(
            "COCO metrics need pycocotools, which is not installed: `pip install pycocotools` "
            "(or evaluate without COCO metrics)"
        ) from err
    return COCO, COCOeval


def _xywh(boxes):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([boxes[:, 1], boxes[:, 0], boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], axis=1)


def coco_datasets(evaluator):
    """(ground-truth dict, detection list) in COCO's JSON layout, from the evaluator's kept images."""
    images, annotations, detections = [], [], []
    for coco_image_id, record in enumerate(evaluator.images, start=1):
        image = {"id": coco_image_id, "file_name": str(record.image_id)}
        if record.height is not None and record.width is not None:
            image.update(height=record.height, width=record.width)
        images.append(image)
        for box, label, difficult in zip(
            _xywh(record.gt_boxes), record.gt_labels, record.gt_difficult
        ):
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCOeval treats id 0 as "unmatched"
                    "image_id": coco_image_id,
                    "category_id": int(label),
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": int(difficult),
                }
            )
        for box, score, label in zip(
            _xywh(record.det_boxes), record.det_scores, record.det_labels
        ):
            detections.append(
                {
                    "image_id": coco_image_id,
                    "category_id": int(label),
                    "bbox": [float(v) for v in box],
                    "score": float(score),
                }
            )
    categories = [{"id": label, "name": name} for label, name in enumerate(evaluator.class_names, start=1)]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def compute_coco_metrics(evaluator, max_detections=100):
    """Scores the evaluator's images with pycocotools' COCOeval (bbox).

    Args:
      evaluator: a DetectionEvaluator built with keep_images=True (the default).
      max_detections: COCO's largest maxDets (detections per image and class); 100 as in COCO.
    Returns:
      CocoMetrics.
    """
    COCO, COCOeval = _import_pycocotools()
    if evaluator.num_images == 0:
        raise ValueError("no images were added to the evaluator; nothing to score")
    ground_truth, detections = coco_datasets(evaluator)
    printout = io.StringIO()
    with contextlib.redirect_stdout(printout):
        coco_gt = COCO()
        coco_gt.dataset = ground_truth
        coco_gt.createIndex()
        if detections:
            coco_dt = coco_gt.loadRes(detections)
        else:  # loadRes cannot take an empty list
            coco_dt = COCO()
            coco_dt.dataset = {"images": ground_truth["images"], "categories": ground_truth["categories"],
                               "annotations": []}  # fmt: skip
            coco_dt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        coco_eval.params.maxDets = [1, 10, int(max_detections)]
        coco_eval.evaluate()
        coco_eval.accumulate()
        summary_start = printout.tell()
        coco_eval.summarize()
    stats = {name: (math.nan if value < 0 else float(value)) for name, value in zip(_COCO_STAT_NAMES, coco_eval.stats)}
    # precision: [iou thresholds, recall points, classes, area ranges (0 = all), maxDets (-1 = largest)]
    precision = coco_eval.eval["precision"]
    per_class_ap = {}
    for index, label in enumerate(coco_eval.params.catIds):
        values = precision[:, :, index, 0, -1]
        values = values[values > -1]
        per_class_ap[evaluator.class_names[label - 1]] = float(values.mean()) if values.size else math.nan
    return CocoMetrics(**stats, per_class_ap=per_class_ap, summary_text=printout.getvalue()[summary_start:].rstrip())
