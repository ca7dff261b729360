"""Label maps in TF-Slim's `labels.txt` format: one `id:name` per line, 0 is the background.

Class names are normalised wherever they enter (annotations, label map files): control and format
characters, line and paragraph separators and runs of white space become one space, and the ends
are stripped. A name with a newline or a vertical tab would otherwise split its `labels.txt` line,
and the file would read back to other classes than the ones written.
"""

import re
import unicodedata

BACKGROUND_ID = 0
BACKGROUND_NAME = "none"  # SSD-Tensorflow's name for class 0
LABELS_FILENAME = "labels.txt"


class LabelMapError(ValueError):
    """The label map file is malformed."""


_SPACE_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Zs")


def normalize_class_name(name):
    """``name`` with every control, format or separator character (and runs of them) as one space,
    stripped: ``'red\ncell'`` -> ``'red cell'``."""
    spaced = "".join(" " if unicodedata.category(ch) in _SPACE_CATEGORIES else ch for ch in name)
    return re.sub(" +", " ", spaced).strip()


def read_label_map(path):
    """Returns {class_id: name} for the object classes (ids >= 1) in `path`.

    Lines are `id:name` (TF-Slim) or a bare `name` (ids then follow line order from 1).
    A `0:<name>` line is accepted and ignored: id 0 is always the background. Blank lines
    and lines starting with '#' are skipped.
    """
    names_by_id = {}
    next_id = 1
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")  # only newlines end a line: str.splitlines would also split at \v, \f, ...
    except UnicodeDecodeError as error:
        line = error.object[:error.start].count(b"\n") + 1
        raise LabelMapError(f"{path}, line {line}: not UTF-8 text ({error.reason} at byte {error.start}); "
                            "save the label map as UTF-8") from None
    except IsADirectoryError:
        raise LabelMapError(f"{path} is a directory, not a label map file") from None
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}, line {number}"
        head, sep, tail = line.partition(":")
        if sep and head.strip().lstrip("-").isdigit():
            class_id, name = int(head.strip()), normalize_class_name(tail)
        else:
            class_id, name = next_id, normalize_class_name(line)
        if not name:
            raise LabelMapError(f"{where}: empty class name")
        if class_id == BACKGROUND_ID:
            continue
        if class_id < 0:
            raise LabelMapError(f"{where}: negative class id {class_id}")
        if class_id in names_by_id:
            raise LabelMapError(f"{where}: class id {class_id} given twice")
        if name in names_by_id.values():
            raise LabelMapError(f"{where}: class name {name!r} given twice")
        names_by_id[class_id] = name
        next_id = class_id + 1
    if not names_by_id:
        raise LabelMapError(f"{path}: no object classes")
    expected = set(range(1, len(names_by_id) + 1))
    if set(names_by_id) != expected:
        missing = sorted(expected - set(names_by_id))
        raise LabelMapError(f"{path}: class ids must be 1..{len(names_by_id)} without gaps; missing {missing}")
    return dict(sorted(names_by_id.items()))


def label_map_from_names(names):
    """Stable ids for class names found in the data: sorted, starting at 1."""
    return {class_id: name for class_id, name in enumerate(sorted(set(names)), start=1)}


def write_label_map(path, names_by_id):
    """Writes `0:none` then `id:name` for each object class."""
    lines = [f"{BACKGROUND_ID}:{BACKGROUND_NAME}"] + [f"{i}:{names_by_id[i]}" for i in sorted(names_by_id)]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def labels_to_names(names_by_id):
    """{id: name} including the background at 0."""
    return {BACKGROUND_ID: BACKGROUND_NAME, **names_by_id}
