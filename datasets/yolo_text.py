"""YOLO text datasets (Ultralytics, Darknet, labelImg's YOLO mode, Roboflow exports): finding the images
and their label files, the class list, and parsing one label file.

Layouts understood, in the order they are looked for in a root:
- ``data.yaml`` (or ``data.yml``) whose ``train``/``val``/``test`` entries name image folders or image
  list files (one image path a line, ``./`` for the list's folder, as Ultralytics' coco.yaml has them;
  a listed image that is missing is reported), relative to its ``path`` entry (itself relative to the
  yaml when not absolute) or to the yaml's own folder;
- ``images/<split>/`` split folders (``images/train``, ``images/val``, ...);
- ``images/`` without split folders, or no ``images/`` at all (labels beside the images): every image
  under it, split by a seeded shuffle like labelImg folders (``--test_fraction``, ``--split_seed``).
An image's label file is the Ultralytics mirror (the last ``images`` folder of its path replaced by
``labels``, extension ``.txt``), else the ``.txt`` beside the image.

Class names come from ``data.yaml``'s ``names`` (a list, or ``{index: name}``) or from ``classes.txt``
(one name per line, line 1 is class 0), at the root or in ``labels/``; class index i gets id i + 1.

A label file has one object per line, ``class cx cy w h``, fractions of the image's width and height.
A line with a class followed by an even number (>= 6) of coordinates is a segmentation polygon: its
bounding box is kept and reported as fixed. Any other unusable line drops its object only, reported
with the file and line (field ``line N/...``); coordinates outside the image are clipped by the
converter and reported. An empty file is an image without objects; an image without a label file is
kept as a background image (no objects) with one warning per image, as Ultralytics trains on them.
A .txt label file without an image is reported as a skipped image ('missing image'); classes.txt and
read-me or licence .txt files are not label files.
"""

import dataclasses
import math
import os

import yaml

from datasets import conversion_report as report
from datasets import label_map, sources, voc_xml

MAX_LABEL_BYTES = 16 * 1024 * 1024  # a label file is a few hundred bytes; refuse to buffer absurd files
MAX_CLASS_FILE_BYTES = 16 * 1024 * 1024
MAX_IMAGE_LIST_BYTES = 256 * 1024 * 1024  # COCO's train2017.txt, 118k paths, is ~5 MB
CLASS_FILES = ("data.yaml", "data.yml", "classes.txt")
SPLIT_KEYS = ("train", "val", "test")  # the split entries Ultralytics writes in data.yaml
IMAGES_SUBFOLDERS = "split folders in images/"


class LabelFileError(ValueError):
    """A label file cannot be used at all (too big, not UTF-8)."""


@dataclasses.dataclass
class LabelLine(voc_xml.ObjectAnnotation):
    """One object of a label file; ``index`` is its line number, which every message names."""

    @property
    def field(self):
        return f"line {self.index}"


# ----------------------------------------------------------------------------- label files (pass 1)


def _read_capped(path, limit, what, error_type):
    """The file's text; raises error_type when it is too big or not UTF-8. A LabelFileError's message
    leaves the path out: the conversion report names the file beside it."""
    where = "" if error_type is LabelFileError else f"{path}"
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise error_type(f"{where + ': ' if where else ''}more than the {limit} bytes allowed for {what}")
    try:
        return data.decode("utf-8-sig")  # editors on Windows often start files with a BOM
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise error_type(f"{where + ', ' if where else ''}line {line}: {what} is not UTF-8 text ({error.reason} at "
                         f"byte {error.start}); save it as UTF-8") from None


def _class_name(token, field, class_names, problems):
    try:
        value = float(token)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value != int(value):
        problems.append((f"{field}/class", f"class {token!r} is not a class index (an integer)"))
        return ""
    index = int(value)
    if not 0 <= index < len(class_names):
        problems.append((f"{field}/class", f"class index {index} is not in the class list (0..{len(class_names) - 1})"))
        return ""
    return class_names[index]


def _coordinates(tokens, field, problems):
    values = []
    for token in tokens:
        value = voc_xml.parse_finite(token, f"{field}/bndbox", problems)
        if value is None:
            return None
        values.append(value)
    return values


def parse_line(tokens, number, class_names):
    """The LabelLine for one non-blank line's tokens; its problems say why it cannot be used."""
    field = f"line {number}"
    problems = []
    box = (None, None, None, None)
    name = _class_name(tokens[0], field, class_names, problems)
    count = len(tokens) - 1
    if count == 4:
        values = _coordinates(tokens[1:], field, problems)
        if values is not None:
            cx, cy, w, h = values
            if w <= 0 or h <= 0:
                problems.append((f"{field}/bndbox", f"width {tokens[3]} and height {tokens[4]} must be > 0"))
            else:
                box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    elif count >= 6 and count % 2 == 0:
        values = _coordinates(tokens[1:], field, problems)
        if values is not None:
            xs, ys = values[0::2], values[1::2]
            box = (min(xs), min(ys), max(xs), max(ys))
            problems.append((f"{field}/segment", f"segmentation polygon of {count // 2} points kept as its bounding box"))
    else:
        problems.append((f"{field}/bndbox", f"{len(tokens)} values; expected 5 (class cx cy w h) or a class and an "
                                            "even number (>= 6) of polygon coordinates"))
    return LabelLine(index=number, name=name, xmin=box[0], ymin=box[1], xmax=box[2], ymax=box[3], difficult=0,
                     truncated=0, problems=problems)


def parse_label_text(text, class_names):
    """An Annotation (relative coordinates, no size: the image gives it) of a label file's text."""
    objects = []
    for number, line in enumerate(text.split("\n"), start=1):  # only newlines end a line, as editors count them
        tokens = line.split()
        if tokens:
            objects.append(parse_line(tokens, number, class_names))
    return voc_xml.Annotation(filename=None, width=None, height=None, objects=objects, problems=[],
                              relative_coordinates=True)


def read_label_file(path, class_names):
    """Reads and parses a label file; raises OSError or LabelFileError."""
    return parse_label_text(_read_capped(path, MAX_LABEL_BYTES, "a label file", LabelFileError), class_names)


def background_annotation():
    """The annotation of an image without a label file: no objects."""
    return voc_xml.Annotation(filename=None, width=None, height=None, objects=[], problems=[],
                              relative_coordinates=True)


# ----------------------------------------------------------------------------- class list


def _checked_names(names, path):
    normalized = []
    for index, name in enumerate(names):
        if isinstance(name, bool) or not isinstance(name, (str, int, float)):
            raise sources.SourceError(f"{path}: class {index} is {name!r}, not a class name")
        clean = label_map.normalize_class_name(str(name))
        if not clean:
            raise sources.SourceError(f"{path}: class {index} has an empty name; every class index needs a name")
        if clean in normalized:
            raise sources.SourceError(f"{path}: class name {clean!r} is given twice (classes {normalized.index(clean)} "
                                      f"and {index}); class names must be distinct")
        normalized.append(clean)
    if not normalized:
        raise sources.SourceError(f"{path}: no class names")
    return tuple(normalized)


def read_classes_txt(path):
    """Class names from classes.txt: one per line, line 1 is class 0; trailing blank lines are ignored."""
    lines = _read_capped(path, MAX_CLASS_FILE_BYTES, "a class file", sources.SourceError).split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise sources.SourceError(f"{path}, line {number}: empty class name (line N names class N-1, so a blank "
                                      "line would shift the classes after it); remove the line or name the class")
    return _checked_names(lines, path)


def load_yaml(path):
    """data.yaml as plain data. Safe loading builds only plain types, never Python objects: a tag such
    as !!python/object is refused instead of running code."""
    text = _read_capped(path, MAX_CLASS_FILE_BYTES, "a data.yaml", sources.SourceError)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(error, "problem", None) or error).split())
        hint = ("; only plain YAML is read (tags such as !!python/object are refused, they could run code)"
                if "constructor" in problem else "")
        raise sources.SourceError(f"{path}{where}: not usable YAML: {problem}{hint}") from None
    if not isinstance(data, dict):
        raise sources.SourceError(f"{path}: expected a mapping with 'names' (and train/val/test folders), "
                                  f"got {type(data).__name__}")
    return data


def names_from_yaml(data, path):
    names = data.get("names")
    if isinstance(names, dict):
        keys = sorted(names, key=str)
        if not all(isinstance(key, int) and not isinstance(key, bool) for key in names) \
                or sorted(names) != list(range(len(names))):
            raise sources.SourceError(f"{path}: 'names' as a mapping must have the class indices 0..{len(names) - 1} "
                                      f"as keys, got {keys}")
        names = [names[index] for index in range(len(names))]
    elif not isinstance(names, list):
        raise sources.SourceError(f"{path}: no 'names' list (or {{index: name}} mapping) of class names")
    checked = _checked_names(names, path)
    count = data.get("nc")
    if count is not None and count != len(checked):
        raise sources.SourceError(f"{path}: nc is {count} but 'names' has {len(checked)} classes")
    return checked


# ----------------------------------------------------------------------------- layout


def is_yolo_root(root):
    """Cheap: data.yaml, label .txt files in labels/ or one folder below it, or classes.txt at the root
    unless the root's own files are labelImg XML without any label .txt (labelImg leaves a classes.txt
    in folders it saved as XML once it was switched to YOLO mode)."""
    if any(os.path.isfile(os.path.join(root, name)) for name in CLASS_FILES if name != "classes.txt"):
        return True
    if os.path.isfile(os.path.join(root, "classes.txt")):
        names = [entry.name.lower() for entry in _scandir(root) if entry.is_file()]
        has_xml = any(name.endswith(".xml") for name in names)
        has_labels = any(name.endswith(".txt") and name != "classes.txt" for name in names)
        if has_labels or not has_xml:
            return True
    labels = os.path.join(root, "labels")
    if not os.path.isdir(labels):
        return False
    folders = [labels] + [entry.path for entry in _scandir(labels) if entry.is_dir()]
    return any(entry.name.endswith(".txt") and entry.is_file() for folder in folders for entry in _scandir(folder))


def _scandir(folder):
    try:
        return sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return []


def _find_class_file(root):
    for path in [os.path.join(root, name) for name in CLASS_FILES] + [os.path.join(root, "labels", "classes.txt")]:
        if os.path.isfile(path):
            return path
    raise sources.SourceError(f"{root}: YOLO labels hold class indices but no file names the classes; add "
                              f"{os.path.join(root, 'classes.txt')} (one class name per line, line 1 is class 0) or "
                              f"{os.path.join(root, 'data.yaml')} with names: [...]")


def _mirror(path):
    """Ultralytics' label path rule: the last 'images' component of ``path`` becomes 'labels'; None
    when there is no such component."""
    parts = os.path.normpath(path).split(os.sep)
    if "images" not in parts:
        return None
    at = len(parts) - 1 - parts[::-1].index("images")
    return os.sep.join(parts[:at] + ["labels"] + parts[at + 1:])


def _label_folder(image_folder):
    """The Ultralytics mirror of an image folder if it exists, else the image folder itself (labels
    beside the images)."""
    mirror = _mirror(image_folder)
    return mirror if mirror and os.path.isdir(mirror) else image_folder


def _yaml_folders(data, yaml_path):
    """{split key: [candidate folders]} for data.yaml's train/val/test entries."""
    yaml_dir = os.path.dirname(yaml_path)
    base = data.get("path")
    bases = []
    if isinstance(base, str) and base:
        bases.append(os.path.normpath(os.path.join(yaml_dir, base)))
    bases.append(yaml_dir)
    folders = {}
    for key in SPLIT_KEYS:
        entry = data.get(key)
        if entry is None:
            continue
        entries = entry if isinstance(entry, list) else [entry]
        if not entries or not all(isinstance(e, str) and e for e in entries):
            raise sources.SourceError(f"{yaml_path}: '{key}' must name an image folder (or a list of them), got {entry!r}")
        folders[key] = [_candidates(e, bases) for e in entries]
    return folders


def _candidates(entry, bases):
    paths = [os.path.join(base, entry) for base in bases]
    if entry.startswith("../"):
        # Roboflow exports write 'train: ../train/images' beside the dataset's own train/ folder;
        # Ultralytics reads a leading '../' as the dataset folder itself.
        paths += [os.path.join(base, entry[3:]) for base in bases]
    return list(dict.fromkeys(os.path.normpath(path) for path in paths))


def _resolve_folders(key, candidates_per_entry, yaml_path):
    """The image folders, or image list files (Ultralytics' coco.yaml: ``train: train2017.txt``), that
    data.yaml's entry names."""
    resolved = []
    for candidates in candidates_per_entry:
        found = next((c for c in candidates if os.path.isdir(c) or (os.path.isfile(c) and c.lower().endswith(".txt"))),
                     None)
        if found is None:
            raise sources.SourceError(f"{yaml_path}: the '{key}' image folder or list does not exist (looked for "
                                      f"{' and '.join(dict.fromkeys(candidates))})")
        resolved.append(found)
    return resolved


def read_image_list(path, problems):
    """The image paths an image list file names, one a line. As Ultralytics reads them, a line
    starting with ./ is relative to the list's folder; other relative lines too (the folder the list
    lies in, not the working directory, so the list works from anywhere). A named file that does not
    exist is reported with its line."""
    text = _read_capped(path, MAX_IMAGE_LIST_BYTES, "an image list", sources.SourceError)
    folder = os.path.dirname(path)
    images = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        image = os.path.normpath(os.path.join(folder, entry[2:] if entry.startswith("./") else entry))
        if not os.path.isfile(image):
            problems.append(report.Problem(path, f"line {number}", report.SKIPPED_IMAGE, "missing image",
                                           f"{entry!r}: {image} does not exist"))
            continue
        if not sources.is_image_name(image):
            problems.append(report.Problem(path, f"line {number}", report.SKIPPED_IMAGE, "not an image",
                                           f"{entry!r} has no image extension ({', '.join(sources.IMAGE_EXTENSIONS)})"))
            continue
        images.append(image)
    return images


def _split_folders(root, yaml_data, yaml_path):
    """({split folder name: [candidate paths per folder]}, how they were found, None), or without split
    folders (None, how, the one folder holding every image)."""
    if yaml_data is not None:
        from_yaml = _yaml_folders(yaml_data, yaml_path)
        if from_yaml:
            return from_yaml, f"{os.path.basename(yaml_path)} split folders", None
    images = os.path.join(root, "images")
    if os.path.isdir(images):
        subfolders = {entry.name: [[entry.path]] for entry in _scandir(images) if entry.is_dir()}
        if subfolders:
            return subfolders, IMAGES_SUBFOLDERS, None
        return None, "images/ + labels/", images
    return None, "labels beside the images", root


def _image_files(folder):
    paths = []
    for directory, subdirs, names in os.walk(folder):
        subdirs.sort()
        paths.extend(os.path.join(directory, name) for name in sorted(names) if sources.is_image_name(name))
    return paths


def _items_of_folder(folder, split, root, root_index, label, class_names, problems):
    """The items of one image folder; reports images without labels and labels without images."""
    items, claimed = _items_of_images(_image_files(folder), split, root, root_index, label, class_names, problems)
    _report_labels_without_images(_label_folder(folder), claimed, problems)
    return items


def _items_of_images(images, split, root, root_index, label, class_names, problems):
    """(the items of these images, the label files they claimed); reports images without labels."""
    items, claimed = [], set()
    for image in images:
        stem = os.path.splitext(image)[0]
        beside = stem + ".txt"
        mirrored = _mirror(beside)
        candidates = [mirrored, beside] if mirrored else [beside]
        label_path = next((c for c in candidates if os.path.isfile(c)), None)
        source_id = f"{label}/{os.path.splitext(os.path.relpath(image, root))[0].replace(os.sep, '/')}"
        common = dict(split=split, source_id=source_id, root_index=root_index,
                      id_stem=os.path.basename(stem), image_path=image, class_names=class_names)
        if label_path is None:
            problems.append(report.Problem(image, "labels", report.WARNING, "no label file",
                                           f"no {' or '.join(candidates)}; kept as a background image without "
                                           "objects"))
            items.append(sources.AnnotatedItem(annotation_path=candidates[0], annotation_format="parsed",
                                               annotation=background_annotation(), **common))
            continue
        claimed.add(os.path.realpath(label_path))
        items.append(sources.AnnotatedItem(annotation_path=label_path, annotation_format="yolo_text", **common))
    return items, claimed


def _is_label_name(name):
    """Whether a .txt file can be a label file: not the class list, nor the read-me and licence files
    that dataset exports put beside the images (Roboflow's README.roboflow.txt)."""
    lowered = name.lower()
    return lowered.endswith(".txt") and lowered != "classes.txt" and not lowered.startswith(("readme", "license",
                                                                                              "licence"))


def _report_labels_without_images(label_folder, claimed, problems):
    for directory, subdirs, names in os.walk(label_folder):
        subdirs.sort()
        for name in sorted(names):
            path = os.path.join(directory, name)
            if _is_label_name(name) and os.path.realpath(path) not in claimed:
                problems.append(report.Problem(path, "image", report.SKIPPED_IMAGE, "missing image",
                                               "no image file with this label file's name beside it or in the images "
                                               "folder it mirrors; its boxes are not converted"))


def _check_other_class_lists(root, used_file, class_names, problems):
    """A classes.txt beside the data.yaml that names other classes (an export edited by hand, a labelImg
    leftover) is reported: data.yaml's list is the one used."""
    for path in (os.path.join(root, "classes.txt"), os.path.join(root, "labels", "classes.txt")):
        if not os.path.isfile(path):
            continue
        try:
            other = read_classes_txt(path)
        except sources.SourceError as error:
            other = str(error)
        if other != class_names:
            problems.append(report.Problem(path, "names", report.WARNING, "class lists differ",
                                           f"names {other} here, {list(class_names)} in {used_file}, which is used"))


def _suggestion(found, splits):
    names = list(found)
    pairs = ",".join(f"{split}={folder}" for split, folder in zip(splits, names))
    return f"--splits={','.join(names)}" + (f" or --splits={pairs}" if pairs else "")


def discover(root, root_index, label, splits, problems, split_sources=None, test_fraction=0.2, split_seed=0):
    """A YOLO root's items per split (sources.RootItems); raises SourceError when it cannot be used."""
    split_sources = dict(split_sources or {})
    class_file = _find_class_file(root)
    yaml_data = None
    if class_file.endswith((".yaml", ".yml")):
        yaml_data = load_yaml(class_file)
        class_names = names_from_yaml(yaml_data, class_file)
        _check_other_class_lists(root, class_file, class_names, problems)
    else:
        class_names = read_classes_txt(class_file)
    folders, how, flat = _split_folders(root, yaml_data, class_file)
    by_split = {split: [] for split in splits}
    used = {}  # split -> the folders it was read from, relative to the root, for the statement
    if folders is None:
        if split_sources:
            raise sources.SourceError(f"{root}: these YOLO images are not in split folders, so --splits cannot map a "
                                      "split to a folder; give plain split names (the last gets --test_fraction)")
        items = _items_of_folder(flat, "", root, root_index, label, class_names, problems)
        by_split = sources.seeded_split(items, list(splits), test_fraction, split_seed)
        layout = f"{how}, seeded split"
    else:
        for split, source in split_sources.items():
            if source not in folders:
                raise sources.SourceError(f"--splits {split}={source}: {root} has no '{source}' split folder; "
                                          f"its folders ({how}) are {', '.join(folders)}")
        wanted = {split: split_sources.get(split, split) for split in splits}
        if not any(source in folders for source in wanted.values()):
            raise sources.SourceError(f"{root}: the YOLO images are in the split folders {', '.join(folders)} ({how}), "
                                      f"none named by the splits {list(splits)}; pass {_suggestion(folders, splits)}")
        for split, source in wanted.items():
            if source not in folders:
                problems.append(report.Problem(root, source, report.WARNING, "split missing",
                                               f"no '{source}' split folder ({how}: {', '.join(folders)}); it adds "
                                               f"nothing to split '{split}'"))
                continue
            for folder in _resolve_folders(source, folders[source], class_file):
                used.setdefault(split, []).append(os.path.relpath(folder, root).replace(os.sep, "/"))
                if os.path.isfile(folder):  # an image list: its images only, so other labels are no strays
                    images = read_image_list(folder, problems)
                    by_split[split].extend(_items_of_images(images, split, root, root_index, label, class_names,
                                                            problems)[0])
                else:
                    by_split[split].extend(_items_of_folder(folder, split, root, root_index, label, class_names,
                                                            problems))
        if how == IMAGES_SUBFOLDERS:
            stray = [entry.path for entry in _scandir(os.path.join(root, "images"))
                     if entry.is_file() and sources.is_image_name(entry.name)]
            if stray:
                problems.append(report.Problem(os.path.join(root, "images"), "split", report.WARNING,
                                               "image in no split folder",
                                               f"{len(stray)} images lie directly in images/, beside the split folders "
                                               f"{', '.join(folders)}; they are in no split and left out"))
        layout = how
    counts = ", ".join(f"{split} {len(items)}" + (f" ({', '.join(used[split])})" if split in used else "")
                       for split, items in by_split.items())
    description = (f"YOLO text ({os.path.relpath(class_file, root)}: {len(class_names)} classes; {layout}; "
                   f"images: {counts})")
    return sources.RootItems(by_split, None, description, class_names)
