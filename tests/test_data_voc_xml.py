"""Annotation XML parsing: lenient on values, strict on safety; and label map files."""

import xml.etree.ElementTree as ElementTree

import pytest

from datasets import label_map, voc_xml

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotation><filename>a.jpg</filename><object><name>&lol9;</name>
<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>
"""


def external_entity_xml(secret_path):
    return f"""<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY secret SYSTEM "file://{secret_path}">]>
<annotation><filename>a.jpg</filename><object><name>&secret;</name>
<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>
""".encode()


def voc_xml_text(objects="", size="<size><width>100</width><height>50</height><depth>3</depth></size>"):
    return f"<annotation><folder>VOC</folder><filename>a.jpg</filename>{size}{objects}</annotation>".encode()


def obj(name="dog", box=("10", "5", "60", "45"), difficult="0", truncated="1"):
    xmin, ymin, xmax, ymax = box
    return (f"<object><name>{name}</name><truncated>{truncated}</truncated><difficult>{difficult}</difficult>"
            f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def test_parses_a_voc_annotation():
    annotation = voc_xml.parse_annotation(voc_xml_text(obj() + obj("cat", ("0.5", "1", "99.5", "50"), "1", "0")))
    assert (annotation.filename, annotation.width, annotation.height, annotation.problems) == ("a.jpg", 100, 50, [])
    dog, cat = annotation.objects
    assert (dog.name, dog.xmin, dog.ymin, dog.xmax, dog.ymax, dog.difficult, dog.truncated) == ("dog", 10, 5, 60, 45, 0, 1)
    assert (cat.xmin, cat.xmax, cat.difficult, cat.truncated, cat.problems) == (0.5, 99.5, 1, 0, [])


def test_billion_laughs_is_refused_before_any_expansion(monkeypatch):
    handed_over = []  # the elements and text the parser produced: its work on the document's content

    class CountingTreeBuilder(ElementTree.TreeBuilder):
        def start(self, tag, attributes):
            handed_over.append(tag)
            return super().start(tag, attributes)

        def data(self, text):
            handed_over.append(text)
            return super().data(text)

    monkeypatch.setattr(voc_xml.ElementTree, "TreeBuilder", CountingTreeBuilder)
    with pytest.raises(voc_xml.UnsafeXMLError, match="DOCTYPE"):
        voc_xml.parse_annotation(BILLION_LAUGHS)
    assert handed_over == []  # refused at the DOCTYPE: not one element, let alone 10**9 'lol's
    voc_xml.parse_annotation(voc_xml_text(obj()))
    assert "annotation" in handed_over  # the counting builder does see what is parsed


def test_external_entity_is_refused_without_reading_the_file(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    with pytest.raises(voc_xml.UnsafeXMLError) as err:
        voc_xml.parse_annotation(external_entity_xml(secret))
    assert "TOP-SECRET" not in str(err.value)


def test_doctype_is_refused_in_utf16_too():
    data = BILLION_LAUGHS.decode().replace('<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-16"?>')
    with pytest.raises(voc_xml.UnsafeXMLError):
        voc_xml.parse_annotation(data.encode("utf-16"))


def test_undeclared_entity_is_malformed():
    with pytest.raises(voc_xml.AnnotationError, match="malformed"):
        voc_xml.parse_annotation(voc_xml_text(obj(name="&undeclared;")))


@pytest.mark.parametrize("data", [b"", b"<annotation><object>", b"not xml at all", b"<annotation></other>"])
def test_malformed_xml_raises_annotation_error(data):
    with pytest.raises(voc_xml.AnnotationError, match="malformed XML"):
        voc_xml.parse_annotation(data)


def test_wrong_root_element_is_refused():
    with pytest.raises(voc_xml.AnnotationError, match="<html>"):
        voc_xml.parse_annotation(b"<html><body/></html>")


@pytest.mark.parametrize(
    "size",
    ["", "<size><width>0</width><height>0</height></size>", "<size><width>abc</width><height>50</height></size>",
     "<size><height>50</height></size>"],
    ids=["missing", "zero", "not-a-number", "no-width"],
)
def test_unusable_size_is_reported_and_left_to_the_image(size):
    annotation = voc_xml.parse_annotation(voc_xml_text(obj(), size=size))
    assert annotation.width is None and annotation.height is None
    assert [field for field, _ in annotation.problems] == ["size"]
    assert len(annotation.objects) == 1


def test_bad_coordinates_and_flags_are_recorded_per_field():
    annotation = voc_xml.parse_annotation(voc_xml_text(obj(box=("1", "nan", "x", "4"), difficult="maybe")))
    (item,) = annotation.objects
    fields = [field for field, _ in item.problems]
    assert fields == ["object[0]/bndbox/ymin", "object[0]/bndbox/xmax", "object[0]/difficult"]
    assert item.ymin is None and item.xmax is None and item.difficult == 0


def test_missing_bndbox_is_recorded():
    annotation = voc_xml.parse_annotation(voc_xml_text("<object><name>dog</name></object>"))
    assert [field for field, _ in annotation.objects[0].problems] == [f"object[0]/bndbox/{t}" for t in ("xmin", "ymin", "xmax", "ymax")]


def test_oversized_annotation_is_refused():
    with pytest.raises(voc_xml.AnnotationError, match="bytes"):
        voc_xml.parse_annotation(b" " * (voc_xml.MAX_XML_BYTES + 1))


# ----------------------------------------------------------------------------- label maps


def test_label_map_reads_tf_slim_format_and_bare_names(tmp_path):
    slim_format = tmp_path / "labels.txt"
    slim_format.write_text("0:none\n1:cat\n2:dog\n\n# comment\n3:red panda\n")
    assert label_map.read_label_map(slim_format) == {1: "cat", 2: "dog", 3: "red panda"}
    bare = tmp_path / "names.txt"
    bare.write_text("zebra\napple\n")
    assert label_map.read_label_map(bare) == {1: "zebra", 2: "apple"}


@pytest.mark.parametrize(
    "text, message",
    [("1:a\n1:b\n", "given twice"), ("1:a\n2:a\n", "given twice"), ("1:a\n3:b\n", "without gaps"), ("0:none\n", "no object"),
     ("1:\n", "empty class name")],
)
def test_label_map_errors_name_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "labels.txt"
    path.write_text(text)
    with pytest.raises(label_map.LabelMapError, match=message) as err:
        label_map.read_label_map(path)
    assert str(path) in str(err.value)


def test_label_map_round_trips_and_ids_from_names_are_sorted(tmp_path):
    names_by_id = label_map.label_map_from_names(["WBC", "RBC", "Platelets", "RBC"])
    assert names_by_id == {1: "Platelets", 2: "RBC", 3: "WBC"}
    path = tmp_path / "labels.txt"
    label_map.write_label_map(path, names_by_id)
    assert path.read_text().splitlines()[0] == "0:none"
    assert label_map.read_label_map(path) == names_by_id


def test_class_names_are_normalised_in_label_maps_and_annotations(tmp_path):
    assert label_map.normalize_class_name(" red\n\tcell\u2028 x\x00y ") == "red cell x y"
    path = tmp_path / "labels.txt"
    path.write_text("0:none\n1:red\x0bcell\n2:white\x0ccell\r\n", encoding="utf-8")  # \v and \f: no new lines
    assert label_map.read_label_map(path) == {1: "red cell", 2: "white cell"}
    annotation = voc_xml.parse_annotation(
        b"<annotation><object><name>red\ncell</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax>"
        b"<ymax>5</ymax></bndbox></object></annotation>")
    obj = annotation.objects[0]
    assert obj.name == "red cell"
    assert ("object[0]/name", "class name 'red\\ncell' normalised to 'red cell'") in obj.problems
