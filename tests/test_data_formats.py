"""Choosing the annotation format of a dataset root: auto-detection, --format, and the refusal."""

import json

import pytest

import tf_convert_data
from datasets import formats, sources

from test_data_convert import _image, _save, _xml


def _labelimg_folder(root):
    root.mkdir()
    _save(_image(), root / "a.jpg", "JPEG")
    (root / "a.xml").write_bytes(_xml("a.jpg", [("dog", (10, 5, 60, 45))]))
    return root


def _voc_root(root):
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    _save(_image(), root / "JPEGImages" / "a.jpg", "JPEG")
    (root / "Annotations" / "a.xml").write_bytes(_xml("a.jpg", [("dog", (10, 5, 60, 45))]))
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("a\n")
    return root


def test_auto_detection_states_each_roots_layout(tmp_path):
    voc, folder = _voc_root(tmp_path / "voc"), _labelimg_folder(tmp_path / "mine")
    found = formats.discover([str(voc), str(folder)], ("trainval",))
    assert found.layouts == ["voc", "labelimg"]
    assert found.statements == [
        f"{voc}: detected Pascal VOC layout (ImageSets/Main split files: trainval 1)",
        f"{folder}: detected labelImg folder (1 XML files, seeded split: trainval 1)",
    ]
    assert found.source_class_names() is None  # VOC and labelImg take their classes from the data


def test_a_folder_in_no_known_layout_is_refused_with_the_layouts_understood(tmp_path):
    (tmp_path / "photos").mkdir()
    _save(_image(), tmp_path / "photos" / "a.jpg", "JPEG")
    with pytest.raises(sources.SourceError) as error:
        formats.discover([str(tmp_path / "photos")], ("trainval",))
    message = str(error.value)
    assert str(tmp_path / "photos") in message and "Pascal VOC" in message and "labelImg" in message
    assert "--format" in message


def test_a_forced_format_is_used_and_said(tmp_path):
    folder = _labelimg_folder(tmp_path / "mine")
    found = formats.discover([str(folder)], ("trainval",), layout="labelimg")
    assert found.statements[0].startswith(f"{folder}: read as --format=labelimg: labelImg folder")
    with pytest.raises(sources.SourceError, match="ImageSets/Main"):
        formats.discover([str(folder)], ("trainval",), layout="voc")


def test_the_converter_refuses_an_unknown_layout_in_one_line(tmp_path, caplog):
    (tmp_path / "photos").mkdir()
    status = tf_convert_data.main([f"--dataset_dir={tmp_path / 'photos'}",
                                   f"--output_dir={tmp_path / 'out'}", "--num_workers=1"])
    assert status == 2
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and "no annotations in a layout this converter understands" in errors[0]
    assert "Traceback" not in caplog.text


def test_splits_map_a_split_name_to_another_voc_split_file(tmp_path, caplog):
    root = _voc_root(tmp_path / "voc")
    (root / "ImageSets" / "Main" / "trainval.txt").rename(root / "ImageSets" / "Main" / "train.txt")
    out = tmp_path / "out"
    status = tf_convert_data.main([f"--dataset_dir={root}", f"--output_dir={out}", "--num_workers=1",
                                   "--splits=trainval=train"])
    assert status == 0
    info = json.loads((out / "dataset_info.json").read_text())
    assert list(info["splits"]) == ["trainval"] and info["splits"]["trainval"]["num_images"] == 1
    with pytest.raises(sources.SourceError, match="not a path"):
        formats.discover([str(root)], ("trainval",), split_sources={"trainval": "../train"})
    with pytest.raises(sources.SourceError, match=r"\['test'\].*not among the splits"):
        formats.discover([str(root)], ("trainval",), split_sources={"test": "train"})
    with pytest.raises(sources.SourceError, match="labelImg folder has no split files"):
        formats.discover([str(_labelimg_folder(tmp_path / "mine"))], ("trainval",), split_sources={"trainval": "x"})


@pytest.mark.parametrize("splits", ["trainval=", "=train", ",", "a=b,=c"])
def test_a_malformed_splits_flag_is_refused(tmp_path, splits):
    with pytest.raises(SystemExit) as exit_info:
        tf_convert_data.main([f"--dataset_dir={tmp_path}", f"--output_dir={tmp_path / 'out'}", f"--splits={splits}"])
    assert exit_info.value.code == 2
