"""Safe parsing of Pascal VOC / labelImg annotation XML into plain Python objects.

Annotations come from anywhere, so the parser refuses any document type declaration:
without one, no entity can be declared, which rules out entity expansion ("billion
laughs") and external entities (reading local files or URLs) whatever the encoding.
The check sits in expat's own DOCTYPE handler, so it also holds for UTF-16 files that
a byte search would miss. No third-party dependency is needed.

Values are parsed leniently but every problem is recorded with the field it concerns;
deciding what to do with a box (clip, drop) is the converter's job.
"""

import dataclasses
import math
import xml.etree.ElementTree as ElementTree
from xml.parsers import expat

from datasets import label_map

MAX_XML_BYTES = 16 * 1024 * 1024  # a real annotation is a few kB; refuse to buffer absurd files


class AnnotationError(ValueError):
    """The annotation file cannot be used at all (malformed, unsafe, not an annotation)."""


class UnsafeXMLError(AnnotationError):
    """The XML declares a DOCTYPE (entities), which annotations never need."""


@dataclasses.dataclass
class ObjectAnnotation:
    index: int  # position among the file's <object> elements, for messages
    name: str
    xmin: float | None
    ymin: float | None
    xmax: float | None
    ymax: float | None
    difficult: int
    truncated: int
    problems: list  # (field, message) pairs that did not make the object unusable

    @property
    def field(self):
        return f"object[{self.index}]"


@dataclasses.dataclass
class Annotation:
    filename: str | None  # <filename> as written, may be None
    width: int | None
    height: int | None
    objects: list
    problems: list  # (field, message) pairs
    relative_coordinates: bool = False  # object coordinates are fractions of the image's size (YOLO), not pixels


def _reject_doctype(*_args):
    raise UnsafeXMLError("DOCTYPE declarations are not allowed in annotations (entity expansion risk)")


def _reject_entity(*_args):
    raise UnsafeXMLError("entity declarations or references are not allowed in annotations")


def parse_xml_bytes(data):
    """Parses XML bytes into an ElementTree element, refusing DOCTYPE and entity declarations."""
    if len(data) > MAX_XML_BYTES:
        raise AnnotationError(f"file is {len(data)} bytes, more than the {MAX_XML_BYTES} allowed for an annotation")
    builder = ElementTree.TreeBuilder()
    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _reject_doctype
    parser.EntityDeclHandler = _reject_entity
    parser.UnparsedEntityDeclHandler = _reject_entity
    parser.ExternalEntityRefHandler = _reject_entity
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
    except expat.ExpatError as err:
        raise AnnotationError(f"malformed XML: {err}") from None
    return builder.close()


def _text(element, tag):
    child = element.find(tag)
    if child is None or child.text is None:
        return None
    text = child.text.strip()
    return text or None


def _parse_int(text):
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or value != int(value):
        return None
    return int(value)


def _parse_flag(element, tag, field, problems):
    text = _text(element, tag)
    if text is None:
        return 0
    lowered = text.lower()
    if lowered in ("0", "false", "no"):
        return 0
    if lowered in ("1", "true", "yes"):
        return 1
    problems.append((f"{field}/{tag}", f"value {text!r} is not 0 or 1; using 0"))
    return 0


def parse_finite(text, field, problems):
    """``text`` as a finite float, or None with the reason recorded as (field, message)."""
    try:
        value = float(text)
    except ValueError:
        problems.append((field, f"not a number: {text!r}"))
        return None
    if not math.isfinite(value):
        problems.append((field, f"not finite: {text!r}"))
        return None
    return value


def _parse_coordinate(bndbox, tag, field, problems):
    text = _text(bndbox, tag) if bndbox is not None else None
    if text is None:
        problems.append((f"{field}/bndbox/{tag}", "missing"))
        return None
    return parse_finite(text, f"{field}/bndbox/{tag}", problems)


def parse_annotation(data):
    """Parses one VOC/labelImg annotation from bytes. Raises AnnotationError if unusable."""
    root = parse_xml_bytes(data)
    if root.tag != "annotation":
        raise AnnotationError(f"root element is <{root.tag}>, expected <annotation>")
    problems = []
    width = height = None
    size = root.find("size")
    if size is None:
        problems.append(("size", "missing; using the image's own size"))
    else:
        width = _parse_int(_text(size, "width"))
        height = _parse_int(_text(size, "height"))
        if not width or not height or width < 0 or height < 0:
            problems.append(
                ("size", f"width={_text(size, 'width')!r} height={_text(size, 'height')!r} unusable; "
                 "using the image's own size")
            )
            width = height = None
    objects = []
    for index, element in enumerate(root.findall("object")):
        field = f"object[{index}]"
        object_problems = []
        name = _text(element, "name")
        if name:
            normalized = label_map.normalize_class_name(name)
            if normalized != name:
                object_problems.append((f"{field}/name", f"class name {name!r} normalised to {normalized!r}"))
                name = normalized
        bndbox = element.find("bndbox")
        coordinates = [_parse_coordinate(bndbox, tag, field, object_problems) for tag in ("xmin", "ymin", "xmax", "ymax")]
        objects.append(
            ObjectAnnotation(
                index=index,
                name=name or "",
                xmin=coordinates[0],
                ymin=coordinates[1],
                xmax=coordinates[2],
                ymax=coordinates[3],
                difficult=_parse_flag(element, "difficult", field, object_problems),
                truncated=_parse_flag(element, "truncated", field, object_problems),
                problems=object_problems,
            )
        )
    return Annotation(
        filename=_text(root, "filename"),
        width=width,
        height=height,
        objects=objects,
        problems=problems,
    )


def read_annotation(path):
    """Reads and parses an annotation file; raises OSError or AnnotationError."""
    with open(path, "rb") as f:
        data = f.read(MAX_XML_BYTES + 1)
    return parse_annotation(data)
