"""Where evaluation results go: TensorBoard (APs, mAPs, a PR curve per class), metrics.jsonl, the console table.

TensorBoard tags, with ``tag_prefix="eval"``:

* ``eval/mAP_VOC07``, ``eval/mAP_VOC_area``, ``eval/num_images``
* ``eval/AP_VOC07/<class>``, ``eval/AP_VOC_area/<class>``
* with COCO metrics: ``eval/COCO/AP``, ``eval/COCO/AP50``, ``eval/COCO/AP75``,
  ``eval/COCO/AP_small``, ``eval/COCO/AP_medium``, ``eval/COCO/AP_large``, ``eval/AP_COCO/<class>``
* ``eval/pr_curve/<class>/pr_curves``: TensorBoard's PR-curve plugin format

Undefined values (NaN: a class without ground truth, a COCO area range with no boxes)
are left out of TensorBoard, written as ``null`` in metrics.jsonl and as ``-`` in the table.

The PR curve of a class is sampled at ``num_thresholds`` score thresholds evenly spaced
in [0, 1] (detection scores are softmax probabilities): at threshold t, true/false
positives are the matched/unmatched detections scoring >= t, false negatives the
ground-truth boxes left, true negatives 0 (a detector has none to count). Difficult
boxes and the detections ignored on them are in none of the counts.
"""

import json
import math
import os
import re
import time

import numpy as np
import tensorflow as tf  # noqa: F401  (tf1 below is tf.compat.v1)

from tf_compat import tf1

PR_CURVE_PLUGIN_NAME = "pr_curves"
# The metrics.jsonl fields a best checkpoint may be chosen by (higher is better): the evaluator's --best_metric
# and the trainer's.
BEST_METRICS = ("voc07_map", "voc_area_map", "coco_ap", "coco_ap50")
DEFAULT_PR_THRESHOLDS = 101

_COCO_SCALARS = (
    ("AP", "ap"), ("AP50", "ap50"), ("AP75", "ap75"),
    ("AP_small", "ap_small"), ("AP_medium", "ap_medium"), ("AP_large", "ap_large"),
)  # fmt: skip


def _is_defined(value):
    return value is not None and not math.isnan(value)


def tag_safe(name):
    """A class name as a TensorBoard tag component (letters, digits, ``._-``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_") or "_"


def _varint(value):
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def pr_curve_plugin_content(num_thresholds):
    """TensorBoard's ``PrCurvePluginData(version=0, num_thresholds=n)`` serialized.

    Its two fields are written by hand (field 2, varint) so that writing PR curves needs
    TensorFlow's own protos only, not the tensorboard package; the tests check the bytes
    against tensorboard's ``raw_data_pb`` where it is installed.
    """
    return b"\x10" + _varint(int(num_thresholds))


def pr_curve_data(scores, is_true_positive, num_ground_truth, num_thresholds=DEFAULT_PR_THRESHOLDS):
    """[6, num_thresholds] float32: TP, FP, TN, FN, precision, recall at thresholds linspace(0, 1)."""
    if num_thresholds < 2:
        raise ValueError(f"num_thresholds must be >= 2, got {num_thresholds}")
    thresholds = np.linspace(0.0, 1.0, num_thresholds)
    scores = np.asarray(scores, np.float64)
    is_tp = np.asarray(is_true_positive, bool)
    tp_scores = np.sort(scores[is_tp])
    fp_scores = np.sort(scores[~is_tp])
    true_positives = len(tp_scores) - np.searchsorted(tp_scores, thresholds, side="left")
    false_positives = len(fp_scores) - np.searchsorted(fp_scores, thresholds, side="left")
    false_negatives = num_ground_truth - true_positives
    # TensorBoard's own pr_curve op divides by max(1e-7, ...), so empty bins read 0.
    precision = true_positives / np.maximum(true_positives + false_positives, 1e-7)
    recall = true_positives / max(num_ground_truth, 1e-7)
    return np.stack(
        [true_positives, false_positives, np.zeros(num_thresholds), false_negatives, precision, recall]
    ).astype(np.float32)


def _pr_curve_value(name, data, num_thresholds):
    metadata = tf1.SummaryMetadata(
        display_name=name,
        summary_description="",
        plugin_data=tf1.SummaryMetadata.PluginData(
            plugin_name=PR_CURVE_PLUGIN_NAME, content=pr_curve_plugin_content(num_thresholds)
        ),
    )
    return tf1.Summary.Value(
        tag=f"{name}/pr_curves", metadata=metadata, tensor=tf1.make_tensor_proto(data, dtype=tf1.float32)
    )


def evaluation_summary(result, coco=None, tag_prefix="eval", num_pr_thresholds=DEFAULT_PR_THRESHOLDS):
    """A ``tf.compat.v1.Summary`` with the scalars and PR curves listed in the module docstring."""
    summary = tf1.Summary()

    def scalar(tag, value):
        if _is_defined(value):
            summary.value.add(tag=f"{tag_prefix}/{tag}", simple_value=float(value))

    scalar("mAP_VOC07", result.voc07_map)
    scalar("mAP_VOC_area", result.voc_area_map)
    scalar("num_images", result.num_images)
    for cls in result.per_class:
        scalar(f"AP_VOC07/{tag_safe(cls.name)}", cls.voc07_ap)
        scalar(f"AP_VOC_area/{tag_safe(cls.name)}", cls.voc_area_ap)
    if coco is not None:
        for tag, field in _COCO_SCALARS:
            scalar(f"COCO/{tag}", getattr(coco, field))
        for name, value in coco.per_class_ap.items():
            scalar(f"AP_COCO/{tag_safe(name)}", value)
    for cls in result.per_class:
        if cls.has_ground_truth:
            data = pr_curve_data(cls.scores, cls.is_true_positive, cls.num_ground_truth, num_pr_thresholds)
            name = f"{tag_prefix}/pr_curve/{tag_safe(cls.name)}"
            summary.value.append(_pr_curve_value(name, data, num_pr_thresholds))
    return summary


def write_summaries(writer, global_step, result, coco=None, tag_prefix="eval", num_pr_thresholds=DEFAULT_PR_THRESHOLDS):
    """Adds :func:`evaluation_summary` to ``writer`` (a ``tf.compat.v1.summary.FileWriter``) at global_step and flushes.

    FileWriter needs graph mode (eager execution disabled), as the evaluator runs.
    """
    summary = evaluation_summary(result, coco, tag_prefix, num_pr_thresholds)
    writer.add_summary(summary, int(global_step))
    writer.flush()
    return summary


def _json_number(value):
    return float(value) if _is_defined(value) else None


def metrics_record(global_step, result, coco=None, checkpoint_path=None):
    """One metrics.jsonl entry as a dict (NaN becomes None)."""
    per_class = {}
    for cls in result.per_class:
        entry = {
            "voc07_ap": _json_number(cls.voc07_ap),
            "voc_area_ap": _json_number(cls.voc_area_ap),
            "num_images": cls.num_images,
            "num_ground_truth": cls.num_ground_truth,
        }
        if coco is not None:
            entry["coco_ap"] = _json_number(coco.per_class_ap.get(cls.name, math.nan))
        per_class[cls.name] = entry
    record = {
        "global_step": int(global_step),
        "checkpoint_path": checkpoint_path,
        "wall_time": time.time(),
        "num_images": result.num_images,
        "voc07_map": _json_number(result.voc07_map),
        "voc_area_map": _json_number(result.voc_area_map),
        "voc_box_convention": "devkit" if result.pixel_inclusive else "continuous",
    }
    if coco is not None:
        record.update({f"coco_{field}": _json_number(getattr(coco, field)) for _, field in _COCO_SCALARS})
    record["classes_without_ground_truth"] = list(result.classes_without_ground_truth)
    record["per_class"] = per_class
    return record


def append_metrics_jsonl(path, record):
    """Appends one record as one JSON line (strict JSON: no NaN) and returns it."""
    line = json.dumps(record, allow_nan=False, sort_keys=False)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(line + "\n")
    return record


def read_metrics_jsonl(path):
    """Every record of a metrics.jsonl file, oldest first; a bad line raises naming the file and line."""
    records = []
    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON line ({err})") from err
    return records


def _cell(value, digits=4):
    return f"{value:.{digits}f}" if _is_defined(value) else "-"


def describe_voc_convention(pixel_inclusive):
    if pixel_inclusive:
        return "VOC devkit convention (pixel-inclusive boxes: xmax - xmin + 1 wide)"
    return "continuous boxes (xmax - xmin wide; not the VOC devkit's convention)"


def format_table(result, coco=None):
    """The per-class table for the console: counts, VOC07 AP, VOC area AP (and COCO AP), then the means."""
    headers = ["class", "images", "objects", "difficult", "detections", "AP VOC07", "AP VOC area"]
    if coco is not None:
        headers.append("AP COCO")
    rows = []
    for cls in result.per_class:
        row = [
            cls.name,
            str(cls.num_images),
            str(cls.num_ground_truth),
            str(cls.num_difficult),
            str(cls.num_detections),
            _cell(cls.voc07_ap),
            _cell(cls.voc_area_ap),
        ]
        if coco is not None:
            row.append(_cell(coco.per_class_ap.get(cls.name, math.nan)))
        rows.append(row)
    defined = sum(cls.has_ground_truth for cls in result.per_class)
    mean_row = [f"mAP ({defined} classes)", str(result.num_images), "", "", ""]
    mean_row += [_cell(result.voc07_map), _cell(result.voc_area_map)]
    if coco is not None:
        mean_row.append(_cell(coco.ap))
    widths = [max(len(r[i]) for r in [headers, *rows, mean_row]) for i in range(len(headers))]

    def line(cells):
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(line(headers))
    lines = [f"VOC APs: {describe_voc_convention(result.pixel_inclusive)}"
             + ("; COCO AP: pycocotools, continuous boxes" if coco is not None else ""),
             line(headers), rule, *map(line, rows), rule, line(mean_row)]
    if coco is not None:
        lines.append(
            "COCO: " + "  ".join(f"{tag}={_cell(getattr(coco, field), 3)}" for tag, field in _COCO_SCALARS)
        )
    if result.classes_without_ground_truth:
        lines.append(
            "no ground truth (AP undefined, left out of mAP): " + ", ".join(result.classes_without_ground_truth)
        )
    return "\n".join(lines)
