"""The converter on messy data: every bad input has its stated outcome and no good example is lost."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import tf_convert_data
from datasets import conversion_report as report
from datasets import converter, sample_data, voc_xml

from test_data_voc_xml import BILLION_LAUGHS, external_entity_xml

W, H = 100, 50  # the corpus images' size unless stated


def _image(width=W, height=H, mode="RGB", seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def _save(image, path, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def _xml(filename, objects, size=(W, H)):
    size_xml = "" if size is None else f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
    parts = [f"<annotation><folder>JPEGImages</folder><filename>{filename}</filename>{size_xml}"]
    for name, (xmin, ymin, xmax, ymax), *flags in objects:
        difficult, truncated = flags if flags else (0, 0)
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult><truncated>{truncated}</truncated>"
                     f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")
    return ("".join(parts) + "</annotation>").encode()


def _relative(box, width=W, height=H):
    xmin, ymin, xmax, ymax = box
    return (ymin / height, xmin / width, ymax / height, xmax / width)


class Corpus:
    """A VOC root of hand-made bad inputs; `expected` is what each id must turn into."""

    def __init__(self, root, secret):
        self.root = root
        self.annotations = root / "Annotations"
        self.images = root / "JPEGImages"
        for folder in (self.annotations, self.images, root / "ImageSets" / "Main"):
            folder.mkdir(parents=True)
        self.ids = []
        self.expected = {}  # id -> (boxes relative, labels, difficult, truncated, (height, width))
        self.skipped = {}  # id -> reason
        good = [("dog", (10, 5, 60, 45), 1, 0), ("cat", (0, 0, 100, 50), 0, 1)]
        self.add("good_first", _xml("good_first.jpg", good), image=("JPEG", _image()),
                 expect=([_relative(b) for _, b, *_ in good], [1, 2], [1, 0], [0, 1]))
        self.add("gray", _xml("gray.jpg", [("cat", (1, 2, 3, 4))]), image=("JPEG", _image(mode="L")),
                 expect=([_relative((1, 2, 3, 4))], [2]))
        self.add("cmyk", _xml("cmyk.jpg", [("dog", (5, 5, 50, 40))]), image=("JPEG", _image(mode="CMYK")),
                 expect=([_relative((5, 5, 50, 40))], [1]))
        palette = _image().convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
        self.add("palette", _xml("palette.png", [("dog", (5, 5, 50, 40))]), image=("PNG", palette), ext=".png",
                 expect=([_relative((5, 5, 50, 40))], [1]))
        # Stored 100x50 with orientation 6: displayed (and annotated) as 50x100.
        exif = Image.Exif()
        exif[0x0112] = 6
        self.add("exif_rotated", _xml("exif_rotated.jpg", [("cat", (5, 10, 30, 90))], size=(H, W)),
                 image=("JPEG", _image(), {"exif": exif.tobytes()}),
                 expect=([_relative((5, 10, 30, 90), H, W)], [2]), shape=(W, H))
        self.add("size_missing", _xml("size_missing.jpg", [("dog", (10, 10, 20, 20))], size=None),
                 image=("JPEG", _image()), expect=([_relative((10, 10, 20, 20))], [1]))
        self.add("size_zero", _xml("size_zero.jpg", [("dog", (10, 10, 20, 20))], size=(0, 0)),
                 image=("JPEG", _image()), expect=([_relative((10, 10, 20, 20))], [1]))
        self.add("size_wrong", _xml("size_wrong.jpg", [("dog", (10, 10, 20, 20))], size=(200, 100)),
                 image=("JPEG", _image()), expect=([_relative((10, 10, 20, 20))], [1]))
        self.add("outside", _xml("outside.jpg", [("dog", (-5, 10, 120, 60)), ("cat", (150, 60, 170, 80))]),
                 image=("JPEG", _image()), expect=([_relative((0, 10, 100, 50))], [1]))
        self.add("zero_area", _xml("zero_area.jpg", [("dog", (30, 30, 30, 40)), ("cat", (40, 30, 20, 45)), ("cat", (1, 1, 9, 9))]),
                 image=("JPEG", _image()), expect=([_relative((1, 1, 9, 9))], [2]))
        self.add("unknown_class", _xml("unknown_class.jpg", [("unicorn", (1, 1, 9, 9)), ("dog", (2, 2, 8, 8))]),
                 image=("JPEG", _image()), expect=([_relative((2, 2, 8, 8))], [1]))
        self.add("empty", _xml("empty.jpg", []), image=("JPEG", _image()), expect=([], []))
        self.add("missing_image", _xml("missing_image.jpg", [("dog", (1, 1, 9, 9))]), skip="missing image")
        truncated = io.BytesIO()
        _image(seed=5).save(truncated, "JPEG")
        self.add("truncated", _xml("truncated.jpg", [("dog", (1, 1, 9, 9))]), raw_image=truncated.getvalue()[:600],
                 skip="unreadable image")
        self.add("unreadable", _xml("unreadable.jpg", [("dog", (1, 1, 9, 9))]), raw_image=b"GIF89a? no, just text",
                 skip="unreadable image")
        self.add("malformed", b"<annotation><filename>malformed.jpg</filename><object>", image=("JPEG", _image()),
                 skip="malformed XML")
        self.add("missing_annotation", None, image=("JPEG", _image()), skip="missing annotation")
        self.add("bomb", BILLION_LAUGHS, image=("JPEG", _image()), skip="unsafe XML")
        self.add("xxe", external_entity_xml(secret), image=("JPEG", _image()), skip="unsafe XML")
        self.ids.append("good_first")  # listed twice: a duplicate id
        good_last = [("cat", (20, 10, 80, 40))]
        self.add("good_last", _xml("good_last.jpg", good_last), image=("JPEG", _image(seed=9)),
                 expect=([_relative((20, 10, 80, 40))], [2]))
        (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(self.ids) + "\n")

    def add(self, image_id, xml, image=None, raw_image=None, ext=".jpg", expect=None, skip=None, shape=(H, W)):
        self.ids.append(image_id)
        if xml is not None:
            (self.annotations / f"{image_id}.xml").write_bytes(xml)
        if image is not None:
            fmt, picture, *kwargs = image
            _save(picture, self.images / f"{image_id}{ext}", fmt, **(kwargs[0] if kwargs else {}))
        if raw_image is not None:
            (self.images / f"{image_id}{ext}").write_bytes(raw_image)
        if skip:
            self.skipped[image_id] = skip
        else:
            boxes, labels, *flags = expect
            n = len(labels)
            difficult, truncated = flags if flags else ([0] * n, [0] * n)
            self.expected[image_id] = (np.array(boxes, np.float64).reshape(-1, 4), labels, difficult, truncated, shape)


@pytest.fixture(scope="module")
def corpus_conversion(tmp_path_factory):
    base = tmp_path_factory.mktemp("corpus")
    secret = base / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    corpus = Corpus(base / "voc", secret)
    label_map = base / "labels.txt"
    label_map.write_text("1:dog\n2:cat\n")  # ids as given, not sorted
    options = converter.ConversionOptions(splits=("trainval",), label_map_path=str(label_map), num_workers=2, num_shards=2)
    result = converter.convert([str(corpus.root)], str(base / "out"), "messy", options)
    return corpus, result, secret


def _problems(result, reason):
    return [p for p in result.problems if p.reason == reason]


def test_corpus_keeps_every_good_example_with_its_boxes(corpus_conversion, read_split):
    corpus, result, _ = corpus_conversion
    spec, examples = read_split(result.output_dir, "trainval")
    by_id = {example["source_id"].decode().split("/", 1)[1]: example for example in examples}
    assert sorted(by_id) == sorted(corpus.expected)
    for image_id, (boxes, labels, difficult, truncated, shape) in corpus.expected.items():
        example = by_id[image_id]
        np.testing.assert_allclose(example["boxes"], boxes, rtol=0, atol=1e-6, err_msg=image_id)
        np.testing.assert_array_equal(example["labels"], labels, err_msg=image_id)
        np.testing.assert_array_equal(example["difficult"], difficult, err_msg=image_id)
        np.testing.assert_array_equal(example["truncated"], truncated, err_msg=image_id)
        assert tuple(example["image"].shape) == (*shape, 3), image_id
        assert example["filename"].decode().startswith("voc/JPEGImages/" + image_id)
    assert spec.num_samples == len(corpus.expected) == result.info["splits"]["trainval"]["num_images"]
    assert spec.labels_to_names == {0: "none", 1: "dog", 2: "cat"}
    assert result.info["splits"]["trainval"]["images_without_objects"] == 1


def test_corpus_skips_each_bad_image_with_its_reason(corpus_conversion):
    corpus, result, _ = corpus_conversion
    skipped = {p.file: p.reason for p in result.problems if p.action == report.SKIPPED_IMAGE}
    for image_id, reason in corpus.skipped.items():
        matches = [r for f, r in skipped.items() if os.path.splitext(os.path.basename(f))[0] == image_id]
        assert matches == [reason], (image_id, skipped)
    # The id listed twice is a warning: its image is kept once, nothing is skipped.
    assert [p.reason for p in result.problems if p.action == report.WARNING].count("duplicate id") == 1
    assert "duplicate id" not in [p.reason for p in result.problems if p.action == report.SKIPPED_IMAGE]
    assert len(skipped) == len(corpus.skipped)


def test_corpus_drops_clips_and_fixes_with_file_and_field(corpus_conversion):
    _, result, _ = corpus_conversion
    clipped = _problems(result, "box outside image")
    assert [(os.path.basename(p.file), p.field) for p in clipped] == [("outside.xml", "object[0]/bndbox")]
    zero_area = sorted((os.path.basename(p.file), p.field) for p in _problems(result, "zero-area box"))
    assert zero_area == [("outside.xml", "object[1]/bndbox"), ("zero_area.xml", "object[0]/bndbox"),
                         ("zero_area.xml", "object[1]/bndbox")]
    unknown = _problems(result, "unknown class")
    assert [(os.path.basename(p.file), p.field, p.action) for p in unknown] == [
        ("unknown_class.xml", "object[0]/name", report.DROPPED_OBJECT)]
    size_fixed = sorted(os.path.basename(p.file) for p in _problems(result, "size from image"))
    assert size_fixed == ["size_missing.xml", "size_wrong.xml", "size_zero.xml"]
    re_encoded = sorted(os.path.basename(p.file) for p in _problems(result, "image re-encoded"))
    assert re_encoded == ["cmyk.jpg", "exif_rotated.jpg", "palette.png"]


def test_hostile_xml_neither_hangs_nor_leaks(corpus_conversion):
    _, result, secret = corpus_conversion
    # Both refused at their DOCTYPE, before any entity could be expanded or fetched (no work to hang on).
    unsafe = {os.path.basename(p.file): p.message for p in _problems(result, "unsafe XML")}
    assert sorted(unsafe) == ["bomb.xml", "xxe.xml"] and all("DOCTYPE" in m for m in unsafe.values()), unsafe
    out = result.output_dir
    for name in os.listdir(out):
        assert b"TOP-SECRET-CONTENT" not in open(os.path.join(out, name), "rb").read(), name


def test_summary_and_report_file_agree_with_the_result(corpus_conversion):
    corpus, result, _ = corpus_conversion
    with open(os.path.join(result.output_dir, report.REPORT_JSON)) as f:
        saved = json.load(f)
    assert len(saved["problems"]) == len(result.problems)
    assert saved["summary"][report.SKIPPED_IMAGE]["unsafe XML"] == 2
    text = open(os.path.join(result.output_dir, report.REPORT_TEXT)).read()
    assert f"trainval: {len(corpus.expected)} images in 2 shards" in text
    assert "skipped image: 7 (" in text and "bomb.xml" in text  # the duplicate id is a warning, kept once
    with open(os.path.join(result.output_dir, converter.DATASET_INFO)) as f:
        info = json.load(f)
    assert info["skipped_images"] == 7 and info["num_classes"] == 3
    assert info["splits"]["trainval"]["objects_per_class"] == {"dog": 8, "cat": 5}
    assert open(os.path.join(result.output_dir, "labels.txt")).read() == "0:none\n1:dog\n2:cat\n"


def test_unknown_class_error_policy_stops_before_writing(tmp_path, corpus_conversion):
    corpus, _, _ = corpus_conversion
    label_map = tmp_path / "labels.txt"
    label_map.write_text("dog\ncat\n")
    options = converter.ConversionOptions(splits=("trainval",), label_map_path=str(label_map), unknown_class="error")
    with pytest.raises(converter.ConversionError, match="unknown_class.xml.*unicorn"):
        converter.convert([str(corpus.root)], str(tmp_path / "out"), "messy", options)
    assert not (tmp_path / "out" / converter.DATASET_INFO).exists()
    assert [p for p in os.listdir(tmp_path / "out") if not p.startswith(".")] == []


# ----------------------------------------------------------------------------- layouts, shards, merging


def _labelimg_folder(root):
    """XML next to images (mixed extension case) and XML apart from images; no split files."""
    (root / "shots").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "pictures").mkdir()
    names = []
    for index, ext in enumerate([".JPG", ".jpeg", ".png", ".jpg", ".Jpg", ".PNG", ".jpg", ".jpeg"]):
        stem = f"img{index}"
        fmt = "PNG" if ext.lower() == ".png" else "JPEG"
        next_to_image = index % 2 == 0
        image_dir, xml_dir = (root / "shots", root / "shots") if next_to_image else (root / "pictures", root / "labels")
        _save(_image(seed=index), image_dir / f"{stem}{ext}", fmt)
        (xml_dir / f"{stem}.xml").write_bytes(_xml(f"{stem}{ext}", [("thing", (index, 1, index + 10, 20))]))
        names.append(stem)
    return names


def test_labelimg_folder_converts_with_a_seeded_reproducible_split(tmp_path, read_split):
    names = _labelimg_folder(tmp_path / "labelimg")
    options = converter.ConversionOptions(splits=("train", "test"), test_fraction=0.25, split_seed=3)
    first = converter.convert([str(tmp_path / "labelimg")], str(tmp_path / "a"), "mine", options)
    again = converter.convert([str(tmp_path / "labelimg")], str(tmp_path / "b"), "mine", options)
    other_seed = converter.convert([str(tmp_path / "labelimg")], str(tmp_path / "c"), "mine",
                                   converter.ConversionOptions(splits=("train", "test"), test_fraction=0.25, split_seed=4))
    assert (first.info["splits"]["train"]["num_images"], first.info["splits"]["test"]["num_images"]) == (6, 2)

    def ids(out, split):
        return sorted(e["source_id"].decode() for e in read_split(out, split)[1])

    assert ids(tmp_path / "a", "test") == ids(tmp_path / "b", "test")
    assert ids(tmp_path / "a", "test") != ids(tmp_path / "c", "test")
    all_ids = ids(tmp_path / "a", "train") + ids(tmp_path / "a", "test")
    assert sorted(i.rsplit("/", 1)[1] for i in all_ids) == sorted(names)
    for example in read_split(tmp_path / "a", "train")[1] + read_split(tmp_path / "a", "test")[1]:
        index = int(example["source_id"].decode().rsplit("img", 1)[1])
        np.testing.assert_allclose(example["boxes"], [_relative((index, 1, index + 10, 20))], atol=1e-6)
    assert first.problems == []


def test_merged_voc_roots_and_balanced_reproducible_shards(tmp_path, read_split):
    first = sample_data.generate_voc_sample(str(tmp_path / "VOC2007"), num_images=15, image_size=64, seed=1)
    second = sample_data.generate_voc_sample(str(tmp_path / "VOC2012"), num_images=10, image_size=64, seed=2)
    os.remove(os.path.join(second, "ImageSets", "Main", "test.txt"))  # like VOC2012: no test split
    options = converter.ConversionOptions(num_shards=4, shuffle_seed=7)
    result = converter.convert([first, second], str(tmp_path / "out"), "pascal_like", options)
    assert result.info["splits"]["trainval"]["num_images"] == 12 + 8
    assert result.info["splits"]["test"]["num_images"] == 3
    assert [p.reason for p in result.problems] == ["split missing"]
    shards = result.info["splits"]["trainval"]["files"]
    assert shards == [f"pascal_like_trainval-{i:05d}-of-00004.tfrecord" for i in range(4)]
    counts = [sum(1 for _ in tf.compat.v1.io.tf_record_iterator(str(tmp_path / "out" / s))) for s in shards]
    assert sorted(counts) == [5, 5, 5, 5]
    _, examples = read_split(tmp_path / "out", "trainval")
    source_ids = [e["source_id"].decode() for e in examples]
    assert len(set(source_ids)) == 20 and {i.split("/")[0] for i in source_ids} == {"VOC2007", "VOC2012"}
    assert source_ids != sorted(source_ids)  # shuffled across shards
    converter.convert([first, second], str(tmp_path / "again"), "pascal_like", options)
    for shard in shards:
        assert (tmp_path / "out" / shard).read_bytes() == (tmp_path / "again" / shard).read_bytes()


def test_the_same_root_twice_is_reported_as_duplicates(tmp_path):
    root = sample_data.generate_voc_sample(str(tmp_path / "voc"), num_images=5, image_size=48, seed=3)
    result = converter.convert([root, root], str(tmp_path / "out"), "twice",
                               converter.ConversionOptions(splits=("trainval",)))
    assert result.num_images == 4
    assert [(p.action, p.reason) for p in result.problems] == [(report.WARNING, "duplicate id")] * 4
    assert all(p.message.endswith("kept once") for p in result.problems)


def test_reconverting_replaces_old_shards_and_refuses_another_dataset(tmp_path):
    root = sample_data.generate_voc_sample(str(tmp_path / "voc"), num_images=8, image_size=48, seed=4)
    out = tmp_path / "out"
    converter.convert([root], str(out), "s", converter.ConversionOptions(num_shards=3))
    converter.convert([root], str(out), "s", converter.ConversionOptions(num_shards=1))
    assert sorted(p for p in os.listdir(out) if p.endswith(".tfrecord")) == [
        "s_test-00000-of-00001.tfrecord", "s_trainval-00000-of-00001.tfrecord"]
    with pytest.raises(converter.ConversionError, match="already holds dataset 's'"):
        converter.convert([root], str(out), "other", converter.ConversionOptions())


# ----------------------------------------------------------------------------- command line


def test_command_line_exit_codes(tmp_path, corpus_conversion):
    corpus, _, _ = corpus_conversion
    label_map = tmp_path / "labels.txt"
    label_map.write_text("dog\ncat\n")
    common = [f"--dataset_dir={corpus.root}", "--splits=trainval", f"--label_map={label_map}", "--num_workers=1"]
    assert tf_convert_data.main(common + [f"--output_dir={tmp_path / 'ok'}"]) == 0
    assert tf_convert_data.main(common + [f"--output_dir={tmp_path / 'strict'}", "--strict"]) == 1
    assert (tmp_path / "strict" / converter.DATASET_INFO).exists()  # strict still writes what was good
    assert tf_convert_data.main(common + [f"--output_dir={tmp_path / 'err'}", "--unknown_class=error"]) == 2
    assert tf_convert_data.main([f"--dataset_dir={tmp_path / 'nowhere'}", f"--output_dir={tmp_path / 'x'}"]) == 2
    bad_only = tmp_path / "bad_only"
    (bad_only / "Annotations").mkdir(parents=True)
    (bad_only / "ImageSets" / "Main").mkdir(parents=True)
    (bad_only / "ImageSets" / "Main" / "trainval.txt").write_text("a\n")
    (bad_only / "Annotations" / "a.xml").write_bytes(BILLION_LAUGHS)
    assert tf_convert_data.main([f"--dataset_dir={bad_only}", f"--output_dir={tmp_path / 'none'}", "--splits=trainval"]) == 1
    assert not (tmp_path / "none" / converter.DATASET_INFO).exists()
    assert (tmp_path / "none" / report.REPORT_TEXT).exists()


def test_two_annotations_of_one_image_keep_the_first(tmp_path):
    folder = tmp_path / "labelimg"
    folder.mkdir()
    _save(_image(), folder / "a.jpg", "JPEG")
    (folder / "a.xml").write_bytes(_xml("a.jpg", [("thing", (1, 1, 5, 5))]))
    (folder / "a_copy.xml").write_bytes(_xml("a.jpg", [("thing", (2, 2, 6, 6))]))
    result = converter.convert([str(folder)], str(tmp_path / "out"), "dup", converter.ConversionOptions(splits=("all",)))
    assert result.num_images == 1
    assert [(os.path.basename(p.file), p.reason) for p in result.problems] == [("a_copy.xml", "duplicate image")]


def test_an_image_in_two_splits_is_kept_in_both_with_a_warning(tmp_path):
    root = sample_data.generate_voc_sample(str(tmp_path / "voc"), num_images=4, image_size=48, seed=5)
    main = os.path.join(root, "ImageSets", "Main")
    shared_id = open(os.path.join(main, "trainval.txt")).read().split()[0]
    with open(os.path.join(main, "test.txt"), "a") as f:
        f.write(shared_id + "\n")
    result = converter.convert([root], str(tmp_path / "out"), "leak", converter.ConversionOptions())
    assert result.num_images == 5
    assert [(p.action, p.reason) for p in result.problems] == [(report.WARNING, "image in several splits")]


def test_the_script_runs_from_anywhere_and_prints_the_summary(tmp_path):
    root = sample_data.generate_voc_sample(str(tmp_path / "voc"), num_images=6, image_size=48, seed=6)
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tf_convert_data.py")
    completed = subprocess.run(
        [sys.executable, script, f"--dataset_dir={root}", f"--output_dir={tmp_path / 'out'}", "--output_name=tiny",
         "--num_workers=2"],
        capture_output=True, text=True, cwd=str(tmp_path), timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "dataset 'tiny': 6 images" in completed.stderr and "images/s" in completed.stderr
    assert (tmp_path / "out" / converter.DATASET_INFO).is_file()


# ----------------------------------------------------------------------------- box rule, against a reference

_coordinate = st.floats(min_value=-300, max_value=900, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(box=st.tuples(_coordinate, _coordinate, _coordinate, _coordinate),
       size=st.tuples(st.integers(1, 640), st.integers(1, 640)))
def test_clip_and_normalize_matches_a_numpy_reference(box, size):
    width, height = size
    obj = voc_xml.ObjectAnnotation(0, "dog", *box, difficult=0, truncated=0, problems=[])
    kept, problems = converter.clip_and_normalize(obj, width, height, {"dog": 1}, "a.xml")
    xmin, ymin, xmax, ymax = np.clip(box, 0, [width, height, width, height])
    if xmax <= xmin or ymax <= ymin:
        assert kept is None and [p.reason for p in problems] == ["zero-area box"]
        return
    relative, class_id = kept
    np.testing.assert_allclose(relative, [ymin / height, xmin / width, ymax / height, xmax / width], rtol=0, atol=1e-12)
    assert class_id == 1 and all(0.0 <= v <= 1.0 for v in relative)
    was_clipped = not np.array_equal([xmin, ymin, xmax, ymax], box)
    assert [p.reason for p in problems] == (["box outside image"] if was_clipped else [])


def test_class_names_with_control_characters_are_normalised_and_read_back_the_same(tmp_path, read_split):
    """A newline, a next-line (U+0085) or a line separator (U+2028) inside <name>, all legal in XML,
    would split its labels.txt line (str.splitlines splits at each)."""
    from datasets import label_map

    root = tmp_path / "names"
    root.mkdir()
    names = ["red\ncell", "red cell", "plate\x85let", "white\u2028\tcell ", "plate let"]
    for index, name in enumerate(names):
        _save(_image(seed=index), root / f"img{index}.jpg", "JPEG")
        (root / f"img{index}.xml").write_bytes(_xml(f"img{index}.jpg", [(name, (10, 5, 60, 45))]))
    result = converter.convert([str(root)], str(tmp_path / "out"), "names",
                               converter.ConversionOptions(splits=("train",)))
    expected = {1: "plate let", 2: "red cell", 3: "white cell"}
    assert {int(k): v for k, v in result.info["classes"].items() if int(k)} == expected
    assert label_map.read_label_map(str(tmp_path / "out" / "labels.txt")) == expected
    written = json.loads((tmp_path / "out" / "dataset_info.json").read_text())["classes"]
    assert {int(k): v for k, v in written.items() if int(k)} == expected
    fixed = [p for p in result.problems if p.reason == "class name"]
    assert len(fixed) == 3 and all(p.action == report.FIXED and p.field.endswith("/name") for p in fixed)
    assert any("'red\\ncell' normalised to 'red cell'" in p.message for p in fixed)
    labels = sorted(int(e["labels"][0]) for e in read_split(tmp_path / "out", "train")[1])
    assert labels == [1, 1, 2, 2, 3]


def test_voc_id_names_the_image_even_when_filename_names_another(tmp_path, read_split):
    """labelImg leftover after renaming: a.xml says <filename>b.jpg</filename>. In the VOC layout the id
    names the image: a.jpg keeps a.xml's boxes (a warning says so), b.jpg keeps its own."""
    root = tmp_path / "voc"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    for index, (image_id, named, box) in enumerate([("a", "b.jpg", (10, 5, 60, 45)), ("b", "b.jpg", (1, 2, 30, 40))]):
        _save(_image(seed=index), root / "JPEGImages" / f"{image_id}.jpg", "JPEG")
        (root / "Annotations" / f"{image_id}.xml").write_bytes(_xml(named, [("cell", box)]))
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("a\nb\n")
    result = converter.convert([str(root)], str(tmp_path / "out"), "ids", converter.ConversionOptions(splits=("trainval",)))
    assert result.num_images == 2 and result.count(report.SKIPPED_IMAGE) == 0
    [mismatch] = [p for p in result.problems if p.reason == "filename mismatch"]
    assert mismatch.action == report.WARNING and mismatch.file.endswith("a.xml") and "'b.jpg'" in mismatch.message
    examples = {e["filename"].decode(): e for e in read_split(tmp_path / "out", "trainval")[1]}
    np.testing.assert_allclose(examples["voc/JPEGImages/a.jpg"]["boxes"], [_relative((10, 5, 60, 45))], atol=1e-6)
    np.testing.assert_allclose(examples["voc/JPEGImages/b.jpg"]["boxes"], [_relative((1, 2, 30, 40))], atol=1e-6)


def test_a_dataset_dir_that_is_a_file_is_named_as_such(tmp_path):
    path = tmp_path / "not_a_dir.txt"
    path.write_text("x")
    with pytest.raises(converter.sources.SourceError, match="is a file, not a directory"):
        converter.convert([str(path)], str(tmp_path / "out"), "x")


@pytest.mark.parametrize("keep", [False, True])
def test_a_jpeg_cut_short_is_skipped_or_kept_with_a_warning(tmp_path, keep):
    root = tmp_path / "shots"
    root.mkdir()
    for index in range(3):
        _save(_image(seed=index), root / f"img{index}.jpg", "JPEG")
        (root / f"img{index}.xml").write_bytes(_xml(f"img{index}.jpg", [("cell", (10, 5, 60, 45))]))
    whole = (root / "img1.jpg").read_bytes()
    (root / "img1.jpg").write_bytes(whole[: len(whole) * 2 // 3] + b"\xff\xd9")  # decodes, grey at the bottom
    result = converter.convert([str(root)], str(tmp_path / "out"), "cut", converter.ConversionOptions(
        splits=("train",), keep_incomplete_images=keep))
    [problem] = [p for p in result.problems if p.file.endswith("img1.jpg")]
    if keep:
        assert result.num_images == 3 and (problem.action, problem.reason) == (report.WARNING, "incomplete image kept")
    else:
        assert result.num_images == 2 and (problem.action, problem.reason) == (report.SKIPPED_IMAGE, "unreadable image")
        assert "incomplete JPEG: its scan data ends early" in problem.message
    # The command line: the flag reaches the converter; --strict fails only when the image was skipped.
    flags = [f"--dataset_dir={root}", f"--output_dir={tmp_path / 'cli'}", "--splits=train", "--num_workers=1",
             "--strict"] + (["--keep_incomplete_images"] if keep else [])
    assert tf_convert_data.main(flags) == (0 if keep else 1)
    info = json.loads((tmp_path / "cli" / converter.DATASET_INFO).read_text())
    assert info["splits"]["train"]["num_images"] == (3 if keep else 2), info
