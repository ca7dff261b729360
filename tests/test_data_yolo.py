"""YOLO text datasets: each layout converted by the real converter and read back from the TFRecords.

Every box is checked against its label line; every bad line, file and folder has its stated outcome.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tf_convert_data
from datasets import conversion_report as report
from datasets import converter, formats, sources, yolo_text

from test_data_convert import _image, _save

W, H = 100, 50  # width != height, so a swapped axis shows


def _expected_box(cx, cy, w, h):
    """(ymin, xmin, ymax, xmax) relative, clipped to the image, as the converter must write it."""
    return tuple(float(np.clip(v, 0.0, 1.0)) for v in (cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2))


class YoloFolder:
    """A YOLO root written file by file; `expected[source id] = [(label, box), ...]`."""

    def __init__(self, root):
        self.root = root
        self.expected = {}
        root.mkdir(parents=True, exist_ok=True)

    def image(self, relative, fmt="JPEG", seed=0):
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        _save(_image(W, H, seed=seed), path, fmt)
        return path

    def labels(self, relative, text, encoding="utf-8"):
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
        return path

    def expect(self, image_relative, objects):
        source_id = f"{self.root.name}/{os.path.splitext(image_relative)[0]}"
        self.expected[source_id] = [(label, _expected_box(*box)) for label, box in objects]


def _write_text(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


BAD_LINES = "\n".join([
    "1 0.5 0.5 0.2 0.2",  # 1: good
    "0 0.5 0.5 0.2",  # 2: wrong column count
    "7 0.5 0.5 0.2 0.2",  # 3: class index not in the list
    "0 abc 0.5 0.2 0.2",  # 4: not a number
    "0 nan 0.5 0.2 0.2",  # 5: not finite
    "0 0.5 0.5 0 0.2",  # 6: zero width
    "",  # 7: blank, ignored
    "2 0.05 0.5 0.2 0.2",  # 8: left edge at -0.05: clipped
    "1 0.1 0.1 0.3 0.1 0.3 0.4",  # 9: segmentation triangle: its bounding box
    "cat 0.5 0.5 0.1 0.1",  # 10: class is not an index
    "0 0.5 0.5 -0.1 0.2",  # 11: negative width
    "0 1.5 0.5 0.2 0.2",  # 12: wholly outside the image
])
BAD_OUTCOMES = {  # field -> (action, reason)
    "line 2/bndbox": (report.DROPPED_OBJECT, "bad coordinates"),
    "line 3/class": (report.DROPPED_OBJECT, "unknown class"),
    "line 4/bndbox": (report.DROPPED_OBJECT, "bad coordinates"),
    "line 5/bndbox": (report.DROPPED_OBJECT, "bad coordinates"),
    "line 6/bndbox": (report.DROPPED_OBJECT, "bad coordinates"),
    "line 8/bndbox": (report.CLIPPED_BOX, "box outside image"),
    "line 9/segment": (report.FIXED, "polygon as box"),
    "line 10/class": (report.DROPPED_OBJECT, "unknown class"),
    "line 11/bndbox": (report.DROPPED_OBJECT, "bad coordinates"),
    "line 12/bndbox": (report.DROPPED_OBJECT, "zero-area box"),
}


def _split_folders_dataset(root, names_yaml="names: [dog, cat, bird]"):
    """images/{train,val} + labels/{train,val}, data.yaml naming the folders relative to its `path`."""
    data = YoloFolder(root)
    _write_text(root / "data.yaml", f"path: .\ntrain: images/train\nval: images/val\n{names_yaml}\n")
    data.image("images/train/a.jpg")
    data.labels("labels/train/a.txt", "0 0.5 0.5 0.4 0.6\n2 0.25 0.75 0.1 0.2\n")
    data.expect("images/train/a.jpg", [(1, (0.5, 0.5, 0.4, 0.6)), (3, (0.25, 0.75, 0.1, 0.2))])
    data.image("images/train/b.jpg", seed=1)
    data.labels("labels/train/b.txt", BAD_LINES)
    data.expect("images/train/b.jpg", [(2, (0.5, 0.5, 0.2, 0.2)), (3, (0.05, 0.5, 0.2, 0.2)),
                                       (2, (0.2, 0.25, 0.2, 0.3))])
    data.image("images/train/empty.jpg", seed=2)
    data.labels("labels/train/empty.txt", "")
    data.expect("images/train/empty.jpg", [])
    data.image("images/train/background.jpg", seed=3)  # no label file at all
    data.expect("images/train/background.jpg", [])
    data.image("images/train/latin.jpg", seed=4)
    data.labels("labels/train/latin.txt", "0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2 # caf\xe9\n", encoding="latin-1")
    data.labels("labels/train/orphan.txt", "0 0.5 0.5 0.2 0.2\n")  # no image
    data.image("images/val/deep/d.png", fmt="PNG", seed=5)
    data.labels("labels/val/deep/d.txt", "\ufeff1 0.3 0.4 0.2 0.2\r\n0 0.7 0.6 0.3 0.1\r\n")  # BOM, CRLF
    data.expect("images/val/deep/d.png", [(2, (0.3, 0.4, 0.2, 0.2)), (1, (0.7, 0.6, 0.3, 0.1))])
    return data


def _convert(roots, out, splits, **options):
    options.setdefault("num_workers", 1)
    return converter.convert([str(r) for r in roots], str(out), "yolo",
                             converter.ConversionOptions(splits=tuple(splits), **options))


def _check_boxes(read_split, out, splits, expected):
    seen = {}
    for split in splits:
        for example in read_split(out, split)[1]:
            seen[example["source_id"].decode()] = example
    assert sorted(seen) == sorted(expected)
    for source_id, objects in expected.items():
        example = seen[source_id]
        boxes = np.array([box for _, box in objects], np.float64).reshape(-1, 4)
        np.testing.assert_allclose(example["boxes"], boxes, rtol=0, atol=1e-6, err_msg=source_id)
        np.testing.assert_array_equal(example["labels"], [label for label, _ in objects], err_msg=source_id)
        assert tuple(example["image"].shape) == (H, W, 3)
    return seen


@pytest.fixture(scope="module")
def split_folders_conversion(tmp_path_factory):
    base = tmp_path_factory.mktemp("yolo")
    data = _split_folders_dataset(base / "ds")
    return data, _convert([data.root], base / "out", ("train", "val"), num_workers=2)


def test_split_folders_keep_every_good_box(split_folders_conversion, read_split):
    data, result = split_folders_conversion
    seen = _check_boxes(read_split, result.output_dir, ("train", "val"), data.expected)
    assert seen["ds/images/val/deep/d"]["filename"].decode() == "ds/images/val/deep/d.png"
    assert result.info["classes"] == {"0": "none", "1": "dog", "2": "cat", "3": "bird"}
    assert result.info["splits"]["train"]["num_images"] == 4 and result.info["splits"]["val"]["num_images"] == 1
    assert result.info["splits"]["train"]["images_without_objects"] == 2  # the empty file, the background image
    assert result.info["sources"] == [{"path": str(data.root), "layout": "yolo"}]


def test_split_folders_report_each_bad_line_with_file_and_line(split_folders_conversion):
    _, result = split_folders_conversion
    of_b = {p.field: (p.action, p.reason) for p in result.problems if os.path.basename(p.file) == "b.txt"}
    assert of_b == BAD_OUTCOMES
    messages = {p.field: p.message for p in result.problems if os.path.basename(p.file) == "b.txt"}
    assert "expected 5" in messages["line 2/bndbox"] and "'abc'" in messages["line 4/bndbox"]
    assert "class index 7 is not in the class list (0..2)" in messages["line 3/class"]
    assert "3 points" in messages["line 9/segment"]


def test_split_folders_report_files_without_partner(split_folders_conversion):
    data, result = split_folders_conversion
    by_file = {os.path.relpath(p.file, data.root): p for p in result.problems
               if os.path.basename(p.file) != "b.txt"}
    assert sorted(by_file) == ["images/train/background.jpg", "labels/train/latin.txt", "labels/train/orphan.txt"]
    background = by_file["images/train/background.jpg"]
    assert (background.action, background.reason) == (report.WARNING, "no label file")
    assert "background image" in background.message and "labels/train/background.txt" in background.message
    orphan = by_file["labels/train/orphan.txt"]
    assert (orphan.action, orphan.reason) == (report.SKIPPED_IMAGE, "missing image")
    latin = by_file["labels/train/latin.txt"]
    assert (latin.action, latin.reason) == (report.SKIPPED_IMAGE, "unreadable label file")
    assert "line 2" in latin.message and "not UTF-8" in latin.message


def test_names_as_a_mapping_path_entry_and_mapped_splits(tmp_path, read_split):
    """Ultralytics/Roboflow-style data.yaml: `path` names the dataset folder, names is {index: name}, the
    split folders are train/images and valid/images, and --splits maps trainval and test to them."""
    data = YoloFolder(tmp_path / "export")
    _write_text(data.root / "data.yaml",
                "path: dataset\ntrain: train/images\nval: valid/images\nnc: 2\nnames:\n  1: cat\n  0: dog\n")
    data.image("dataset/train/images/a.jpg")
    data.labels("dataset/train/labels/a.txt", "1 0.5 0.5 0.2 0.4\n")
    data.expect("dataset/train/images/a.jpg", [(2, (0.5, 0.5, 0.2, 0.4))])
    data.image("dataset/valid/images/b.jpg")
    data.labels("dataset/valid/labels/b.txt", "0 0.9 0.1 0.4 0.4\n")  # right edge at 1.1: clipped
    data.expect("dataset/valid/images/b.jpg", [(1, (0.9, 0.1, 0.4, 0.4))])
    result = _convert([data.root], tmp_path / "out", ("trainval", "test"),
                      split_sources={"trainval": "train", "test": "val"})
    seen = _check_boxes(read_split, tmp_path / "out", ("trainval", "test"), data.expected)
    assert seen["export/dataset/train/images/a"]["labels"].tolist() == [2]
    assert result.info["classes"] == {"0": "none", "1": "dog", "2": "cat"}
    assert [(p.reason, os.path.basename(p.file), p.field) for p in result.problems] == [
        ("box outside image", "b.txt", "line 1/bndbox")]


def test_yaml_folders_relative_to_the_yaml_itself(tmp_path, read_split):
    data = YoloFolder(tmp_path / "plain")
    _write_text(data.root / "data.yaml", "train: pics/train/images\nval: pics/val/images\nnames: [a]\n")
    data.image("pics/train/images/x.jpg")
    data.labels("pics/train/labels/x.txt", "0 0.4 0.5 0.2 0.2\n")
    data.expect("pics/train/images/x.jpg", [(1, (0.4, 0.5, 0.2, 0.2))])
    found = formats.discover([str(data.root)], ("train",))
    assert found.statements == [f"{data.root}: detected YOLO text (data.yaml: 1 classes; data.yaml split folders; "
                                "images: train 1 (pics/train/images))"]
    _convert([data.root], tmp_path / "out", ("train",))
    _check_boxes(read_split, tmp_path / "out", ("train",), data.expected)
    # Roboflow's export: '../train/images' beside the yaml means the dataset's own train/images.
    _write_text(data.root / "data.yaml", "train: ../pics/train/images\nnames: [a]\n")
    assert [item.source_id for item in formats.discover([str(data.root)], ("train",)).by_split["train"]] == [
        "plain/pics/train/images/x"]


def test_flat_images_and_labels_with_classes_txt_split_by_seed(tmp_path, read_split):
    data = YoloFolder(tmp_path / "flat")
    data.labels("classes.txt", "\ufeffdog\r\ncat\n\n\n")  # BOM, CRLF, trailing blank lines
    for index in range(6):
        data.image(f"images/img{index}.jpg", seed=index)
        data.labels(f"labels/img{index}.txt", f"{index % 2} 0.{index + 2} 0.5 0.1 0.2\n")
        data.expect(f"images/img{index}.jpg", [(index % 2 + 1, (0.1 * (index + 2), 0.5, 0.1, 0.2))])
    found = formats.discover([str(data.root)], ("train", "test"), test_fraction=0.5, split_seed=1)
    assert found.statements == [f"{data.root}: detected YOLO text (classes.txt: 2 classes; images/ + labels/, "
                                "seeded split; images: train 3, test 3)"]
    assert found.source_class_names() == ("dog", "cat")
    result = _convert([data.root], tmp_path / "out", ("train", "test"), test_fraction=0.5, split_seed=1)
    again = formats.discover([str(data.root)], ("train", "test"), test_fraction=0.5, split_seed=1)
    assert [i.source_id for i in again.by_split["test"]] == [i.source_id for i in found.by_split["test"]]
    _check_boxes(read_split, tmp_path / "out", ("train", "test"), data.expected)
    assert result.problems == []
    with pytest.raises(sources.SourceError, match="not in split folders"):
        formats.discover([str(data.root)], ("train",), split_sources={"train": "x"})


def test_labels_beside_images_and_the_label_map_wins_by_name(tmp_path, read_split):
    data = YoloFolder(tmp_path / "beside")
    data.labels("classes.txt", "dog\nred\tcell\n")  # normalised to 'red cell'
    data.labels("README.dataset.txt", "exported by a tool\n")  # not a label file
    data.image("shots/a.jpg")
    data.labels("shots/a.txt", "0 0.5 0.5 0.2 0.2\n1 0.2 0.3 0.1 0.1\n")
    label_map = tmp_path / "labels.txt"
    label_map.write_text("1:red cell\n2:dog\n")
    data.expect("shots/a.jpg", [(2, (0.5, 0.5, 0.2, 0.2)), (1, (0.2, 0.3, 0.1, 0.1))])
    result = _convert([data.root], tmp_path / "out", ("all",), label_map_path=str(label_map))
    _check_boxes(read_split, tmp_path / "out", ("all",), data.expected)
    assert result.problems == [] and result.info["classes"]["1"] == "red cell"


def _no_class_file(root):
    YoloFolder(root).labels("labels/a.txt", "0 0.5 0.5 0.2 0.2\n")


def _duplicate_names(root):
    YoloFolder(root).labels("classes.txt", "dog\ncat\n dog\n")


def _blank_name(root):
    YoloFolder(root).labels("classes.txt", "dog\n\ncat\n")


def _names_with_a_gap(root):
    YoloFolder(root).labels("data.yaml", "names: {0: dog, 2: cat}\n")


def _not_utf8_classes(root):
    YoloFolder(root).labels("classes.txt", "dog\ncaf\xe9\n", encoding="latin-1")


def _unmatched_split_folders(root):
    data = YoloFolder(root)
    data.labels("classes.txt", "dog\n")
    for split in ("train", "val"):
        data.image(f"images/{split}/a.jpg")
        data.labels(f"labels/{split}/a.txt", "0 0.5 0.5 0.2 0.2\n")


def _missing_yaml_folder(root):
    YoloFolder(root).labels("data.yaml", "train: images/train\nnames: [dog]\n")


@pytest.mark.parametrize("build, splits, expected", [
    (_no_class_file, ("train",), "no file names the classes; add .*classes.txt.*data.yaml"),
    (_duplicate_names, ("train",), "classes.txt: class name 'dog' is given twice"),
    (_blank_name, ("train",), r"classes.txt, line 2: empty class name"),
    (_names_with_a_gap, ("train",), r"data.yaml: 'names' as a mapping must have the class indices 0..1"),
    (_not_utf8_classes, ("train",), r"classes.txt, line 2: a class file is not UTF-8"),
    (_unmatched_split_folders, ("trainval", "test"),
     r"split folders train, val .* none named by the splits \['trainval', 'test'\]; pass --splits=train,val or "
     r"--splits=trainval=train,test=val"),
    (_missing_yaml_folder, ("train",), r"data.yaml: the 'train' image folder or list does not exist"),
])
def test_unusable_roots_are_refused_with_the_file_and_the_fix(tmp_path, build, splits, expected):
    build(tmp_path / "ds")
    with pytest.raises(sources.SourceError, match=expected) as error:
        formats.discover([str(tmp_path / "ds")], splits)
    assert "\n" not in str(error.value)


def test_a_mapped_split_folder_must_exist(tmp_path):
    _unmatched_split_folders(tmp_path / "ds")
    with pytest.raises(sources.SourceError, match="--splits test=valid: .* no 'valid' split folder; .* train, val"):
        formats.discover([str(tmp_path / "ds")], ("trainval", "test"), split_sources={"trainval": "train",
                                                                                      "test": "valid"})
    YoloFolder(tmp_path / "ds").image("images/loose.jpg")
    found = formats.discover([str(tmp_path / "ds")], ("train", "test"))
    assert [(p.reason, p.field) for p in found.problems] == [("split missing", "test"),
                                                             ("image in no split folder", "split")]
    assert "1 images lie directly in images/" in found.problems[1].message


def test_hostile_yaml_is_refused_and_not_executed(tmp_path, caplog):
    marker = tmp_path / "executed"
    root = tmp_path / "ds"
    YoloFolder(root).labels("data.yaml", f'names: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(sources.SourceError, match=r"data.yaml, line 1: .*!!python/object are refused"):
        formats.discover([str(root)], ("train",))
    status = tf_convert_data.main([f"--dataset_dir={root}", f"--output_dir={tmp_path / 'out'}", "--splits=train",
                                   "--num_workers=1"])
    assert status == 2 and not marker.exists()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "data.yaml" in errors[0] and "\n" not in errors[0]
    assert "Traceback" not in caplog.text


def test_detection_order_and_forced_format(tmp_path):
    voc = tmp_path / "voc"  # a VOC root with a stray classes.txt is still VOC
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / folder).mkdir(parents=True)
    (voc / "classes.txt").write_text("dog\n")
    assert formats.detect_layout(str(voc)) == "voc"
    labels_only = tmp_path / "labels_only"
    YoloFolder(labels_only).labels("labels/train/a.txt", "0 0.5 0.5 0.2 0.2\n")
    assert formats.detect_layout(str(labels_only)) == "yolo"
    xml_folder = tmp_path / "xml"
    YoloFolder(xml_folder).labels("a.xml", "<annotation/>")
    YoloFolder(xml_folder).labels("classes.txt", "dog\n")  # labelImg leaves one after a switch to YOLO mode
    assert formats.detect_layout(str(xml_folder)) == "labelimg"
    YoloFolder(xml_folder).labels("b.txt", "0 0.5 0.5 0.2 0.2\n")  # ... and YOLO labels once it saved some
    assert formats.detect_layout(str(xml_folder)) == "yolo"
    _unmatched_split_folders(tmp_path / "forced")
    found = formats.discover([str(tmp_path / "forced")], ("train",), layout="yolo")
    assert found.statements[0].startswith(f"{tmp_path / 'forced'}: read as --format=yolo: YOLO text (classes.txt")
    assert "yolo" in formats.LAYOUTS_UNDERSTOOD.lower()


def test_label_file_parsing_and_size_cap(tmp_path, monkeypatch):
    annotation = yolo_text.parse_label_text("0 0.5 0.5 0.2 0.4\n\n1.0 0.1 0.2 0.3 0.4\n", ("a", "b"))
    assert annotation.relative_coordinates and [o.field for o in annotation.objects] == ["line 1", "line 3"]
    assert [o.name for o in annotation.objects] == ["a", "b"]
    assert (annotation.objects[0].xmin, annotation.objects[0].ymax) == pytest.approx((0.4, 0.7))
    big = tmp_path / "big.txt"
    big.write_text("0 0.5 0.5 0.2 0.2\n" * 10)
    monkeypatch.setattr(yolo_text, "MAX_LABEL_BYTES", 50)
    with pytest.raises(yolo_text.LabelFileError, match="more than the 50 bytes"):
        yolo_text.read_label_file(str(big), ("a",))


def test_command_line_converts_and_states_the_layout(tmp_path):
    data = _split_folders_dataset(tmp_path / "ds")
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tf_convert_data.py")
    completed = subprocess.run(
        [sys.executable, script, f"--dataset_dir={data.root}", f"--output_dir={tmp_path / 'out'}", "--splits=train,val",
         "--num_workers=1"], capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert f"{data.root}: detected YOLO text (data.yaml: 3 classes" in completed.stderr
    info = json.loads((tmp_path / "out" / converter.DATASET_INFO).read_text())
    assert info["num_images"] == 5 and info["sources"][0]["layout"] == "yolo"
    bad = subprocess.run(
        [sys.executable, script, f"--dataset_dir={data.root}", f"--output_dir={tmp_path / 'out2'}",
         "--num_workers=1"], capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--splits=train,val" in bad.stderr


def test_roots_merge_when_their_class_lists_agree(tmp_path, read_split):
    """Two roots, one with a list of image folders and a `path` written on another machine (the yaml's
    folder is used then); their class lists agree, so their ids do."""
    first, second = YoloFolder(tmp_path / "one"), YoloFolder(tmp_path / "two")
    _write_text(first.root / "data.yaml", "path: /elsewhere/on/another/machine\ntrain: [a/images, b/images]\n"
                                          "names: [dog, cat]\n")
    for folder, line in (("a", "1 0.5 0.5 0.2 0.2"), ("b", "0 0.2 0.2 0.1 0.1")):
        first.image(f"{folder}/images/x.jpg")
        first.labels(f"{folder}/labels/x.txt", line + "\n")
    first.expect("a/images/x.jpg", [(2, (0.5, 0.5, 0.2, 0.2))])
    first.expect("b/images/x.jpg", [(1, (0.2, 0.2, 0.1, 0.1))])
    second.labels("classes.txt", "dog\ncat\n")
    second.image("images/train/y.jpg")
    second.labels("labels/train/y.txt", "1 0.6 0.4 0.2 0.2\n")
    second.expect("images/train/y.jpg", [(2, (0.6, 0.4, 0.2, 0.2))])
    _convert([first.root, second.root], tmp_path / "out", ("train",))
    _check_boxes(read_split, tmp_path / "out", ("train",), {**first.expected, **second.expected})
    second.labels("classes.txt", "cat\ndog\n")
    with pytest.raises(sources.SourceError, match="different class lists"):
        formats.discover([str(first.root), str(second.root)], ("train",)).source_class_names()


def test_a_label_map_reconciles_roots_whose_class_lists_differ(tmp_path, read_split):
    first, second = YoloFolder(tmp_path / "one"), YoloFolder(tmp_path / "two")
    first.labels("classes.txt", "dog\ncat\n")
    second.labels("classes.txt", "cat\ndog\n")
    for folder, line in ((first, "0 0.5 0.5 0.2 0.2"), (second, "0 0.3 0.3 0.2 0.2")):
        folder.image("images/train/x.jpg")
        folder.labels("labels/train/x.txt", line + "\n")
    with pytest.raises(sources.SourceError, match="different class lists"):
        _convert([first.root, second.root], tmp_path / "refused", ("train",))
    label_map = tmp_path / "labels.txt"
    label_map.write_text("1:cat\n2:dog\n")
    _convert([first.root, second.root], tmp_path / "out", ("train",), label_map_path=str(label_map))
    labels = {example["source_id"].decode().split("/")[0]: list(example["labels"])
              for example in read_split(tmp_path / "out", "train")[1]}
    assert labels == {"one": [2], "two": [1]}  # each root's index 0, by name: dog in one, cat in two


def test_data_yaml_may_name_image_list_files_as_ultralytics_coco_yaml_does(tmp_path, read_split):
    """`train: train2017.txt` lists images (./ is the list's folder); only listed images are read, a
    listed image that is missing is reported with its line, and a disagreeing classes.txt is reported."""
    data = YoloFolder(tmp_path / "coco")
    _write_text(data.root / "data.yaml", "path: .\ntrain: train2017.txt\nval: val2017.txt\nnames: [dog, cat]\n")
    for name, line in (("a", "0 0.5 0.5 0.2 0.2"), ("b", "1 0.3 0.6 0.2 0.4"), ("unlisted", "0 0.5 0.5 0.1 0.1")):
        data.image(f"images/train2017/{name}.jpg")
        data.labels(f"labels/train2017/{name}.txt", line + "\n")
    data.image("images/val2017/c.jpg")
    data.labels("labels/val2017/c.txt", "1 0.5 0.5 0.4 0.4\n")
    _write_text(data.root / "train2017.txt", "./images/train2017/a.jpg\n./images/train2017/b.jpg\n"
                                             "./images/train2017/gone.jpg\n")
    _write_text(data.root / "val2017.txt", "images/val2017/c.jpg\n")
    _write_text(data.root / "classes.txt", "cat\ndog\n")
    data.expect("images/train2017/a.jpg", [(1, (0.5, 0.5, 0.2, 0.2))])
    data.expect("images/train2017/b.jpg", [(2, (0.3, 0.6, 0.2, 0.4))])
    data.expect("images/val2017/c.jpg", [(2, (0.5, 0.5, 0.4, 0.4))])
    result = _convert([data.root], tmp_path / "out", ("train", "val"))
    _check_boxes(read_split, tmp_path / "out", ("train", "val"), data.expected)
    problems = {(p.file, p.field, p.reason) for p in result.problems}
    assert (str(data.root / "train2017.txt"), "line 3", "missing image") in problems
    assert (str(data.root / "classes.txt"), "names", "class lists differ") in problems
    assert not any("unlisted" in p.file for p in result.problems), "an unlisted image's label is not a stray"
