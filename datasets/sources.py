"""Finds the annotated images of each split in dataset roots: Pascal VOC layout or labelImg folders.

- VOC layout: `Annotations/<id>.xml`, `JPEGImages/<id>.<ext>`, `ImageSets/Main/<split>.txt`.
  A root without a requested split's file contributes nothing to it (VOC2012 has no test split).
  The id names the image: the XML's <filename> is used only when no image has the id's name (a
  <filename> naming another image, a common labelImg leftover after renaming, is reported).
- labelImg folders (anything else): every `*.xml` under the root, the image next to it or anywhere
  under the root (by the XML's <filename>, else by the XML's name), extensions in any case. There are
  no split files: the images are split by a seeded shuffle of their sorted paths, reproducibly.
"""

import dataclasses
import os
import random

from datasets import conversion_report as report

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class SourceError(ValueError):
    """A dataset root or split request cannot be used at all."""


@dataclasses.dataclass(frozen=True)
class AnnotatedItem:
    split: str
    source_id: str  # '<root label>/<id>': unique across merged roots
    annotation_path: str  # the file the annotation comes from, named in every message about it
    root_index: int
    id_stem: str  # the image id: the split-file entry (VOC) or the XML's name without extension
    id_names_image: bool = False  # VOC layout: the id, not <filename>, says which image is annotated
    # How pass 1 reads annotation_path (datasets.formats.read_annotation): 'voc_xml', 'yolo_text', or
    # 'parsed' when the source was parsed whole during discovery and `annotation` holds the result (COCO).
    annotation_format: str = "voc_xml"
    annotation: object = None  # a voc_xml.Annotation, for annotation_format 'parsed'
    image_path: str | None = None  # the source names the image file itself (COCO file_name, YOLO pairs)
    class_names: tuple = ()  # class index -> name, for formats whose files hold indices (YOLO)


def is_image_name(name):
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_voc_root(root):
    return os.path.isdir(os.path.join(root, "Annotations")) and os.path.isdir(os.path.join(root, "ImageSets", "Main"))


class ImageIndex:
    """Image files under a folder, by stem, to find the image an annotation describes."""

    def __init__(self, folder, recursive):
        self.by_stem = {}
        walker = os.walk(folder) if recursive else [(folder, [], listdir_or_empty(folder))]
        for directory, subdirs, names in walker:
            subdirs.sort()
            for name in sorted(names):
                if is_image_name(name):
                    stem = os.path.splitext(name)[0]
                    self.by_stem.setdefault(stem, []).append(os.path.join(directory, name))

    def resolve(self, annotation_path, annotated_filename, id_stem, id_first=False):
        """Returns the image path, or raises LookupError with the reason. The image is looked up by
        <filename> then by the id, or by the id first with ``id_first`` (VOC layout)."""
        wanted_name = os.path.basename(annotated_filename.replace("\\", "/")) if annotated_filename else None
        stems = []
        if wanted_name:
            stems.append(filename_stem(wanted_name))
        stems.insert(0 if id_first else len(stems), id_stem)
        for stem in dict.fromkeys(stems):
            candidates = self.by_stem.get(stem, [])
            if len(candidates) == 1:
                return candidates[0]
            if not candidates:
                continue
            for prefer in (
                lambda path: os.path.basename(path) == wanted_name,
                lambda path: os.path.dirname(path) == os.path.dirname(annotation_path),
            ):
                chosen = [path for path in candidates if prefer(path)]
                if len(chosen) == 1:
                    return chosen[0]
            raise LookupError(f"several images could be meant: {', '.join(candidates)}")
        raise LookupError(f"no image file found for <filename> {annotated_filename!r} or id {id_stem!r}")


def filename_stem(filename):
    """The image stem an annotation's <filename> names ('a/b/x.JPG' -> 'x'; a name without an image
    extension is taken whole)."""
    name = os.path.basename(filename.replace("\\", "/"))
    return os.path.splitext(name)[0] if is_image_name(name) else name


def listdir_or_empty(folder):
    """The names in ``folder``, or none when it cannot be listed (missing, not a folder, no permission)."""
    try:
        return os.listdir(folder)
    except OSError:
        return []


def root_labels(roots):
    """Short names for the roots ('VOC2007', 'VOC2012', ...), made unique with a suffix."""
    labels, seen = [], {}
    for root in roots:
        label = os.path.basename(os.path.normpath(root)) or "root"
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label}-{seen[label]}")
    return labels


def _voc_split_items(root, root_index, label, split, problems, file_stem):
    split_file = os.path.join(root, "ImageSets", "Main", f"{file_stem}.txt")
    if not os.path.isfile(split_file):
        return None
    items = []
    with open(split_file, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            tokens = line.split()
            if not tokens:
                continue
            image_id = tokens[0]
            if "/" in image_id or "\\" in image_id or image_id in (".", ".."):
                problems.append(report.Problem(split_file, f"line {number}", report.SKIPPED_IMAGE, "bad id",
                                               f"{image_id!r} is not a plain image id"))
                continue
            items.append(AnnotatedItem(split, f"{label}/{image_id}", os.path.join(root, "Annotations", f"{image_id}.xml"),
                                       root_index, image_id, id_names_image=True))
    return items


def _labelimg_items(root, root_index, label):
    paths = []
    for directory, subdirs, names in os.walk(root):
        subdirs.sort()
        paths.extend(os.path.join(directory, name) for name in sorted(names) if name.lower().endswith(".xml"))
    items = []
    for path in paths:
        relative = os.path.splitext(os.path.relpath(path, root))[0].replace(os.sep, "/")
        items.append(AnnotatedItem("", f"{label}/{relative}", path, root_index, os.path.splitext(os.path.basename(path))[0]))
    return items


def seeded_split(items, splits, test_fraction, seed):
    """Assigns items to splits: with two splits the last gets round(n * test_fraction) of them."""
    ordered = sorted(items, key=lambda item: item.source_id)
    if len(splits) == 1:
        return {splits[0]: [dataclasses.replace(item, split=splits[0]) for item in ordered]}
    if len(splits) != 2:
        raise SourceError(f"folders without split files can be split in one or two parts, not {len(splits)}: {splits}")
    if not 0.0 <= test_fraction <= 1.0:
        raise SourceError(f"test fraction must be in [0, 1], got {test_fraction}")
    random.Random(seed).shuffle(ordered)
    num_test = int(round(len(ordered) * test_fraction))
    chosen_test = {item.source_id for item in ordered[:num_test]}
    by_split = {split: [] for split in splits}
    for item in sorted(ordered, key=lambda item: item.source_id):
        split = splits[1] if item.source_id in chosen_test else splits[0]
        by_split[split].append(dataclasses.replace(item, split=split))
    return by_split


@dataclasses.dataclass
class RootItems:
    """What one dataset root holds, as a format's discovery found it."""

    by_split: dict  # {split: [AnnotatedItem]}
    index: ImageIndex | None  # finds images by the annotation's name; None when every item names its image
    description: str  # one line for the log: what was found ('Pascal VOC layout: trainval 412, test 88')
    class_names: tuple | None = None  # the source's own class list in id order (COCO categories, YOLO names)
    category_ids: dict | None = None  # COCO only: {class name: the JSON's category id}


def discover_voc(root, root_index, label, splits, problems, split_sources=None):
    """The VOC root's items per split; ``split_sources`` maps a split to another split file's name."""
    found_any = False
    by_split = {split: [] for split in splits}
    for split in splits:
        file_stem = (split_sources or {}).get(split, split)
        if "/" in file_stem or "\\" in file_stem or file_stem in (".", ".."):
            raise SourceError(f"--splits {split}={file_stem}: a VOC split is a file name in ImageSets/Main, not a path")
        items = _voc_split_items(root, root_index, label, split, problems, file_stem)
        if items is None:
            problems.append(report.Problem(root, f"ImageSets/Main/{file_stem}.txt", report.WARNING, "split missing",
                                           f"no '{file_stem}' split file in this root; it adds nothing to split "
                                           f"'{split}'"))
            continue
        found_any = True
        by_split[split] = items
    if not found_any:
        wanted = [(split_sources or {}).get(split, split) for split in splits]
        raise SourceError(f"{root}: none of the split files {wanted} is in ImageSets/Main")
    counts = ", ".join(f"{split} {len(items)}" for split, items in by_split.items())
    return RootItems(by_split, ImageIndex(os.path.join(root, "JPEGImages"), recursive=False),
                     f"Pascal VOC layout (ImageSets/Main split files: {counts})")


def discover_labelimg(root, root_index, label, splits, test_fraction, split_seed):
    items = _labelimg_items(root, root_index, label)
    if not items:
        raise SourceError(f"{root}: no Pascal VOC layout (Annotations/, ImageSets/Main/) and no *.xml annotations")
    by_split = seeded_split(items, list(splits), test_fraction, split_seed)
    counts = ", ".join(f"{split} {len(split_items)}" for split, split_items in by_split.items())
    return RootItems(by_split, ImageIndex(root, recursive=True),
                     f"labelImg folder ({len(items)} XML files, seeded split: {counts})")
