"""Converted datasets by name, and the tf.data pipeline the trainer and evaluator share.

Every converted dataset describes itself in `dataset_info.json` (written by tf_convert_data.py),
so any of them is opened with `get_dataset(name, split, dataset_dir)` without a hand-written
module. The names SSD-Tensorflow users know (`pascalvoc_2007`, `pascalvoc_2012`,
`pascalvoc_0712`) are the output names to give the converter for those datasets; for them the
description must also list the 20 VOC classes, so that class ids match SSD-Tensorflow's.

A dataset converted from COCO JSON also records ``coco_category_ids`` ({"<class id>": <COCO category
id>}); `DatasetSpec.coco_category_ids` holds it, None for other datasets and older descriptions.
"""

import dataclasses
import json
import os

import tensorflow as tf
from absl import logging

from datasets import label_map, shard_check, tfrecord_schema

DATASET_INFO = "dataset_info.json"
# dataset_info.json key: {"<class id>": <COCO category id>}, written only for datasets converted from COCO JSON.
COCO_CATEGORY_IDS = "coco_category_ids"

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

# name -> the classes the description must hold (ids 1.. in this order).
NAMED_DATASETS = {
    "pascalvoc_2007": VOC_CLASSES,
    "pascalvoc_2012": VOC_CLASSES,
    "pascalvoc_0712": VOC_CLASSES,
}


class DatasetError(ValueError):
    """A converted dataset or one of its splits cannot be found or read."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    split_name: str
    dataset_dir: str
    file_pattern: str  # glob of the split's shards
    files: tuple  # the shards, as listed in the description
    num_samples: int  # images in the split
    num_objects: int
    num_classes: int  # object classes + 1 (background)
    labels_to_names: dict  # {0: 'none', 1: ..., ...}
    info: dict  # the parsed dataset_info.json
    coco_category_ids: dict | None = None  # {class id: COCO category id} for a dataset converted from COCO JSON


def read_dataset_info(dataset_dir):
    path = os.path.join(dataset_dir, DATASET_INFO)
    if not tf.io.gfile.exists(path):
        raise DatasetError(
            f"{dataset_dir} has no {DATASET_INFO}: it is not a converted dataset "
            f"(run tf_convert_data.py --dataset_dir=<VOC or labelImg folder> --output_dir={dataset_dir})"
        )
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            return json.loads(f.read())
    except (OSError, ValueError, tf.errors.OpError) as err:
        raise DatasetError(f"{path}: cannot read the dataset description ({err})") from None


def coco_category_ids_of(info, dataset_dir):
    """``info``'s {class id: COCO category id} (ints), or None when it has none (VOC, YOLO, and descriptions
    written before the key existed); raises DatasetError naming the file when the key is malformed."""
    recorded = info.get(COCO_CATEGORY_IDS)
    if recorded is None:
        return None
    try:
        mapping = {int(class_id): category_id for class_id, category_id in recorded.items()}
        usable = all(isinstance(v, int) and not isinstance(v, bool) for v in mapping.values())
    except (AttributeError, TypeError, ValueError):
        usable = False
    if not usable:
        raise DatasetError(f"{os.path.join(dataset_dir, DATASET_INFO)}: '{COCO_CATEGORY_IDS}' must map class ids "
                           f"to integer COCO category ids, got {recorded!r}")
    return dict(sorted(mapping.items()))


def get_dataset(name, split_name, dataset_dir):
    """The DatasetSpec of `split_name` in the converted dataset at `dataset_dir`.

    `name` is the converter's output name (or None/'' for whatever the directory holds).
    """
    info = read_dataset_info(dataset_dir)
    held = info.get("name")
    if name and name != held:
        raise DatasetError(f"{dataset_dir} holds dataset '{held}', not '{name}' (pass --dataset_name={held})")
    classes = {int(class_id): class_name for class_id, class_name in info["classes"].items()}
    expected = NAMED_DATASETS.get(held)
    if expected is not None and tuple(classes[i] for i in sorted(classes) if i) != expected:
        raise DatasetError(f"{dataset_dir}: '{held}' must have the 20 VOC classes in order, found "
                           f"{[classes[i] for i in sorted(classes) if i]}")
    splits = info.get("splits", {})
    if split_name not in splits:
        raise DatasetError(f"{dataset_dir}: dataset '{held}' has no split '{split_name}' (it has {sorted(splits)})")
    split = splits[split_name]
    if not split["num_images"]:
        raise DatasetError(f"{dataset_dir}: split '{split_name}' of '{held}' has no images")
    files = tuple(os.path.join(dataset_dir, f) for f in split["files"])
    missing = [f for f in files if not tf.io.gfile.exists(f)]
    if missing:
        raise DatasetError(f"{dataset_dir}: split '{split_name}' is missing {len(missing)} shard files, first {missing[0]}")
    classes.setdefault(label_map.BACKGROUND_ID, label_map.BACKGROUND_NAME)
    return DatasetSpec(
        name=held,
        split_name=split_name,
        dataset_dir=dataset_dir,
        file_pattern=os.path.join(dataset_dir, split["file_pattern"]),
        files=files,
        num_samples=int(split["num_images"]),
        num_objects=int(split["num_objects"]),
        num_classes=int(info["num_classes"]),
        labels_to_names=dict(sorted(classes.items())),
        info=info,
        coco_category_ids=coco_category_ids_of(info, dataset_dir),
    )


def usable_records(spec, files):
    """``(files, record counts)`` a run can read: every shard's framing is walked first
    (datasets/shard_check.py); a damaged shard is named in a warning and only its records before the
    damage are read. Raises DatasetError when no shard has a readable record."""
    kept, counts, lost, new = [], [], [], False
    for path in files:
        scan, scanned_now = _scan(path)
        new = new or scanned_now
        if scan.problem:
            lost.append(scan)
        if scan.records:
            kept.append(path)
            counts.append(scan.records)
    if not kept:
        raise DatasetError(f"{spec.dataset_dir}: no shard of split '{spec.split_name}' has a readable record "
                           f"(first: {lost[0].describe()}); re-run tf_convert_data.py")
    if lost and new:
        logging.warning("Split '%s' of %s: %d damaged shard(s); reading %d of its %d images", spec.split_name,
                        spec.dataset_dir, len(lost), sum(counts), spec.num_samples)
    return kept, counts


# (path, size, mtime) -> ShardScan: a process checks (and warns about) each shard once.
_SCANS = {}


def _scan(path):
    """(the shard's ShardScan, whether it was scanned now rather than taken from :data:`_SCANS`)."""
    try:
        stat = os.stat(path)
    except OSError as err:
        raise DatasetError(f"{path}: cannot read the shard ({err.strerror or err})") from None
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key in _SCANS:
        return _SCANS[key], False
    try:
        scan = shard_check.scan_shard(path)
    except OSError as err:
        raise DatasetError(f"{path}: cannot read the shard ({err.strerror or err})") from None
    if scan.problem:
        logging.warning("Damaged shard %s; re-run tf_convert_data.py to write it again", scan.describe())
    _SCANS[key] = scan
    return scan, True


def shard_scan(path):
    """The framing scan of one shard (datasets/shard_check.py), walked once per process and file
    version: :func:`usable_records` has usually walked it already."""
    return _scan(path)[0]


def read_records(spec):
    """The serialized examples of ``spec``'s split in file order, the readable records only
    (see :func:`usable_records`)."""
    files, counts = usable_records(spec, sorted(spec.files) or sorted(tf.io.gfile.glob(spec.file_pattern)))
    return tf.data.Dataset.from_tensor_slices((files, counts)).flat_map(_read_shard)


def _read_shard(path, count):
    # Exactly the records the framing check found; a record whose data fails its checksum (damage
    # the framing cannot see) ends this shard for the epoch with TensorFlow's warning, not the run.
    return tf.data.TFRecordDataset(path).take(tf.cast(count, tf.int64)).ignore_errors(log_warning=True)


def build_dataset(
    spec,
    is_training,
    seed=None,
    num_readers=4,
    num_parallel_calls=tf.data.AUTOTUNE,
    shuffle_buffer_size=2048,
    repeat=None,
):
    """tf.data.Dataset of parsed examples (dicts from `tfrecord_schema.parse_example`), unbatched.

    Training: shard order shuffled, shards read `num_readers` at a time (interleaved, in parallel),
    examples shuffled in a `shuffle_buffer_size` buffer, repeated `repeat` times (None: forever).
    Evaluation: every example once (or `repeat` times), in shard order. With a seed the order is
    reproducible. Build it under the caller's device scope (the CPU for the trainer).
    """
    files = sorted(spec.files) or sorted(tf.io.gfile.glob(spec.file_pattern))
    if not files:
        raise DatasetError(f"{spec.dataset_dir}: no shard files match {spec.file_pattern}")
    files, counts = usable_records(spec, files)
    if is_training:
        dataset = tf.data.Dataset.from_tensor_slices((files, counts))
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.interleave(
            _read_shard,
            cycle_length=max(1, min(num_readers, len(files))),
            block_length=1,
            num_parallel_calls=max(1, min(num_readers, len(files))),
            deterministic=True,
        )
        dataset = dataset.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.repeat(repeat)
    else:
        dataset = read_records(spec)
        if repeat is not None and repeat != 1:
            dataset = dataset.repeat(repeat)
    return dataset.map(tfrecord_schema.parse_example, num_parallel_calls=num_parallel_calls, deterministic=True)
