"""COCO JSON annotation files: finding them in a dataset root, reading them in bounded memory, and
turning each COCO image into an AnnotatedItem whose annotation is already parsed.

Reading. A COCO train file is ~450 MB of JSON, most of it segmentation polygons; ``json.load`` would
need several times that in Python objects. The file is streamed with ijson (C backend) once per
top-level array (``categories``, ``images``, ``annotations``, in any order in the file) and only what
a box needs is kept: per image its id, file_name, width, height; per annotation its category, box,
iscrowd and position. Segmentation and keypoints are never kept.

Meaning of the fields:
- ``bbox`` is ``[x, y, width, height]`` in pixels; it becomes ``xmin=x, xmax=x+width`` (pixels), so the
  converter normalises with the real image size even when the JSON's width/height disagree with it.
- ``iscrowd=1`` boxes become the ignored ("difficult") boxes, as pycocotools treats them.
- Category ids may be sparse (COCO's 1..90): the class list (``labels.txt``) is the categories' names
  (normalised like every class name) in category-id order, ids dense 1..K; ``--label_map`` instead
  matches the names. Two categories with the same name, or an empty name, stop with an error. The
  converter records each class's category id in ``dataset_info.json`` (``coco_category_ids``), so that
  detections can be written back with COCO's ids (``eval_ssd_network.py --detections_file``).
- Images without annotations are kept. COCO has no "truncated": it is always 0.
- ``source_id`` is ``<root label>/<JSON path relative to the root, without .json>/<image id>`` (the
  file's stem when it lies outside the root), e.g. ``coco/annotations/instances_val2017/139``, so
  detections can be mapped back to the COCO image id. The record's ``filename`` is, as for VOC,
  ``<root label>/<image path relative to the root>``. Apart from those two fields and the record
  order (and VOC's truncated flags, which COCO cannot carry), a VOC dataset written as COCO JSON
  (difficult as iscrowd) converts to the same records.

Reported and dropped (``dropped object``, field ``annotations[i]``): an annotation whose image id or
category id is unknown, a malformed bbox (not 4 finite numbers) or one of negative size. Reported and
skipped (``skipped image``, field ``images[i]``): a duplicate image id (the first entry is kept), an
image without a usable file_name, a file_name that is absolute or climbs out with ``..``; a missing
image file is reported by the converter as for VOC. A file that is not JSON, or not COCO, stops the
run with one error naming the file (and, for bad JSON, the position). NaN and Infinity are not JSON
(Python's ``json.dump`` writes them by default): such a file is refused at their position.

Where the images are (the image folder of one JSON file): ``--images_dir`` when given, file_name
relative to it. Otherwise the first of these folders that holds the file's first image:
1. for ``<root>/annotations/<prefix>_<name>.json`` (COCO's ``instances_train2017.json``):
   ``<root>/<name>/`` then ``<root>/images/<name>/``;
2. the JSON's own folder (Roboflow's ``train/_annotations.coco.json``, images beside it), then its
   ``images/`` subfolder;
3. for a JSON in ``annotations/``: the root, then ``<root>/images/``.
When none holds it, the first existing candidate is used and each missing image is reported.

Which files, which splits (``--dataset_dir``): the COCO files of a root are the ``*.json`` files at
the root, in ``annotations/`` and in its direct subfolders (``train/``, ``valid/``...) whose first
64 kB show a top-level ``images``, ``annotations`` or ``categories`` key (big files are not loaded
to detect them). One file and plain split
names: its images are split by a seeded shuffle (``--test_fraction``, ``--split_seed``), as for
labelImg folders. Several files: ``--splits`` must map every split to a file, ``name=file`` with the
file relative to the root or to its ``annotations/`` (``trainval=instances_train2017.json``); a
folder holding one COCO file may be named instead (``trainval=train``). With ``--annotations``,
those files are read instead of searching, and a mapping names them by path or file name.
"""

import dataclasses
import io
import json
import math
import os
import re

import ijson

from datasets import conversion_report as report
from datasets import label_map, sources, voc_xml

PEEK_BYTES = 64 * 1024  # enough for the info/licenses header that precedes COCO's big arrays
COCO_KEYS = ("images", "annotations", "categories")
EXACT_POSITION_MAX_BYTES = 16 * 1024 * 1024  # bad JSON up to this size is re-read to give its line and column
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclasses.dataclass(slots=True)
class CocoObject:
    """A COCO annotation as the converter's object (the attributes of voc_xml.ObjectAnnotation); messages
    name it ``annotations[i]``. Slots, and a shared empty ``problems``, because COCO train has 860k of them."""

    index: int
    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: int
    truncated: int
    problems: tuple | list
    annotation_field: str

    @property
    def field(self):
        return self.annotation_field


@dataclasses.dataclass
class CocoFile:
    """What one COCO file held that the conversion needs."""

    path: str
    image_folder: str
    images: list  # (position in images[], image id, file_name, width, height), good entries only
    objects_by_image: dict  # image id -> [CocoObject]
    categories: dict  # category id -> normalised name
    num_annotations: int  # entries in annotations[], kept or not


# ----------------------------------------------------------------------------- detection


def _peek_top_level_keys(path):
    try:
        with open(path, "rb") as f:
            head = f.read(PEEK_BYTES)
    except OSError:
        return set()
    keys = set()
    try:
        for prefix, event, value in ijson.parse(io.BytesIO(_strip_bom(head))):
            if prefix == "" and event == "map_key":
                keys.add(value)
    except ijson.JSONError:
        pass  # the peek ends mid-file, or the file is not JSON
    return keys


def looks_like_coco(path):
    """Whether the file's first bytes are a JSON object with a COCO top-level key (reads at most 64 kB)."""
    return bool(_peek_top_level_keys(path) & set(COCO_KEYS))


def find_coco_files(root):
    """The COCO JSON files of a root: at the root, in annotations/ and in direct subfolders, sorted."""
    candidates = []
    for folder in [root] + sorted(os.path.join(root, name) for name in sources.listdir_or_empty(root)
                                  if os.path.isdir(os.path.join(root, name))):
        candidates += sorted(os.path.join(folder, name) for name in sources.listdir_or_empty(folder)
                             if name.lower().endswith(".json"))
    return [path for path in candidates if os.path.isfile(path) and looks_like_coco(path)]


# ----------------------------------------------------------------------------- streaming read


def _strip_bom(data):
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data


class _CountingReader:
    """A binary file that counts the bytes handed to the parser, to say where bad JSON is."""

    def __init__(self, f):
        self.f, self.offset = f, 0
        if f.read(3) != b"\xef\xbb\xbf":
            f.seek(0)

    def read(self, size=-1):
        data = self.f.read(size)
        self.offset += len(data)
        return data


def _json_error(path, err, offset):
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    where = f"in the {offset // 1024} kB read so far"
    try:
        if os.path.getsize(path) <= EXACT_POSITION_MAX_BYTES:
            with open(path, "rb") as f:
                json.loads(_strip_bom(f.read()), parse_constant=_refuse_constant)
    except json.JSONDecodeError as exact:
        where, detail = f"line {exact.lineno} column {exact.colno} (char {exact.pos})", exact.msg
    except (ValueError, OSError) as exact:  # NaN/Infinity, refused by _refuse_constant, or bad UTF-8
        detail = str(exact)
    return sources.SourceError(f"{path}: not valid JSON at {where}: {detail}; fix or re-export the file")


def _refuse_constant(name):
    raise ValueError(f"{name} is not valid JSON (Python's json.dump writes it unless allow_nan=False)")


def _stream(path, prefix):
    """Yields the items of the top-level array ``prefix``; raises SourceError for bad JSON."""
    try:
        f = open(path, "rb")
    except OSError as err:
        raise sources.SourceError(f"{path}: cannot read the annotation file ({err.strerror or err})") from None
    with f:
        reader = _CountingReader(f)
        try:
            yield from ijson.items(reader, f"{prefix}.item", use_float=True)
        except ijson.JSONError as err:
            raise _json_error(path, err, reader.offset) from None


def _top_level_kinds(path):
    """{key: 'array' | 'object' | 'value'} of the top-level object, or None when the top level is not one.
    Walks every event in Python: used only to explain an empty or absent array."""
    kinds, pending_key = {}, None
    with open(path, "rb") as f:
        reader = _CountingReader(f)
        try:
            for prefix, event, value in ijson.parse(reader):
                if prefix == "" and event == "start_array" and not kinds and pending_key is None:
                    return None
                if prefix == "" and event == "map_key":
                    pending_key = value
                elif pending_key is not None:
                    kinds[pending_key] = {"start_array": "array", "start_map": "object"}.get(event, "value")
                    pending_key = None
        except ijson.JSONError as err:
            raise _json_error(path, err, reader.offset) from None
    return kinds


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_categories(path):
    categories, names = {}, {}
    for position, entry in enumerate(_stream(path, "categories")):
        where = f"{path} [categories[{position}]]"
        if not isinstance(entry, dict) or not _is_int(entry.get("id")):
            raise sources.SourceError(f"{where}: a category needs an integer 'id', got {entry!r}")
        raw_name = entry.get("name")
        name = label_map.normalize_class_name(raw_name) if isinstance(raw_name, str) else ""
        if not name:
            raise sources.SourceError(f"{where}: category id {entry['id']} has no name ({raw_name!r}); every category "
                                      "needs a non-empty name, it becomes the class name in labels.txt")
        if entry["id"] in categories:
            raise sources.SourceError(f"{where}: category id {entry['id']} is defined twice")
        if name in names:
            raise sources.SourceError(f"{where}: category name {name!r} is used by category ids {names[name]} and "
                                      f"{entry['id']}; class names must be unique: rename one in the file")
        categories[entry["id"]] = name
        names[name] = entry["id"]
    return dict(sorted(categories.items()))


def _safe_file_name(file_name):
    """The file_name as a relative path with '/' separators, or None with the reason."""
    if not isinstance(file_name, str) or not file_name.strip():
        return None, f"no file_name ({file_name!r})"
    relative = file_name.replace("\\", "/")
    if relative.startswith("/") or _DRIVE.match(relative):
        return None, f"file_name {file_name!r} is an absolute path; it must be relative to the image folder"
    if ".." in relative.split("/"):
        return None, f"file_name {file_name!r} climbs out of the image folder with '..'"
    return relative, None


def _read_images(path, problems):
    """(good image entries, ids of the entries skipped) with each skip reported."""
    images, seen, skipped = [], {}, set()
    for position, entry in enumerate(_stream(path, "images")):
        field = f"images[{position}]"
        if not isinstance(entry, dict) or not _is_int(entry.get("id")):
            problems.append(report.Problem(path, f"{field}/id", report.SKIPPED_IMAGE, "bad image entry",
                                           f"an image needs an integer 'id', got {_short(entry)}"))
            continue
        image_id = entry["id"]
        if image_id in seen:
            problems.append(report.Problem(path, f"{field}/id", report.SKIPPED_IMAGE, "duplicate image id",
                                           f"image id {image_id} is already images[{seen[image_id]}]; the first entry "
                                           "is kept and gets the id's annotations"))
            continue
        seen[image_id] = position
        file_name, reason = _safe_file_name(entry.get("file_name"))
        if file_name is None:
            problems.append(report.Problem(path, f"{field}/file_name", report.SKIPPED_IMAGE, "bad file_name",
                                           f"image id {image_id}: {reason}"))
            skipped.add(image_id)
            continue
        width, height = entry.get("width"), entry.get("height")
        usable_size = _is_int(width) and _is_int(height) and width > 0 and height > 0
        images.append((position, image_id, file_name, width if usable_size else None, height if usable_size else None))
    return images, skipped


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _bbox(value):
    """(x, y, w, h) as floats, or None with the reason."""
    if not isinstance(value, list) or len(value) != 4 or not all(_is_number(v) for v in value):
        return None, "malformed bbox", f"bbox must be [x, y, width, height] (4 numbers), got {_short(value)}"
    x, y, w, h = (float(v) for v in value)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, "bad coordinates", f"bbox {value} is not finite"
    if w < 0 or h < 0:
        return None, "negative box size", f"bbox {value} has a negative width or height"
    return (x, y, w, h), None, None


def _read_annotations(path, image_ids, skipped_ids, categories, problems):
    objects_by_image, count = {}, 0
    for position, entry in enumerate(_stream(path, "annotations")):
        count += 1
        field = f"annotations[{position}]"
        if not isinstance(entry, dict):
            problems.append(report.Problem(path, field, report.DROPPED_OBJECT, "bad annotation entry",
                                           f"an annotation must be an object, got {_short(entry)}"))
            continue
        described = f"annotation id {entry.get('id')!r}"
        image_id, category_id = entry.get("image_id"), entry.get("category_id")
        if image_id in skipped_ids and _is_int(image_id):
            continue  # its image is skipped, and reported so
        if not _is_int(image_id) or image_id not in image_ids:
            problems.append(report.Problem(path, f"{field}/image_id", report.DROPPED_OBJECT, "unknown image id",
                                           f"{described}: image_id {image_id!r} is not in images"))
            continue
        if not _is_int(category_id) or category_id not in categories:
            problems.append(report.Problem(path, f"{field}/category_id", report.DROPPED_OBJECT, "unknown category",
                                           f"{described}: category_id {category_id!r} is not in categories"))
            continue
        box, reason, message = _bbox(entry.get("bbox"))
        if box is None:
            problems.append(report.Problem(path, f"{field}/bbox", report.DROPPED_OBJECT, reason, f"{described}: {message}"))
            continue
        crowd = entry.get("iscrowd", 0)
        object_problems = ()
        if crowd not in (0, 1) or isinstance(crowd, float):
            object_problems = [(f"{field}/difficult", f"iscrowd {crowd!r} is not 0 or 1; using 0")]
            crowd = 0
        x, y, w, h = box
        objects = objects_by_image.setdefault(image_id, [])
        objects.append(CocoObject(len(objects), categories[category_id], x, y, x + w, y + h, difficult=int(crowd),
                                  truncated=0, problems=object_problems, annotation_field=field))
    return objects_by_image, count


def _check_structure(path, images, num_annotations, categories):
    """Refuses a JSON file that is not COCO, looking at its top level only when an array came up empty."""
    if images and categories:
        return
    kinds = _top_level_kinds(path)
    if kinds is None:
        raise sources.SourceError(f"{path}: not a COCO annotation file: the top level is an array, not an object "
                                  "with images, annotations and categories")
    found = ", ".join(f"{key} ({kind})" for key, kind in kinds.items()) or "none"
    for key in ("images", "annotations", "categories"):
        if key in kinds and kinds[key] != "array":
            raise sources.SourceError(f"{path}: not a COCO annotation file: '{key}' is an {kinds[key]}, not an array")
    if "images" not in kinds:
        raise sources.SourceError(f"{path}: not a COCO annotation file: no top-level 'images' array (top-level keys: "
                                  f"{found})")
    if num_annotations and not categories:
        raise sources.SourceError(f"{path}: has annotations but no 'categories'; a COCO file lists its categories "
                                  "with their ids and names")


def read_coco_file(path, image_folder, problems):
    """Reads one COCO file (streamed); returns a CocoFile. Raises SourceError when it cannot be used."""
    categories = _read_categories(path)
    images, skipped_ids = _read_images(path, problems)
    image_ids = {entry[1] for entry in images}
    objects_by_image, num_annotations = _read_annotations(path, image_ids, skipped_ids, categories, problems)
    _check_structure(path, images, num_annotations, categories)
    return CocoFile(path, image_folder, images, objects_by_image, categories, num_annotations)


# ----------------------------------------------------------------------------- image folders


def _first_file_name(path):
    for entry in _stream(path, "images"):
        if isinstance(entry, dict):
            file_name, _reason = _safe_file_name(entry.get("file_name"))
            if file_name:
                return file_name
    return None


def image_folder_candidates(root, path):
    """The folders where a COCO file's images may be, in the order of the module docstring."""
    folder = os.path.dirname(path)
    in_annotations = os.path.basename(folder) == "annotations" and os.path.dirname(folder) == root
    candidates = []
    stem = os.path.splitext(os.path.basename(path))[0]
    if in_annotations and "_" in stem:
        name = stem.split("_", 1)[1]
        candidates += [os.path.join(root, name), os.path.join(root, "images", name)]
    candidates += [folder, os.path.join(folder, "images")]
    if in_annotations:
        candidates += [root, os.path.join(root, "images")]
    return list(dict.fromkeys(candidates))


def choose_image_folder(root, path):
    """The image folder of ``path`` (see the module docstring) and how it was chosen."""
    candidates = image_folder_candidates(root, path)
    first = _first_file_name(path)
    if first is not None:
        for folder in candidates:
            if os.path.isfile(os.path.join(folder, first)):
                return folder
    existing = [folder for folder in candidates if os.path.isdir(folder)]
    return existing[0] if existing else candidates[0]


# ----------------------------------------------------------------------------- splits


def _file_for_source(root, source, files, explicit):
    """The COCO file a ``--splits name=source`` entry names."""
    if explicit:
        matches = [path for path in files if path == os.path.abspath(source) or source == os.path.basename(path)]
        if len(matches) == 1:
            return matches[0]
        raise sources.SourceError(f"--splits maps a split to {source!r}, which is not one of the --annotations files "
                                  f"({', '.join(files)})")
    if os.path.isabs(source) or ".." in source.replace("\\", "/").split("/"):
        raise sources.SourceError(f"--splits ...={source}: name a COCO file relative to {root} or its annotations/, "
                                  "not an absolute path or one with '..'")
    for base in (root, os.path.join(root, "annotations")):
        candidate = os.path.join(base, source)
        if os.path.isdir(candidate):
            inside = [path for path in files if os.path.dirname(path) == candidate]
            if len(inside) == 1:
                return inside[0]
        if os.path.isfile(candidate):
            return os.path.normpath(candidate)
    listed = ", ".join(os.path.relpath(path, root) for path in files) or "none"
    raise sources.SourceError(f"--splits ...={source}: no such COCO file in {root} or its annotations/ (COCO files "
                              f"found: {listed})")


def _source_name(root, path, files, explicit):
    """The shortest ``--splits`` source that names ``path`` (Roboflow's files all share one file name)."""
    name = os.path.basename(path)
    if explicit:
        return name if [os.path.basename(other) for other in files].count(name) == 1 else path
    if os.path.dirname(path) == os.path.join(root, "annotations"):
        return name
    return os.path.relpath(path, root).replace(os.sep, "/")


def _assign_files(root, files, splits, split_sources, explicit):
    """{split: file or None}; None: the one file's images are split by the seeded shuffle."""
    if split_sources:
        unmapped = [split for split in splits if split not in split_sources]
        if unmapped and len(files) > 1:
            raise sources.SourceError(f"{root}: --splits maps some splits to COCO files but not {unmapped}; map every "
                                      "split (name=file)")
        if unmapped:
            raise sources.SourceError(f"{root}: --splits maps some splits to a COCO file but not {unmapped}; map "
                                      "every split, or give plain split names to split the one file by "
                                      "--test_fraction")
        return {split: _file_for_source(root, split_sources[split], files, explicit) for split in splits}
    if len(files) == 1:
        return {split: None for split in splits}
    listed = ", ".join(os.path.relpath(path, root) if not explicit else path for path in files)
    names = splits if len(splits) >= 2 else ["trainval", "test"]
    example = ",".join(f"{split}={_source_name(root, path, files, explicit)}" for split, path in zip(names, files))
    raise sources.SourceError(f"{root}: {len(files)} COCO files ({listed}); say which split each one is, e.g. "
                              f"--splits={example}")


def _merge_categories(read_files):
    """({category id: name} of all the root's files in category-id order); the files must agree on shared ids."""
    merged, origin = {}, {}
    for coco in read_files:
        for category_id, name in coco.categories.items():
            if category_id in merged and merged[category_id] != name:
                raise sources.SourceError(f"category id {category_id} is {merged[category_id]!r} in "
                                          f"{origin[category_id]} but {name!r} in {coco.path}; the files must share "
                                          "one category list")
            merged[category_id], origin[category_id] = name, coco.path
    merged = dict(sorted(merged.items()))
    names = list(merged.values())
    if len(set(names)) != len(names):
        duplicated = sorted({name for name in names if names.count(name) > 1})
        raise sources.SourceError(f"the COCO files {', '.join(c.path for c in read_files)} give the class names "
                                  f"{duplicated} different category ids; the files must share one category list")
    return merged


def _items(coco, root, root_index, label, split):
    source_stem = os.path.splitext(os.path.relpath(coco.path, root))[0].replace(os.sep, "/")
    if source_stem.startswith("../"):
        source_stem = os.path.splitext(os.path.basename(coco.path))[0]
    items = []
    for position, image_id, file_name, width, height in coco.images:
        annotation = voc_xml.Annotation(file_name, width, height, coco.objects_by_image.get(image_id, []),
                                        [] if width else [(f"images[{position}]/width",
                                                           "width/height missing or unusable; using the image's own "
                                                           "size")])
        items.append(sources.AnnotatedItem(split, f"{label}/{source_stem}/{image_id}", coco.path, root_index,
                                           str(image_id), annotation_format="parsed", annotation=annotation,
                                           image_path=os.path.join(coco.image_folder, file_name)))
    coco.objects_by_image = {}  # the items hold them now
    return items


def discover_coco(root, root_index, label, splits, problems, split_sources=None, test_fraction=0.2, split_seed=0,
                  annotation_files=(), images_dir=None):
    """The root's items per split, from its COCO files (or ``annotation_files``); returns sources.RootItems."""
    explicit = bool(annotation_files)
    if explicit:
        files = [os.path.abspath(path) for path in annotation_files]
        for path in files:
            if not os.path.isfile(path):
                what = "is not a file" if os.path.exists(path) else "does not exist"
                raise sources.SourceError(f"--annotations {path} {what}")
    else:
        files = find_coco_files(root)
        if not files:
            raise sources.SourceError(f"{root}: no COCO JSON file (a *.json with images/annotations/categories) at the "
                                      "root, in annotations/ or in a direct subfolder")
    assigned = _assign_files(root, files, list(splits), split_sources or {}, explicit)
    read = {}
    for path in dict.fromkeys(path for path in assigned.values() if path is not None) or files[:1]:
        folder = os.path.abspath(images_dir) if images_dir else choose_image_folder(root, path)
        read[path] = read_coco_file(path, folder, problems)
    categories = _merge_categories(list(read.values()))
    by_split = {split: [] for split in splits}
    if all(path is None for path in assigned.values()):
        [coco] = read.values()
        by_split = sources.seeded_split(_items(coco, root, root_index, label, ""), list(splits), test_fraction,
                                        split_seed)
        how = "seeded split: " + ", ".join(f"{split} {len(items)}" for split, items in by_split.items())
        described = [_describe(coco, root, how)]
    else:
        described, items_of_file = [], {}
        for split, path in assigned.items():
            if path in items_of_file:  # one file for two splits: the converter warns about the shared images
                by_split[split] = [dataclasses.replace(item, split=split) for item in items_of_file[path]]
            else:
                by_split[split] = items_of_file[path] = _items(read[path], root, root_index, label, split)
            described.append(_describe(read[path], root, f"-> {split}"))
    return sources.RootItems(by_split, None, "COCO JSON: " + "; ".join(described), tuple(categories.values()),
                             {name: category_id for category_id, name in categories.items()})


def _describe(coco, root, how):
    def shown(path):
        relative = os.path.relpath(path, root)
        return path if relative.startswith("..") else relative

    return (f"{shown(coco.path)} ({len(coco.images)} images, {coco.num_annotations} annotations, "
            f"{len(coco.categories)} categories; images in {shown(coco.image_folder) or '.'}/) {how}")
