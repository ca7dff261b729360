"""Converts annotated images (any format datasets.formats reads) into sharded TFRecords.

Two passes over the images, each parallel over worker processes:
1. parse every annotation (safe XML) and find its image; the class list comes from here
   (sorted names, or the user's label map);
2. read and check each image, fix or drop its boxes, and serialize the Example.
The parent shuffles the images of a split with a seed before pass 2 and writes the k-th good
example to shard k % num_shards, so shards are balanced and the output is reproducible. Shards
go to a temporary folder first and replace the previous output only when the run succeeds.

A bad file never costs a good one: every problem becomes a `Problem` (file, field, action,
reason) in the report and the summary, and the run continues.
"""

import dataclasses
import json
import math
import multiprocessing
import os
import random
import shutil
import tempfile
import time

import tensorflow as tf
from absl import logging

from datasets import conversion_report as report
from datasets import formats, image_checks, label_map, sources, tfrecord_schema, voc_xml, yolo_text
from datasets.dataset_factory import COCO_CATEGORY_IDS, DATASET_INFO

IMAGES_PER_SHARD = 1024
PROGRESS_EVERY_S = 5.0
MAX_LOGGED_LOSSES = 50  # skipped images / dropped objects logged one per line; the rest are in the report
UNKNOWN_CLASS_POLICIES = ("skip", "error")


class ConversionError(RuntimeError):
    """The conversion cannot go on (bad arguments, unknown class with --unknown_class=error)."""


@dataclasses.dataclass(frozen=True)
class ConversionOptions:
    splits: tuple = ("trainval", "test")
    label_map_path: str | None = None
    unknown_class: str = "skip"  # 'skip': drop the object; 'error': stop before writing anything
    test_fraction: float = 0.2  # folders without split files: share of images in the last split
    split_seed: int = 0
    shuffle_seed: int = 0
    num_shards: int = 0  # per split; 0 chooses ceil(images / IMAGES_PER_SHARD)
    num_workers: int = 1
    keep_incomplete_images: bool = False  # keep JPEGs whose scan ends early (grey remainder), with a warning
    format: str = "auto"  # datasets.formats.FORMATS: the roots' annotation format, or detect it per root
    split_sources: dict = dataclasses.field(default_factory=dict)  # {split: source}: where a split comes from
    coco_annotations: tuple = ()  # COCO JSON files to read (--annotations) instead of searching the roots
    images_dir: str | None = None  # where COCO file_names are relative to (--images_dir)


@dataclasses.dataclass
class ConversionResult:
    output_dir: str
    info: dict
    problems: list

    @property
    def num_images(self):
        return self.info["num_images"]

    def count(self, action, reason=None):
        return sum(1 for p in self.problems if p.action == action and (reason is None or p.reason == reason))

    @property
    def lost_anything(self):
        return any(p.action in (report.SKIPPED_IMAGE, report.DROPPED_OBJECT) for p in self.problems)


def shard_filename(name, split, index, num_shards):
    return f"{name}_{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def shard_glob(name, split):
    return f"{name}_{split}-?????-of-?????.tfrecord"


# ----------------------------------------------------------------------------- pass 1: annotations


def _parse_annotation_task(item):
    try:
        return formats.read_annotation(item), None
    except FileNotFoundError:
        return None, ("annotation", "missing annotation", "file does not exist")
    except yolo_text.LabelFileError as err:
        return None, ("labels", "unreadable label file", str(err))
    except voc_xml.UnsafeXMLError as err:
        return None, ("xml", "unsafe XML", str(err))
    except voc_xml.AnnotationError as err:
        return None, ("xml", "malformed XML", str(err))
    except OSError as err:
        return None, ("annotation", "unreadable annotation", err.strerror or str(err))
    except Exception as err:  # a bug on one file must not cost the others
        return None, ("xml", "unexpected error", repr(err))


@dataclasses.dataclass
class _Pending:
    item: sources.AnnotatedItem
    annotation: voc_xml.Annotation
    image_path: str
    record_filename: str


def _resolve_items(items, parsed, indexes, roots, problems, seen_images_by_split):
    labels = sources.root_labels(roots)
    pending = []
    seen_annotations = set()
    for item, (annotation, error) in zip(items, parsed):
        key = (os.path.realpath(item.annotation_path), item.id_stem)  # a COCO file annotates many images
        if key in seen_annotations:
            problems.append(report.Problem(item.annotation_path, "id", report.WARNING, "duplicate id",
                                           f"{item.source_id}: this annotation is already in split '{item.split}' "
                                           "(its id is listed twice, or its root is given twice); kept once"))
            continue
        seen_annotations.add(key)
        if error is not None:
            field, reason, message = error
            problems.append(report.Problem(item.annotation_path, field, report.SKIPPED_IMAGE, reason, message))
            continue
        try:
            image_path = _image_path(item, annotation, indexes[item.root_index])
        except LookupError as err:
            problems.append(report.Problem(item.annotation_path, "filename", report.SKIPPED_IMAGE, "missing image", str(err)))
            continue
        if (item.id_names_image and annotation.filename
                and sources.filename_stem(annotation.filename) != item.id_stem
                and sources.filename_stem(os.path.basename(image_path)) == item.id_stem):
            problems.append(report.Problem(item.annotation_path, "filename", report.WARNING, "filename mismatch",
                                           f"<filename> {annotation.filename!r} names another image than the id "
                                           f"{item.id_stem!r}; the id names the image in the VOC layout: {image_path} "
                                           "kept with these boxes"))
        image_key = os.path.realpath(image_path)
        first = seen_images_by_split[item.split].get(image_key)
        if first is not None:
            problems.append(report.Problem(item.annotation_path, "filename", report.SKIPPED_IMAGE, "duplicate image",
                                           f"{image_path} is already annotated by {first}"))
            continue
        seen_images_by_split[item.split][image_key] = item.annotation_path
        root = roots[item.root_index]
        record_filename = os.path.join(labels[item.root_index], os.path.relpath(image_path, root))
        pending.append(_Pending(item, annotation, image_path, record_filename.replace(os.sep, "/")))
    return pending


def _image_path(item, annotation, index):
    if item.image_path is None:
        return index.resolve(item.annotation_path, annotation.filename, item.id_stem, id_first=item.id_names_image)
    if not os.path.isfile(item.image_path):
        what = "is not a file" if os.path.exists(item.image_path) else "does not exist"
        raise LookupError(f"the image {item.image_path} {what}")
    return item.image_path


def _check_cross_split_overlap(seen_images_by_split, problems):
    first_split_of = {}
    for split, images in seen_images_by_split.items():
        for image_key, annotation_path in images.items():
            if image_key in first_split_of:
                problems.append(report.Problem(annotation_path, "split", report.WARNING, "image in several splits",
                                               f"{image_key} is in '{first_split_of[image_key]}' and '{split}'"))
            else:
                first_split_of[image_key] = split


def _class_ids(pending_by_split, options, discovery):
    """{name: id} from the label map, else the source's own class list (COCO categories, YOLO names),
    else the names found in the data; enforces the unknown-class policy."""
    if options.label_map_path:
        try:
            names_by_id = label_map.read_label_map(options.label_map_path)
        except label_map.LabelMapError as err:
            raise ConversionError(str(err)) from None
        except OSError as err:
            raise ConversionError(f"label map {options.label_map_path}: {err.strerror or err}") from None
    elif (source_class_names := discovery.source_class_names()) is not None:
        names_by_id = dict(enumerate(source_class_names, start=1))
    else:
        names = {obj.name for pending in pending_by_split.values() for p in pending for obj in p.annotation.objects if obj.name}
        names_by_id = label_map.label_map_from_names(names)
    class_ids = {name: class_id for class_id, name in names_by_id.items()}
    if options.label_map_path and options.unknown_class == "error":
        unknown = [(p.item.annotation_path, obj.field, obj.name) for pending in pending_by_split.values() for p in pending
                   for obj in p.annotation.objects if obj.name and obj.name not in class_ids]
        if unknown:
            path, field, name = unknown[0]
            raise ConversionError(
                f"{len(unknown)} objects have classes not in the label map {options.label_map_path}, "
                f"first: {path} [{field}/name] {name!r} (pass --unknown_class=skip to drop them)"
            )
    return names_by_id, class_ids


# ----------------------------------------------------------------------------- pass 2: images


def clip_and_normalize(obj, width, height, class_ids, annotation_path, relative=False):
    """Returns ((ymin, xmin, ymax, xmax) relative, class id) or None, and the problems found.
    ``relative``: the object's coordinates are fractions of the image's width and height (YOLO)."""
    problems = [report.Problem(annotation_path, field, report.FIXED, "flag value", message) for field, message in obj.problems
                if field.endswith(("/difficult", "/truncated"))]
    problems += [report.Problem(annotation_path, field, report.FIXED, "class name", message)
                 for field, message in obj.problems if field.endswith("/name")]
    problems += [report.Problem(annotation_path, field, report.FIXED, "polygon as box", message)
                 for field, message in obj.problems if field.endswith("/segment")]
    # A class index (YOLO) outside the source's class list: the object cannot be named at all.
    class_problems = [(field, message) for field, message in obj.problems if field.endswith("/class")]
    if class_problems:
        field, message = class_problems[0]
        problems.append(report.Problem(annotation_path, field, report.DROPPED_OBJECT, "unknown class", message))
        return None, problems
    coordinate_problems = [(field, message) for field, message in obj.problems if "/bndbox" in field]
    if coordinate_problems:
        field, message = coordinate_problems[0]
        problems.append(report.Problem(annotation_path, field, report.DROPPED_OBJECT, "bad coordinates", message))
        return None, problems
    if not obj.name:
        problems.append(report.Problem(annotation_path, f"{obj.field}/name", report.DROPPED_OBJECT, "missing class name", "empty <name>"))
        return None, problems
    if obj.name not in class_ids:
        problems.append(report.Problem(annotation_path, f"{obj.field}/name", report.DROPPED_OBJECT, "unknown class",
                                       f"{obj.name!r} is not in the label map"))
        return None, problems
    box = (obj.xmin, obj.ymin, obj.xmax, obj.ymax)
    if relative:
        box = (obj.xmin * width, obj.ymin * height, obj.xmax * width, obj.ymax * height)
    xmin, xmax = min(max(box[0], 0.0), width), min(max(box[2], 0.0), width)
    ymin, ymax = min(max(box[1], 0.0), height), min(max(box[3], 0.0), height)
    if xmax <= xmin or ymax <= ymin:
        problems.append(report.Problem(annotation_path, f"{obj.field}/bndbox", report.DROPPED_OBJECT, "zero-area box",
                                       f"(xmin, ymin, xmax, ymax) = {box} has no area inside the {width}x{height} image"))
        return None, problems
    if (xmin, ymin, xmax, ymax) != box:
        problems.append(report.Problem(annotation_path, f"{obj.field}/bndbox", report.CLIPPED_BOX, "box outside image",
                                       f"{box} clipped to {(xmin, ymin, xmax, ymax)} in the {width}x{height} image"))
    return ((ymin / height, xmin / width, ymax / height, xmax / width), class_ids[obj.name]), problems


# image_checks note field -> (action, reason) in the report.
_IMAGE_NOTES = {
    "image": (report.FIXED, "image re-encoded"),
    "exif/orientation": (report.WARNING, "EXIF orientation ignored"),
    "image/incomplete": (report.WARNING, "incomplete image kept"),
}


def _convert_image_task(task):
    pending, class_ids, keep_incomplete = task
    annotation, path = pending.annotation, pending.item.annotation_path
    try:
        annotated_size = (annotation.width, annotation.height) if annotation.width else None
        try:
            image = image_checks.read_and_check_image(pending.image_path, annotated_size, keep_incomplete)
        except image_checks.ImageError as err:
            return None, [report.Problem(pending.image_path, "image", report.SKIPPED_IMAGE, "unreadable image", str(err))], None
        problems = [report.Problem(path, field, report.FIXED, "size from image", message) for field, message in annotation.problems]
        problems += [report.Problem(pending.image_path, field, *_IMAGE_NOTES[field], message)
                     for field, message in image.notes]
        if annotated_size and annotated_size != (image.width, image.height):
            problems.append(report.Problem(path, "size", report.FIXED, "size from image",
                                           f"the annotation says {annotated_size[0]}x{annotated_size[1]}, the image is "
                                           f"{image.width}x{image.height}; using the image"))
        boxes, labels, texts, difficult, truncated = [], [], [], [], []
        for obj in annotation.objects:
            kept, object_problems = clip_and_normalize(obj, image.width, image.height, class_ids, path,
                                                       relative=annotation.relative_coordinates)
            problems += object_problems
            if kept is None:
                continue
            box, class_id = kept
            boxes.append(box)
            labels.append(class_id)
            texts.append(obj.name)
            difficult.append(obj.difficult)
            truncated.append(obj.truncated)
        example = tfrecord_schema.make_example(
            image.encoded, image.format, image.height, image.width, boxes, labels, texts, difficult, truncated,
            filename=pending.record_filename, source_id=pending.item.source_id,
        )
        stats = {"labels": labels, "difficult": difficult}
        return example.SerializeToString(), problems, stats
    except Exception as err:  # a bug on one image must not cost the others
        return None, [report.Problem(pending.image_path, "image", report.SKIPPED_IMAGE, "unexpected error", repr(err))], None


# ----------------------------------------------------------------------------- orchestration


class _Progress:
    def __init__(self, what, total, log):
        self.what, self.total, self.done, self.log = what, total, 0, log
        self.start = self.last = time.monotonic()

    def step(self):
        self.done += 1
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            self.log("%s: %d/%d images (%.1f images/s, ETA %.0f s)", self.what, self.done, self.total, rate, eta)


def _map(pool, function, tasks, chunksize):
    if pool is None:
        return map(function, tasks)
    return pool.imap(function, tasks, chunksize=chunksize)


def _pool_context():
    # Workers only parse XML, read images and build protobufs; fork avoids re-importing TensorFlow.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def _write_split(pool, name, split, pending, class_ids, names_by_id, options, temp_dir, problems, log):
    ordered = list(pending)
    random.Random(f"{options.shuffle_seed}/{split}").shuffle(ordered)
    num_shards = options.num_shards or math.ceil(len(ordered) / IMAGES_PER_SHARD)
    num_shards = max(1, min(num_shards, len(ordered))) if ordered else 0
    files = [shard_filename(name, split, i, num_shards) for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(os.path.join(temp_dir, f)) for f in files]
    objects_per_class = {names_by_id[i]: 0 for i in sorted(names_by_id)}
    written = num_objects = num_difficult = without_objects = 0
    progress = _Progress(f"{name}/{split}", len(ordered), log)
    try:
        tasks = ((p, class_ids, options.keep_incomplete_images) for p in ordered)
        for serialized, image_problems, stats in _map(pool, _convert_image_task, tasks, chunksize=4):
            problems.extend(image_problems)
            progress.step()
            if serialized is None:
                continue
            writers[written % num_shards].write(serialized)
            written += 1
            num_objects += len(stats["labels"])
            num_difficult += sum(stats["difficult"])
            without_objects += not stats["labels"]
            for class_id in stats["labels"]:
                objects_per_class[names_by_id[class_id]] += 1
    finally:
        for writer in writers:
            writer.close()
    return {
        "num_images": written,
        "num_objects": num_objects,
        "num_difficult_objects": num_difficult,
        "images_without_objects": without_objects,
        "objects_per_class": objects_per_class,
        "num_shards": num_shards,
        "file_pattern": shard_glob(name, split),
        "files": files,
    }


def _check_output_path(output_dir):
    """Refuses, before any input is read, an --output_dir that is a file or cannot be written."""
    path = os.path.abspath(output_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConversionError(f"--output_dir {output_dir} is a file, not a directory; choose another path")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConversionError(f"--output_dir {output_dir}: {existing} is a file, not a directory; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConversionError(f"--output_dir {output_dir}: {existing} is not writable (permission denied); choose a "
                              "directory you can write to")


def _check_output_dir(output_dir, name):
    info_path = os.path.join(output_dir, DATASET_INFO)
    if os.path.isfile(info_path):
        try:
            with open(info_path, encoding="utf-8") as f:
                existing = json.load(f).get("name")
        except (OSError, ValueError):
            existing = None
        if existing and existing != name:
            raise ConversionError(f"{output_dir} already holds dataset '{existing}' ({info_path}); "
                                  f"convert '{name}' into another --output_dir")


def _publish(temp_dir, output_dir, name, info, names_by_id, problems):
    report.write_report(os.path.join(output_dir, report.REPORT_JSON), os.path.join(output_dir, report.REPORT_TEXT), info, problems)
    if not info["num_images"]:
        return  # nothing usable: keep whatever a previous run published, only the report says why
    for entry in os.listdir(output_dir):
        if entry.startswith(f"{name}_") and entry.endswith(".tfrecord") and "-of-" in entry:
            os.remove(os.path.join(output_dir, entry))
    for entry in sorted(os.listdir(temp_dir)):
        os.replace(os.path.join(temp_dir, entry), os.path.join(output_dir, entry))
    label_map.write_label_map(os.path.join(output_dir, label_map.LABELS_FILENAME), names_by_id)
    info_tmp = os.path.join(output_dir, f".{DATASET_INFO}.tmp")
    with open(info_tmp, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    os.replace(info_tmp, os.path.join(output_dir, DATASET_INFO))


def convert(dataset_dirs, output_dir, output_name="dataset", options=ConversionOptions(), quiet=False):
    """Converts the dataset roots into `output_dir`; returns a ConversionResult.

    Raises ConversionError or sources.SourceError for unusable arguments (nothing is written then).
    `quiet` logs progress and the summary at debug level (problems are still warnings).
    """
    log = logging.debug if quiet else logging.info
    if options.unknown_class not in UNKNOWN_CLASS_POLICIES:
        raise ConversionError(f"unknown_class must be one of {UNKNOWN_CLASS_POLICIES}, got {options.unknown_class!r}")
    if not output_name or any(c in output_name for c in "/\\*?[]") or output_name.startswith("."):
        raise ConversionError(f"output name {output_name!r} must be a plain file-name prefix")
    _check_output_path(output_dir)
    splits = tuple(options.splits)
    found = formats.discover(dataset_dirs, splits, options.format, options.test_fraction, options.split_seed,
                             options.split_sources, options.coco_annotations, options.images_dir)
    roots, indexes, problems = found.roots, found.indexes, found.problems
    for statement in found.statements:
        log("%s", statement)
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as err:
        raise ConversionError(f"--output_dir {output_dir}: cannot create it ({err.strerror or err})") from None
    _check_output_dir(output_dir, output_name)
    start = time.monotonic()
    num_workers = max(1, int(options.num_workers))
    pool = _pool_context().Pool(num_workers) if num_workers > 1 else None
    temp_dir = tempfile.mkdtemp(prefix=f".converting-{output_name}-", dir=output_dir)
    try:
        pending_by_split, seen_images_by_split = {}, {split: {} for split in splits}
        for split in splits:
            items = found.by_split[split]
            # Parsed sources (COCO) have nothing to do in pass 1: sending their annotations to the workers and
            # back would only copy them.
            parse_pool = None if all(item.annotation_format == "parsed" for item in items) else pool
            parsed = list(_map(parse_pool, _parse_annotation_task, items, chunksize=16))
            pending_by_split[split] = _resolve_items(items, parsed, indexes, roots, problems, seen_images_by_split)
        _check_cross_split_overlap(seen_images_by_split, problems)
        names_by_id, class_ids = _class_ids(pending_by_split, options, found)
        split_infos = {
            split: _write_split(pool, output_name, split, pending_by_split[split], class_ids, names_by_id, options,
                                temp_dir, problems, log)
            for split in splits
        }
        info = {
            "schema_version": tfrecord_schema.SCHEMA_VERSION,
            "name": output_name,
            "num_classes": len(names_by_id) + 1,
            "classes": {str(i): n for i, n in label_map.labels_to_names(names_by_id).items()},
            "labels_file": label_map.LABELS_FILENAME,
            "num_images": sum(s["num_images"] for s in split_infos.values()),
            "num_objects": sum(s["num_objects"] for s in split_infos.values()),
            "splits": split_infos,
            "sources": [{"path": root, "layout": layout} for root, layout in zip(roots, found.layouts)],
            "options": {key: value for key, value in dataclasses.asdict(options).items() if key != "num_workers"},
            "skipped_images": sum(1 for p in problems if p.action == report.SKIPPED_IMAGE),
            "dropped_objects": sum(1 for p in problems if p.action == report.DROPPED_OBJECT),
            "report_file": report.REPORT_JSON,
        }
        category_ids = found.coco_category_ids(names_by_id)
        if category_ids is not None:
            # Lets the evaluator write detections with the source's own category ids (--detections_file).
            info[COCO_CATEGORY_IDS] = {str(class_id): category_id
                                                       for class_id, category_id in category_ids.items()}
        _publish(temp_dir, output_dir, output_name, info, names_by_id, problems)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        shutil.rmtree(temp_dir, ignore_errors=True)
    elapsed = time.monotonic() - start
    losses = [p for p in problems if p.action in (report.SKIPPED_IMAGE, report.DROPPED_OBJECT)]
    for problem in losses[:MAX_LOGGED_LOSSES]:
        logging.warning("%s", problem.line())
    if len(losses) > MAX_LOGGED_LOSSES:
        logging.warning("... and %d more skipped images or dropped objects, listed in %s", len(losses) - MAX_LOGGED_LOSSES,
                        os.path.join(output_dir, report.REPORT_TEXT))
    for line in report.summary_lines(info, problems):
        log("%s", line)
    log("wrote %d images to %s in %.1f s (%.1f images/s); report in %s", info["num_images"], output_dir, elapsed,
        info["num_images"] / max(elapsed, 1e-9), os.path.join(output_dir, report.REPORT_TEXT))
    return ConversionResult(output_dir, info, problems)
