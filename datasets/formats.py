"""Which annotation format a dataset root is in, and the one entry point that finds its items.

Each format has its own module that knows its files; this one chooses between them and reads an
item's annotation in pass 1 of the conversion (``read_annotation``, run in worker processes).

Formats (``--format``):
- ``voc``: Pascal VOC layout, ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``
- ``coco``: COCO JSON files (``annotations/instances_<split>.json``, Roboflow's ``<split>/_annotations.coco.json``
  or a JSON at the root); see datasets.coco_json for where images and splits come from
- ``yolo``: YOLO text labels (``class cx cy w h``), ``images/`` + ``labels/`` or labels beside the images,
  classes from ``classes.txt`` or ``data.yaml`` (datasets.yolo_text)
- ``labelimg``: a folder of labelImg/VOC XML files, images beside them or anywhere under the folder
- ``auto`` (default): the first of the above whose files the root has, stated in one log line;
  a root matching none is refused with the list of layouts understood.
"""

import dataclasses
import os

from datasets import coco_json, sources, voc_xml, yolo_text

FORMATS = ("auto", "voc", "coco", "yolo", "labelimg")

LAYOUTS_UNDERSTOOD = (
    "Pascal VOC (Annotations/, JPEGImages/, ImageSets/Main/<split>.txt); "
    "COCO JSON (annotations/instances_<split>.json, <split>/_annotations.coco.json or a *.json at the root); "
    "YOLO text (classes.txt or data.yaml, labels/*.txt or .txt beside the images); "
    "labelImg folders (*.xml annotations beside or apart from the images)"
)

_FORMAT_NAMES = {"voc": "Pascal VOC", "coco": "COCO JSON", "yolo": "YOLO text", "labelimg": "labelImg"}


@dataclasses.dataclass
class Discovery:
    by_split: dict  # {split: [AnnotatedItem]}
    roots: list  # absolute paths; an item's root_index points here, its record file name is relative to it
    indexes: list  # per root: sources.ImageIndex, or None when that root's items name their images
    layouts: list  # per root: the format it was read as
    problems: list  # report.Problem found while discovering
    statements: list  # per root: one line saying what was found and how it was detected
    class_name_lists: list  # (root, its own class list in id order) for roots that define one (COCO, YOLO)
    category_id_maps: list = dataclasses.field(default_factory=list)  # (root, {class name: COCO category id})

    def coco_category_ids(self, names_by_id):
        """{class id: COCO category id} for ``names_by_id`` ({class id: name}) when every root is COCO JSON and
        every class is a category with the same id in all of them (a one-to-one match); else None (the
        evaluator then reports our class ids)."""
        if not self.layouts or any(layout != "coco" for layout in self.layouts):
            return None
        if len(self.category_id_maps) != len(self.layouts):
            return None
        mapping = {}
        for class_id, name in names_by_id.items():
            ids = {category_ids.get(name) for _root, category_ids in self.category_id_maps}
            if len(ids) != 1 or None in ids:
                return None
            mapping[class_id] = ids.pop()
        if len(set(mapping.values())) != len(mapping):
            return None
        return dict(sorted(mapping.items()))

    def source_class_names(self):
        """The class list the roots agree on, or None when no root defines one (VOC and labelImg take
        theirs from the data). Asked only without --label_map, which overrides the sources' lists."""
        lists = {names for _root, names in self.class_name_lists}
        if not lists:
            return None
        if len(lists) > 1:
            described = "; ".join(f"{root}: {', '.join(names)}" for root, names in self.class_name_lists)
            raise sources.SourceError(f"the dataset roots define different class lists ({described}); give "
                                      "--label_map to fix one list for all of them")
        return lists.pop()


def _has_xml(root):
    for _directory, subdirs, names in os.walk(root):
        subdirs.sort()
        if any(name.lower().endswith(".xml") for name in names):
            return True
    return False


def detect_layout(root):
    """The format of ``root`` (a directory), or raises SourceError naming the layouts understood."""
    if sources.is_voc_root(root):
        return "voc"
    if coco_json.find_coco_files(root):
        return "coco"
    if yolo_text.is_yolo_root(root):
        return "yolo"
    if _has_xml(root):
        return "labelimg"
    raise sources.SourceError(f"{root}: no annotations in a layout this converter understands; it reads "
                              f"{LAYOUTS_UNDERSTOOD} (pass --format to name the layout)")


def _check_directory(root):
    if not os.path.isdir(root):
        what = "is a file, not a directory" if os.path.exists(root) else "does not exist"
        raise sources.SourceError(f"dataset directory {root} {what}")


def discover(dataset_dirs, splits, layout="auto", test_fraction=0.2, split_seed=0, split_sources=None,
             coco_annotations=(), images_dir=None):
    """Finds every root's annotated items for ``splits``; returns a Discovery.

    ``split_sources`` ({split: source}) says where a split comes from when its name does not: a VOC
    split file name (``{'trainval': 'train'}`` reads ImageSets/Main/train.txt).

    ``coco_annotations`` (COCO JSON files) are read instead of searching the root for them, and
    ``images_dir`` is where COCO file_names are relative to (datasets.coco_json).

    Raises SourceError when a root or the split request cannot be used at all.
    """
    if layout not in FORMATS:
        raise sources.SourceError(f"--format must be one of {', '.join(FORMATS)}, got {layout!r}")
    if not dataset_dirs:
        raise sources.SourceError("no dataset directory given")
    if not splits or len(set(splits)) != len(splits):
        raise sources.SourceError(f"splits must be distinct names, got {list(splits)}")
    split_sources = dict(split_sources or {})
    unknown = sorted(set(split_sources) - set(splits))
    if unknown:
        raise sources.SourceError(f"--splits maps {unknown} to a source, but they are not among the splits {list(splits)}")
    roots = [os.path.abspath(d) for d in dataset_dirs]
    result = Discovery({split: [] for split in splits}, roots, [], [], [], [], [])
    for root_index, (root, label) in enumerate(zip(roots, sources.root_labels(roots))):
        _check_directory(root)
        root_layout = detect_layout(root) if layout == "auto" else layout
        if (coco_annotations or images_dir) and root_layout != "coco":
            raise sources.SourceError(f"{root}: --annotations and --images_dir are for COCO JSON, but this root was "
                                      f"read as {_FORMAT_NAMES[root_layout]}")
        if root_layout == "voc":
            found = sources.discover_voc(root, root_index, label, splits, result.problems, split_sources)
        elif root_layout == "coco":
            found = coco_json.discover_coco(root, root_index, label, splits, result.problems, split_sources,
                                            test_fraction, split_seed, coco_annotations, images_dir)
        elif root_layout == "yolo":
            found = yolo_text.discover(root, root_index, label, splits, result.problems, split_sources, test_fraction,
                                       split_seed)
        else:
            if split_sources:
                raise sources.SourceError(f"{root}: a labelImg folder has no split files or folders, so --splits cannot "
                                          "map a split to a source there; give plain split names (the last gets "
                                          "--test_fraction)")
            found = sources.discover_labelimg(root, root_index, label, splits, test_fraction, split_seed)
        for split, items in found.by_split.items():
            result.by_split[split].extend(items)
        result.indexes.append(found.index)
        result.layouts.append(root_layout)
        how = "detected" if layout == "auto" else "read as --format=" + layout + ":"
        result.statements.append(f"{root}: {how} {found.description}")
        if found.class_names is not None:
            result.class_name_lists.append((root, tuple(found.class_names)))
        if found.category_ids is not None:
            result.category_id_maps.append((root, dict(found.category_ids)))
    return result


def read_annotation(item):
    """Pass 1: the item's annotation (a voc_xml.Annotation); raises OSError, voc_xml.AnnotationError or
    yolo_text.LabelFileError."""
    if item.annotation_format == "parsed":
        return item.annotation
    if item.annotation_format == "voc_xml":
        return voc_xml.read_annotation(item.annotation_path)
    if item.annotation_format == "yolo_text":
        return yolo_text.read_label_file(item.annotation_path, item.class_names)
    raise ValueError(f"unknown annotation format {item.annotation_format!r}")
