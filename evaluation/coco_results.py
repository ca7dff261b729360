"""The evaluated detections as a COCO results file (``eval_ssd_network.py --detections_file``).

The file is the JSON list COCO's tools and evaluation server read::

    [{"image_id": 139, "category_id": 62, "bbox": [x, y, width, height], "score": 0.93}, ...]

with exactly the detections the evaluator scored (after --select_threshold, NMS and --keep_top_k),
boxes in pixels of the original image, continuous (``width = xmax - xmin``), as
:func:`evaluation.coco_metrics.coco_datasets` turns them for pycocotools.

* ``image_id``: the COCO image id for a record converted from COCO JSON, whose ``source_id`` is
  ``<root label>/<JSON path>/<image id>`` (:mod:`datasets.coco_json`): its last ``/`` component,
  an integer. Any other record (VOC, YOLO, labelImg) keeps its source_id string: pycocotools needs
  integer ids, so the file is meant for COCO-sourced splits; for others it is a per-image dump.
* ``category_id``: the original COCO category id when the dataset recorded the mapping
  (``coco_category_ids`` in ``dataset_info.json``); otherwise our class id (1..K).

Scoring the file against the original JSON with pycocotools (``COCO.loadRes``, ``COCOeval``,
maxDets 1, 10, 100) gives the COCO numbers the evaluator reports, when the split holds all the
JSON's images (else restrict ``COCOeval.params.imgIds`` to the split's) and every category is a class.
The file keeps up to --keep_top_k detections per image, as the VOC metrics use them; COCOeval keeps
the best 100 per image and category, in the evaluator and in the user's run alike.
"""

import json
import os

import tensorflow as tf

from datasets import sources
from evaluation import coco_metrics

STEP_PLACEHOLDER = "{step}"


def coco_root_labels(info):
    """The root labels (first source_id component) of the roots ``info`` (dataset_info.json) says were read
    as COCO JSON. Known by root, not guessed from the id: a VOC id such as ``VOC2007/000005`` ends in
    digits too."""
    roots = info.get("sources") or []
    labels = sources.root_labels([root["path"] for root in roots])
    return frozenset(label for label, root in zip(labels, roots) if root.get("layout") == "coco")


def coco_image_id(source_id, coco_roots):
    """The COCO image id of a record's source_id when it comes from one of the ``coco_roots`` (labels):
    the integer last ``/`` component of ``<root label>/<JSON path>/<image id>``; else the source_id (str)."""
    text = source_id.decode("utf-8", "replace") if isinstance(source_id, bytes) else str(source_id)
    parts = text.split("/")
    if len(parts) >= 3 and parts[0] in coco_roots and parts[-1].isascii() and parts[-1].isdigit():
        return int(parts[-1])
    return text


def detections_path_problem(path):
    """Why ``path`` (a --detections_file, maybe with ``{step}``) cannot be written, or None; checked
    before an evaluation so a long run does not end without its file."""
    if not path:
        return None
    folder = os.path.dirname(path) or "."
    if STEP_PLACEHOLDER not in path and tf.io.gfile.isdir(path):
        example = os.path.join(path, "detections.json")
        return f"--detections_file {path} is a directory; give a file path (e.g. {example})"
    if not tf.io.gfile.isdir(folder):
        what = "is not a directory" if tf.io.gfile.exists(folder) else "does not exist"
        return f"--detections_file {path}: its folder {folder} {what}"
    return None


def path_for_step(path, global_step):
    """``path`` with ``{step}`` replaced by the checkpoint's global step (one file per checkpoint)."""
    return path.replace(STEP_PLACEHOLDER, str(int(global_step)))


def results_of(evaluator, source_ids, coco_roots=frozenset(), category_ids=None):
    """The COCO results list of ``evaluator``'s kept images; ``source_ids`` are the images' source_ids in
    the order they were added (:func:`coco_image_id` with ``coco_roots``), ``category_ids`` ({class id:
    COCO category id}) maps the labels, if given."""
    images = evaluator.images
    if len(source_ids) != len(images):
        raise ValueError(f"{len(source_ids)} source_ids for {len(images)} evaluated images")
    _, detections = coco_metrics.coco_datasets(evaluator)  # image ids there are 1..N in the order added
    image_ids = [coco_image_id(source_id, coco_roots) for source_id in source_ids]
    for detection in detections:
        detection["image_id"] = image_ids[detection["image_id"] - 1]
        if category_ids is not None:
            detection["category_id"] = int(category_ids[detection["category_id"]])
    return detections


def write_results(path, detections):
    """Writes ``detections`` to ``path`` as JSON, aside then renamed: a reader never sees half a file."""
    temporary = f"{path}.tmp"
    with tf.io.gfile.GFile(temporary, "w") as stream:
        stream.write(json.dumps(detections, allow_nan=False))
    tf.io.gfile.rename(temporary, path, overwrite=True)
    return path
