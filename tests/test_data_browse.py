"""python -m datasets.browse on a tiny converted VOC root whose boxes are known: the pictures, the statistics,
the augmented pictures, and the errors a user can meet."""

import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import command_line
from datasets import browse, converter
from preprocessing.visualization import class_colour

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
GREY = (128, 128, 128)
CLASS_IDS = {"cat": 1, "dog": 2}  # the converter numbers the sorted names

# id -> ((width, height), [(class, (xmin, ymin, xmax, ymax) pixels, difficult)]); the sizes are chosen away
# from the COCO bucket limits (32² = 1024, 96² = 9216) so that float32 storage cannot move a box across one.
IMAGES = {
    "plain": ((256, 128), [("dog", (10, 10, 50, 40), 0), ("cat", (100, 20, 190, 90), 1)]),  # 1200, 6300: medium
    "whole": ((256, 128), [("cat", (0, 0, 256, 128), 0), ("dog", (5, 5, 25, 25), 0)]),  # 32768 large, 400 small
    "tiny": ((64, 48), [("dog", (8, 8, 40, 39), 0)]),  # 992: small
    "empty": ((256, 128), []),
}


def _xml(image_id, size, objects):
    parts = [f"<annotation><filename>{image_id}.png</filename>"
             f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"]
    for name, (xmin, ymin, xmax, ymax), difficult in objects:
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin>"
                     f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """A converted split 'trainval' of the plain grey images of :data:`IMAGES` (one shard)."""
    base = tmp_path_factory.mktemp("browse")
    root = base / "voc"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    for image_id, (size, objects) in IMAGES.items():
        Image.new("RGB", size, GREY).save(root / "JPEGImages" / f"{image_id}.png")
        (root / "Annotations" / f"{image_id}.xml").write_text(_xml(image_id, size, objects))
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(IMAGES) + "\n")
    converter.convert([str(root)], str(base / "data"), "tiny", converter.ConversionOptions(splits=("trainval",)),
                      quiet=True)
    return base / "data"


def _run(capfd, caplog, *argv):
    """(exit status, stdout, stderr and the log's lines): absl's handler keeps the stream it found first,
    so the log lines are read from caplog."""
    caplog.clear()
    status = browse.main(list(argv))
    out, err = capfd.readouterr()
    return status, out, err + "\n" + "\n".join(record.getMessage() for record in caplog.records)


def _pngs(folder):
    return sorted(name for name in os.listdir(folder) if name.endswith(".png"))


def _error_lines(err, caplog):
    """parse_flags' "ERROR: message" lines and run_command's logged errors (each one line, without a traceback)."""
    logged = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert all(record.exc_info is None and "\n" not in record.getMessage() for record in logged)
    return [line for line in err.splitlines() if line.startswith("ERROR: ")] + [r.getMessage() for r in logged]


def test_module_under_test_is_this_worktree():
    assert pathlib.Path(browse.__file__).resolve().parent.parent == REPO_ROOT


def test_statistics_equal_the_annotations(tiny_dataset, tmp_path, capfd, caplog):
    out = tmp_path / "out"
    status, printed, _ = _run(capfd, caplog, f"--dataset_dir={tiny_dataset}", f"--output_dir={out}", "--num_images=2")
    assert status == 0
    stats = json.loads((out / "stats.json").read_text())
    boxes = [(name, box, difficult, size) for size, objects in IMAGES.values() for name, box, difficult in objects]
    widths = {name: np.array([b[2] - b[0] for n, b, _, _ in boxes if n == name], float) for name in CLASS_IDS}
    widths["all"] = np.array([b[2] - b[0] for _, b, _, _ in boxes], float)

    assert (stats["images"], stats["images_without_objects"], stats["records_read"]) == (4, 1, 4)
    assert stats["image_sizes"]["distinct"] == 2
    assert stats["image_sizes"]["width"] == {"min": 64, "max": 256}
    assert stats["image_sizes"]["height"] == {"min": 48, "max": 128}
    assert stats["image_sizes"]["most_common"][0] == {"width": 256, "height": 128, "images": 3}
    expected = {  # images, objects, difficult, small, medium, large: worked by hand from IMAGES
        "cat": (2, 2, 1, 0, 1, 1),
        "dog": (3, 3, 0, 2, 1, 0),
        "all": (3, 5, 1, 2, 2, 1),
    }
    groups = {**stats["classes"], "all": stats["all"]}
    for name, counts in expected.items():
        group = groups[name]
        assert tuple(group[k] for k in ("images", "objects", "difficult", "small", "medium", "large")) == counts, name
        assert group["width_px"]["median"] == pytest.approx(np.median(widths[name]), abs=1e-3)
        assert group["width_px"]["min"] == pytest.approx(widths[name].min(), abs=1e-3)
        assert group["width_px"]["p95"] == pytest.approx(np.percentile(widths[name], 95), abs=1e-3)
    assert stats["classes"]["dog"]["width_px"]["median"] == pytest.approx(32.0, abs=1e-3)  # of 40, 20, 32
    assert stats["all"]["height_px"]["median"] == pytest.approx(31.0, abs=1e-3)  # of 30, 70, 128, 20, 31
    assert stats["all"]["aspect_ratio"]["max"] == pytest.approx(2.0, abs=1e-4)  # the whole 256x128 image
    assert stats["classes"]["cat"]["width_rel"]["median"] == pytest.approx((90 / 256 + 1.0) / 2, abs=1e-6)
    assert stats["classes"]["dog"]["sqrt_area_rel"]["min"] == pytest.approx(np.sqrt(20 / 256 * 20 / 128), abs=1e-6)
    assert stats["all"]["zero_area"] == stats["all"]["outside_image"] == 0

    # --num_images: the first records in shard order, named by index and file.
    assert _pngs(out) == [entry["file"] for entry in stats["drawn"]["images"]]
    assert [entry["index"] for entry in stats["drawn"]["images"]] == [0, 1]
    assert all(name.startswith(("0000_", "0001_")) for name in _pngs(out))

    lines = printed.splitlines()
    assert lines[0] == f"Split 'trainval' of dataset 'tiny' ({tiny_dataset})"
    assert "4 images, 1 without objects; 5 objects, 1 difficult" in lines
    assert "image sizes (width x height): 2 distinct, width 64..256, height 48..128; most common: 256x128 (3), " \
           "64x48 (1)" in lines
    assert [line.split() for line in lines if line.startswith("dog ")][0] == ["dog", "3", "3", "0", "2", "1", "0"]
    width_table = lines.index(next(line for line in lines if line.startswith("width (pixels)")))
    assert lines[width_table].split()[-5:] == ["min", "p5", "median", "p95", "max"]
    assert lines[width_table + 2].split() == ["dog", "20.0", "21.2", "32.0", "39.2", "40.0"]


def test_boxes_are_drawn_where_the_annotations_put_them(tiny_dataset, tmp_path, capfd, caplog):
    out = tmp_path / "out"
    status, _, _ = _run(capfd, caplog, f"--dataset_dir={tiny_dataset}", f"--output_dir={out}", "--num_images=20")
    assert status == 0
    names = _pngs(out)
    assert len(names) == 4  # every record of the split, fewer than --num_images
    plain = np.asarray(Image.open(out / next(n for n in names if n.endswith("_plain.png"))).convert("RGB"))
    assert plain.shape == (128, 256, 3)  # drawn at its own size: its shorter side is 128
    dog, cat = np.array(class_colour(CLASS_IDS["dog"])), np.array(class_colour(CLASS_IDS["cat"]))
    # the dog's box (10, 10, 50, 40): its left and bottom edges in the dog's colour, solid, inside the box grey
    assert (plain[24:38, 10] == dog).all() and (plain[24:38, 11] == dog).all()
    assert (plain[40, 15:48] == dog).all()
    assert np.abs(plain[25, 30].astype(int) - GREY).max() <= 2 and np.abs(plain[25, 8].astype(int) - GREY).max() <= 2
    # the difficult cat (100, 20, 190, 90): dashed, both colour and gaps along its left edge
    left_edge = plain[30:85, 100]
    on_edge = (left_edge == cat).all(axis=1)
    assert 0.3 < on_edge.mean() < 0.7, on_edge
    # a 64x48 image is enlarged 3x (its shorter side reaches 128), the boxes with it
    tiny = np.asarray(Image.open(out / next(n for n in names if n.endswith("_tiny.png"))).convert("RGB"))
    assert tiny.shape == (144, 192, 3)
    assert (tiny[60:100, 24] == dog).all()


def _augmented(capfd, caplog, dataset, out, seed):
    status, _, _ = _run(capfd, caplog, f"--dataset_dir={dataset}", f"--output_dir={out}", "--num_images=3", "--augmented",
                        f"--seed={seed}")
    assert status == 0
    return {name: np.asarray(Image.open(out / name)) for name in _pngs(out)}


def test_augmented_images_are_the_training_size_and_follow_the_seed(tiny_dataset, tmp_path, capfd, caplog):
    first = _augmented(capfd, caplog, tiny_dataset, tmp_path / "a", seed=1)
    again = _augmented(capfd, caplog, tiny_dataset, tmp_path / "b", seed=1)
    other = _augmented(capfd, caplog, tiny_dataset, tmp_path / "c", seed=2)
    assert len(first) == 3 and all(name.endswith("_augmented_seed1.png") for name in first)
    assert all(image.shape == (300, 300, 3) for image in first.values())  # ssd_300_vgg's input, as trained
    assert first.keys() == again.keys()
    assert all(np.array_equal(first[name], again[name]) for name in first)
    renamed = {name.replace("_seed1", "_seed2"): image for name, image in first.items()}
    assert renamed.keys() == other.keys()
    assert any(not np.array_equal(renamed[name], other[name]) for name in other)
    stats = json.loads((tmp_path / "c" / "stats.json").read_text())
    assert stats["drawn"]["augmented"] and stats["drawn"]["image_size"] == [300, 300]
    assert stats["all"]["objects"] == 5  # statistics are of the records as stored, not augmented


def _rewrite_shard(dataset, tmp_path, change):
    copy = tmp_path / "data"
    shutil.copytree(dataset, copy)
    info = json.loads((copy / "dataset_info.json").read_text())
    shard = copy / info["splits"]["trainval"]["files"][0]
    records = [bytes(record) for record in tf.compat.v1.io.tf_record_iterator(str(shard))]
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for record in change(records):
            writer.write(record)
    return copy, shard


def test_a_corrupt_record_is_named_and_skipped(tiny_dataset, tmp_path, capfd, caplog):
    copy, shard = _rewrite_shard(tiny_dataset, tmp_path, lambda records: [records[0], b"\xffnot an Example",
                                                                          *records[2:]])
    out = tmp_path / "out"
    status, printed, err = _run(capfd, caplog, f"--dataset_dir={copy}", f"--output_dir={out}")
    assert status == 0
    assert f"{shard}, record 2: skipped: not a readable tf.train.Example" in err
    assert "Traceback" not in err
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["records_in_split"], stats["records_read"]) == (4, 3)
    assert stats["problems"] == [{"file": str(shard), "record": 2, "problem": "skipped: not a readable tf.train.Example"}]
    assert len(_pngs(out)) == 3 and not any(name.startswith("0001_") for name in _pngs(out))
    assert printed.splitlines()[0].endswith(": 3 of its 4 records read")
    assert printed.splitlines()[1] == "1 problem(s): named in the warnings above and in stats.json"


def test_a_stored_size_that_is_not_the_image_size_is_named(tiny_dataset, tmp_path, capfd, caplog):
    def wrong_height(records):
        example = tf.train.Example.FromString(records[0])
        example.features.feature["image/height"].int64_list.value[:] = [7]
        return [example.SerializeToString(), *records[1:]]

    copy, shard = _rewrite_shard(tiny_dataset, tmp_path, wrong_height)
    status, _, err = _run(capfd, caplog, f"--dataset_dir={copy}", f"--output_dir={tmp_path / 'out'}", "--num_images=1")
    assert status == 0
    assert f"{shard}, record 1: the record says " in err and "x7 pixels but its image decodes to " in err


def test_a_record_with_damaged_data_ends_its_shard_as_in_training(tiny_dataset, tmp_path, capfd, caplog):
    copy, shard = _rewrite_shard(tiny_dataset, tmp_path, lambda records: records)
    data = bytearray(shard.read_bytes())
    length = int.from_bytes(data[:8], "little")
    data[12 + length + 4 + 12 + 5] ^= 0x55  # a byte inside the second record's data: its data checksum fails
    shard.write_bytes(bytes(data))
    out = tmp_path / "out"
    status, _, err = _run(capfd, caplog, f"--dataset_dir={copy}", f"--output_dir={out}", "--num_images=0")
    assert status == 0
    assert f"{shard}, record 2: damaged data" in err and "the rest of this shard (3 records) is not read" in err
    stats = json.loads((out / "stats.json").read_text())
    assert stats["records_read"] == 1 and _pngs(out) == []


@pytest.mark.parametrize("case", ["no_dataset_info", "unknown_split", "output_is_a_file", "negative_num_images",
                                  "bad_image_size", "missing_output_dir"])
def test_bad_arguments_are_one_line_and_exit_2(case, tiny_dataset, tmp_path, capfd, caplog):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    argv = {
        "no_dataset_info": [f"--dataset_dir={tmp_path}", f"--output_dir={tmp_path / 'o'}"],
        "unknown_split": [f"--dataset_dir={tiny_dataset}", "--split=val", f"--output_dir={tmp_path / 'o'}"],
        "output_is_a_file": [f"--dataset_dir={tiny_dataset}", f"--output_dir={a_file}"],
        "negative_num_images": [f"--dataset_dir={tiny_dataset}", f"--output_dir={tmp_path / 'o'}", "--num_images=-1"],
        "bad_image_size": [f"--dataset_dir={tiny_dataset}", f"--output_dir={tmp_path / 'o'}", "--image_size=0"],
        "missing_output_dir": [f"--dataset_dir={tiny_dataset}"],
    }[case]
    named = {
        "no_dataset_info": f"{tmp_path} has no dataset_info.json",
        "unknown_split": "has no split 'val' (it has ['trainval'])",
        "output_is_a_file": f"--output_dir={a_file} is a file, not a directory",
        "negative_num_images": "--num_images must be an integer >= 0, got -1",
        "bad_image_size": "--image_size must be 'S' or 'H,W'",
        "missing_output_dir": "--output_dir",
    }[case]
    try:
        status = browse.main(argv)
    except SystemExit as stopped:  # parse_flags' errors
        status = stopped.code
    err = capfd.readouterr().err
    assert status == command_line.EXIT_USAGE
    errors = _error_lines(err, caplog)
    assert len(errors) == 1 and named in errors[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_help_and_file_names(capsys):
    with pytest.raises(SystemExit) as stopped:
        browse.main(["--help"])
    assert stopped.value.code == 0
    assert "\n  --[no]augmented:" in capsys.readouterr().out
    assert browse.image_filename(3, "voc/JPEGImages/Blood Image (12).jpg", "x", 4) == "0003_Blood_Image_12_.png"
    assert browse.image_filename(12, "", "../../etc/passwd", 4, "_augmented_seed0") == \
        "0012_etc_passwd_augmented_seed0.png"
    assert browse.image_filename(0, "", "", 5) == "00000_record.png"
    assert browse.safe_name("..hidden") == "hidden"


def test_python_m_datasets_browse(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    completed = subprocess.run(
        [sys.executable, "-m", "datasets.browse", f"--dataset_dir={tiny_dataset}", f"--output_dir={out}",
         "--num_images=1"],
        capture_output=True, text=True, cwd=str(REPO_ROOT), timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert completed.returncode == 0, completed.stderr
    assert "Traceback" not in completed.stderr
    assert "Reading split 'trainval': 4 images in" in completed.stderr
    assert any(line.split()[:3] == ["all", "3", "5"] for line in completed.stdout.splitlines()), completed.stdout
    assert len(_pngs(out)) == 1 and (out / "stats.json").is_file()


def test_parse_listing_reads_the_stored_size_else_decodes_the_image():
    import io

    from datasets import tfrecord_schema

    encoded = io.BytesIO()
    Image.new("RGB", (30, 20), GREY).save(encoded, "PNG")
    stored = tfrecord_schema.make_example(encoded.getvalue(), "PNG", 200, 100, [[0.1, 0.2, 0.5, 0.6]], [2],
                                          difficult=[1], filename="a.png")
    lacking = tfrecord_schema.make_example(encoded.getvalue(), "PNG", 0, 0, [], [])
    with tf.Graph().as_default():
        serialized = tf.compat.v1.placeholder(tf.string, [])
        listing = tfrecord_schema.parse_listing(serialized)
        with tf.compat.v1.Session() as session:
            first = session.run(listing, {serialized: stored.SerializeToString()})
            second = session.run(listing, {serialized: lacking.SerializeToString()})
    assert (first["height"], first["width"], first["filename"]) == (200, 100, b"a.png")
    assert first["labels"].tolist() == [2] and first["difficult"].tolist() == [1]
    np.testing.assert_allclose(first["boxes"], [[0.1, 0.2, 0.5, 0.6]])
    assert (second["height"], second["width"], second["boxes"].shape) == (20, 30, (0, 4))
