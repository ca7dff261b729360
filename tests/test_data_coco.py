"""COCO JSON input: boxes and labels read back from real TFRecords, every bad case reported with its
file and field, VOC and COCO giving the same records, COCO AP equal to pycocotools' on the original
JSON, the layouts a dataset dir may have, and the command line."""

import json
import math
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import tf_convert_data
from datasets import coco_json
from datasets import conversion_report as report
from datasets import converter, dataset_factory, formats, sample_data, sources, voc_xml
from evaluation import coco_metrics, detection_metrics

from test_data_convert import _image, _save

W, H = 100, 50


def _write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _relative(bbox, width=W, height=H):
    x, y, w, h = bbox
    return (y / height, x / width, (y + h) / height, (x + w) / width)


def voc_as_coco(voc_root, image_folder, json_path, split_ids, category_ids, first_image_id=1):
    """Writes the VOC annotations of ``split_ids`` as a COCO file (difficult -> iscrowd, a polygon per
    box), copying the images into ``image_folder``; returns the COCO dict."""
    image_folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for offset, image_id in enumerate(split_ids):
        annotation = voc_xml.read_annotation(os.path.join(voc_root, "Annotations", f"{image_id}.xml"))
        shutil.copy(os.path.join(voc_root, "JPEGImages", annotation.filename), image_folder / annotation.filename)
        coco_id = first_image_id + offset
        images.append({"id": coco_id, "file_name": annotation.filename, "width": annotation.width,
                       "height": annotation.height})
        for obj in annotation.objects:
            w, h = obj.xmax - obj.xmin, obj.ymax - obj.ymin
            annotations.append({"id": len(annotations) + 1, "image_id": coco_id, "category_id": category_ids[obj.name],
                                "bbox": [obj.xmin, obj.ymin, w, h], "area": w * h, "iscrowd": obj.difficult,
                                "segmentation": [[obj.xmin, obj.ymin, obj.xmax, obj.ymin, obj.xmax, obj.ymax]]})
    data = {"info": {"description": "from VOC"}, "licenses": [], "images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n, "supercategory": "shape"} for n, i in category_ids.items()]}
    _write_json(json_path, data)
    return data


# ----------------------------------------------------------------------------- boxes, labels and bad cases


GOOD_A = [((10.5, 5.25, 49.75, 39.5), 3, 0), ((0, 0, 100, 50), 90, 1), ((20, 10, 10, 10), 17, 0)]


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """A COCO file at a root with its images in images/: good images and every bad case at once."""
    root = tmp_path_factory.mktemp("messy") / "shop"
    (root / "images" / "sub").mkdir(parents=True)
    for index, name in enumerate(["a.jpg", "sub/b.jpg", "c.jpg", "d.jpg", "e.jpg"]):
        _save(_image(seed=index), root / "images" / name, "JPEG")
    images = [
        {"id": 10, "file_name": "a.jpg", "width": W, "height": H},
        {"id": 11, "file_name": "sub/b.jpg", "width": W, "height": H},  # no annotations: kept
        {"id": 12, "file_name": "c.jpg", "width": 200, "height": 100},  # the image is 100x50
        {"id": 10, "file_name": "d.jpg", "width": W, "height": H},  # duplicate id
        {"id": 13, "width": W, "height": H},  # no file_name
        {"id": 14, "file_name": "/etc/e.jpg"},
        {"id": 15, "file_name": "../e.jpg"},
        {"id": 16, "file_name": "missing.jpg", "width": W, "height": H},
        {"id": 17, "file_name": "e.jpg"},  # no size: taken from the image
    ]
    annotations = [{"id": 100 + i, "image_id": 10, "category_id": c, "bbox": list(b), "iscrowd": crowd,
                    "area": b[2] * b[3], "segmentation": [[1, 2, 3, 4, 5, 6]]} for i, (b, c, crowd) in enumerate(GOOD_A)]
    annotations += [
        {"id": 200, "image_id": 12, "category_id": 3, "bbox": [10, 10, 20, 20]},
        {"id": 201, "image_id": 999, "category_id": 3, "bbox": [1, 1, 5, 5]},
        {"id": 202, "image_id": 12, "category_id": 5, "bbox": [1, 1, 5, 5]},
        {"id": 203, "image_id": 12, "category_id": 3, "bbox": [1, 2, -3, 4]},
        {"id": 204, "image_id": 12, "category_id": 3, "bbox": [1, 2, 3]},
        {"id": 205, "image_id": 12, "category_id": 3, "bbox": "1,2,3,4"},
        {"id": 206, "image_id": 12, "category_id": 3, "bbox": [1, 2, "3", 4]},
        {"id": 207, "image_id": 13, "category_id": 3, "bbox": [1, 1, 5, 5]},  # its image is skipped: not reported again
        {"id": 208, "image_id": 16, "category_id": 3, "bbox": [1, 1, 5, 5]},
        {"id": 209, "image_id": 17, "category_id": 90, "bbox": [90, 40, 20, 20]},  # clipped to the image
    ]
    categories = [{"id": 90, "name": "zebra"}, {"id": 3, "name": "cat"}, {"id": 17, "name": "dog\n"}]
    # The arrays in an unusual order: streaming reads each one wherever it is.
    _write_json(root / "instances.json", {"annotations": annotations, "categories": categories, "images": images})
    result = converter.convert([str(root)], str(root.parent / "out"), "messy",
                               converter.ConversionOptions(splits=("all",), num_workers=2))
    return root, result


def test_every_good_box_is_read_back_with_dense_labels_in_category_id_order(messy, read_split):
    root, result = messy
    spec, examples = read_split(result.output_dir, "all")
    assert spec.labels_to_names == {0: "none", 1: "cat", 2: "dog", 3: "zebra"}
    by_id = {e["source_id"].decode(): e for e in examples}
    assert sorted(by_id) == ["shop/instances/10", "shop/instances/11", "shop/instances/12", "shop/instances/17"]
    a = by_id["shop/instances/10"]
    np.testing.assert_allclose(a["boxes"], [_relative(b) for b, _, _ in GOOD_A], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a["labels"], [1, 3, 2])
    np.testing.assert_array_equal(a["difficult"], [0, 1, 0])  # iscrowd -> difficult, ignored by the evaluation
    np.testing.assert_array_equal(a["truncated"], [0, 0, 0])
    assert a["filename"].decode() == "shop/images/a.jpg"
    b = by_id["shop/instances/11"]
    assert b["boxes"].shape == (0, 4) and b["filename"].decode() == "shop/images/sub/b.jpg"
    # The JSON says 200x100, the image is 100x50: the pixel box is normalised by the real size.
    np.testing.assert_allclose(by_id["shop/instances/12"]["boxes"], [_relative((10, 10, 20, 20))], atol=1e-6)
    np.testing.assert_allclose(by_id["shop/instances/17"]["boxes"], [(0.8, 0.9, 1.0, 1.0)], atol=1e-6)
    assert result.info["splits"]["all"]["images_without_objects"] == 1
    # Each dense class id keeps its COCO category id, for detections written back in COCO's ids.
    assert result.info["coco_category_ids"] == {"1": 3, "2": 17, "3": 90}
    assert spec.coco_category_ids == {1: 3, 2: 17, 3: 90}


def test_each_bad_case_is_reported_with_its_file_and_field(messy):
    root, result = messy
    json_path = str(root / "instances.json")
    found = {(p.field, p.action, p.reason) for p in result.problems if p.file == json_path}
    expected = {
        ("images[3]/id", report.SKIPPED_IMAGE, "duplicate image id"),
        ("images[4]/file_name", report.SKIPPED_IMAGE, "bad file_name"),
        ("images[5]/file_name", report.SKIPPED_IMAGE, "bad file_name"),
        ("images[6]/file_name", report.SKIPPED_IMAGE, "bad file_name"),
        ("filename", report.SKIPPED_IMAGE, "missing image"),
        ("annotations[4]/image_id", report.DROPPED_OBJECT, "unknown image id"),
        ("annotations[5]/category_id", report.DROPPED_OBJECT, "unknown category"),
        ("annotations[6]/bbox", report.DROPPED_OBJECT, "negative box size"),
        ("annotations[7]/bbox", report.DROPPED_OBJECT, "malformed bbox"),
        ("annotations[8]/bbox", report.DROPPED_OBJECT, "malformed bbox"),
        ("annotations[9]/bbox", report.DROPPED_OBJECT, "malformed bbox"),
        ("annotations[12]/bndbox", report.CLIPPED_BOX, "box outside image"),
        ("size", report.FIXED, "size from image"),
        ("images[8]/width", report.FIXED, "size from image"),
    }
    assert found == expected, found ^ expected
    assert all(p.file == json_path for p in result.problems), [p.line() for p in result.problems]
    messages = " | ".join(p.message for p in result.problems)
    assert "annotation id 201" in messages and "'/etc/e.jpg' is an absolute path" in messages
    assert "climbs out" in messages and "missing.jpg" in messages
    assert "the annotation says 200x100, the image is 100x50" in messages
    assert result.info["skipped_images"] == 5 and result.info["dropped_objects"] == 6


def test_category_and_json_errors_name_the_file(tmp_path):
    root = tmp_path / "r"
    _save(_image(), _mkdir(root) / "a.jpg", "JPEG")
    image = [{"id": 1, "file_name": "a.jpg"}]

    def refused(data, *expected, raw=None):
        path = root / "instances.json"
        path.write_text(raw) if raw is not None else _write_json(path, data)
        with pytest.raises(sources.SourceError) as error:
            formats.discover([str(root)], ("all",), layout="coco")
        for text in (str(path), *expected):
            assert text in str(error.value), str(error.value)

    refused({"images": image, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": " a "}]},
            "category name 'a' is used by category ids 1 and 2")
    refused({"images": image, "categories": [{"id": 1, "name": "\n"}]}, "[categories[0]]", "no name")
    refused({"images": image, "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}, "defined twice")
    refused(None, "line 2 column 25", raw='{"images": [\n  {"id": 1, "file_name":, }]}')
    refused(None, "NaN is not valid JSON", raw='{"images": [{"id": 1, "file_name": "a.jpg"}], '
            '"annotations": [{"image_id": 1, "category_id": 1, "bbox": [NaN, 1, 2, 3]}], "categories": []}')
    refused({"images": {"1": "a.jpg"}}, "'images' is an object, not an array")
    refused({"images": image, "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]}]},
            "no 'categories'")


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_a_label_map_matches_categories_by_name_and_drops_the_others(messy, tmp_path, read_split):
    root, _ = messy
    labels = tmp_path / "labels.txt"
    labels.write_text("zebra\ncat\n")  # dog is not in it
    result = converter.convert([str(root)], str(tmp_path / "out"), "messy", converter.ConversionOptions(
        splits=("all",), label_map_path=str(labels)))
    spec, examples = read_split(tmp_path / "out", "all")
    assert spec.labels_to_names == {0: "none", 1: "zebra", 2: "cat"}
    a = next(e for e in examples if e["source_id"].decode() == "shop/instances/10")
    np.testing.assert_array_equal(a["labels"], [2, 1])
    np.testing.assert_allclose(a["boxes"], [_relative(b) for b, _, _ in GOOD_A[:2]], atol=1e-6)
    [unknown] = [p for p in result.problems if p.reason == "unknown class"]
    assert (unknown.field, unknown.action) == ("annotations[2]/name", report.DROPPED_OBJECT)
    assert spec.coco_category_ids == {1: 90, 2: 3}  # matched by name, in the label map's order


def test_category_ids_are_recorded_only_when_every_class_is_a_coco_category(messy, tmp_path):
    root, _ = messy
    labels = tmp_path / "labels.txt"
    labels.write_text("zebra\nhorse\n")  # horse is no category of the file
    result = converter.convert([str(root)], str(tmp_path / "out"), "messy", converter.ConversionOptions(
        splits=("all",), label_map_path=str(labels), unknown_class="skip"))
    assert "coco_category_ids" not in result.info


def test_category_ids_need_coco_roots_agreeing_on_each_class():
    def discovery(layouts, maps):
        return formats.Discovery({}, [f"/r{i}" for i in range(len(layouts))], [], list(layouts), [], [], [],
                                 [(f"/r{i}", m) for i, m in enumerate(maps)])

    names = {1: "cat", 2: "dog"}
    two_files = [{"cat": 3, "dog": 17}, {"dog": 17, "cat": 3, "cow": 21}]
    assert discovery(["coco", "coco"], two_files).coco_category_ids(names) == {1: 3, 2: 17}
    assert discovery(["coco", "voc"], two_files[:1]).coco_category_ids(names) is None  # VOC classes have no ids
    assert discovery(["coco", "coco"], [{"cat": 3, "dog": 17}, {"cat": 4, "dog": 17}]).coco_category_ids(names) is None
    assert discovery(["coco"], [{"cat": 3}]).coco_category_ids(names) is None  # dog is no category


def test_dataset_info_without_category_ids_still_reads_and_a_bad_mapping_is_named(messy, tmp_path):
    _, result = messy
    copy = tmp_path / "copy"
    shutil.copytree(result.output_dir, copy)
    info = json.loads((copy / "dataset_info.json").read_text())
    del info["coco_category_ids"]  # as written before the key existed
    (copy / "dataset_info.json").write_text(json.dumps(info))
    assert dataset_factory.get_dataset(None, "all", str(copy)).coco_category_ids is None
    info["coco_category_ids"] = {"1": "cat"}
    (copy / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(dataset_factory.DatasetError, match="dataset_info.json: 'coco_category_ids' must map"):
        dataset_factory.get_dataset(None, "all", str(copy))


# ----------------------------------------------------------------------------- VOC and COCO, same records


def _records_without_names(output_dir, split):
    records = []
    for name in sorted(os.listdir(output_dir)):
        if name.startswith(f"d_{split}-") and name.endswith(".tfrecord"):
            for serialized in tf.compat.v1.io.tf_record_iterator(os.path.join(output_dir, name)):
                example = tf.train.Example.FromString(serialized)
                for key in ("image/filename", "image/source_id"):
                    del example.features.feature[key]
                records.append(example.SerializeToString(deterministic=True))
    return sorted(records)


def test_a_voc_dataset_converts_to_the_same_records_directly_and_via_coco_json(tmp_path):
    voc = sample_data.generate_voc_sample(str(tmp_path / "voc"), num_images=14, image_size=(40, 72), seed=3)
    names = sorted(sample_data.CLASSES)
    category_ids = {name: 2 + 7 * index for index, name in enumerate(names)}  # sparse, in name order like VOC's ids
    coco_root = tmp_path / "coco"
    for split in ("trainval", "test"):
        ids = open(os.path.join(voc, "ImageSets", "Main", f"{split}.txt")).read().split()
        voc_as_coco(voc, coco_root / f"{split}2017", coco_root / "annotations" / f"instances_{split}2017.json", ids,
                    category_ids, first_image_id=1000 if split == "test" else 1)
    options = converter.ConversionOptions(num_workers=2)
    direct = converter.convert([voc], str(tmp_path / "direct"), "d", options)
    via_coco = converter.convert([str(coco_root)], str(tmp_path / "via"), "d", converter.ConversionOptions(
        num_workers=2, split_sources={"trainval": "instances_trainval2017.json", "test": "instances_test2017.json"}))
    assert direct.info["classes"] == via_coco.info["classes"]
    assert via_coco.problems == direct.problems == []
    for split in ("trainval", "test"):
        assert via_coco.info["splits"][split]["num_images"] == direct.info["splits"][split]["num_images"] > 0
        assert _records_without_names(tmp_path / "via", split) == _records_without_names(tmp_path / "direct", split)


# ----------------------------------------------------------------------------- COCO AP against pycocotools


def _generated_coco(rng, num_images=10):
    categories = [{"id": 2, "name": "ant"}, {"id": 5, "name": "bee"}, {"id": 11, "name": "cow"}]
    images, annotations = [], []
    for index in range(num_images):
        width, height = int(rng.integers(48, 160)), int(rng.integers(48, 160))
        images.append({"id": 40 + 3 * index, "file_name": f"img{index}.jpg", "width": width, "height": height})
        for _ in range(0 if index == 4 else int(rng.integers(1, 6))):  # image 4 has no annotations
            w, h = float(rng.uniform(4, width * 0.7)), float(rng.uniform(4, height * 0.7))
            x, y = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
            # Our evaluator sizes a box (small/medium/large) by its box area; pycocotools by `area`, which
            # for real COCO is the mask's. Equal here so the per-size numbers can be compared too.
            annotations.append({"id": len(annotations) + 1, "image_id": images[-1]["id"],
                                "category_id": int(rng.choice([2, 5, 11])), "bbox": [x, y, w, h], "area": w * h,
                                "iscrowd": int(rng.random() < 0.15)})
    return {"images": images, "annotations": annotations, "categories": categories}


def _generated_detections(rng, data):
    sizes = {image["id"]: (image["width"], image["height"]) for image in data["images"]}
    detections = []
    for annotation in data["annotations"]:
        if rng.random() < 0.85:
            x, y, w, h = annotation["bbox"]
            width, height = sizes[annotation["image_id"]]
            jitter = rng.normal(0, 0.12, 4) * [w, h, w, h]
            nx, ny = max(0.0, x + jitter[0]), max(0.0, y + jitter[1])
            nw, nh = min(width - nx, max(1.0, w + jitter[2])), min(height - ny, max(1.0, h + jitter[3]))
            detections.append({"image_id": annotation["image_id"], "category_id": annotation["category_id"],
                               "bbox": [nx, ny, nw, nh], "score": float(rng.uniform(0.3, 1.0))})
    for image in data["images"]:  # false positives, the image without annotations included
        for _ in range(int(rng.integers(0, 3))):
            w, h = float(rng.uniform(4, image["width"] / 2)), float(rng.uniform(4, image["height"] / 2))
            detections.append({"image_id": image["id"], "category_id": int(rng.choice([2, 5, 11])),
                               "bbox": [float(rng.uniform(0, image["width"] - w)), float(rng.uniform(0, image["height"] - h)), w, h],
                               "score": float(rng.uniform(0.0, 0.8))})
    return detections


def _pycocotools_stats(data, detections):
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = json.loads(json.dumps(data))
        ground_truth.createIndex()
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(json.loads(json.dumps(detections))), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return [math.nan if value < 0 else value for value in evaluation.stats]


def test_coco_ap_from_the_converted_split_equals_pycocotools_on_the_original_json(tmp_path, read_split):
    rng = np.random.default_rng(7)
    data = _generated_coco(rng)
    root = tmp_path / "gen"
    for index, image in enumerate(data["images"]):
        _save(_image(image["width"], image["height"], seed=index), _mkdir(root) / image["file_name"], "JPEG")
    _write_json(root / "gt.json", data)
    converter.convert([str(root)], str(tmp_path / "out"), "gen", converter.ConversionOptions(splits=("test",)))
    detections = _generated_detections(rng, data)

    spec, examples = read_split(tmp_path / "out", "test")
    dense = {2: 1, 5: 2, 11: 3}
    evaluator = detection_metrics.DetectionEvaluator(3, spec.labels_to_names, relative_boxes=True)
    for example in sorted(examples, key=lambda e: int(e["source_id"].decode().rsplit("/", 1)[1])):
        image_id = int(example["source_id"].decode().rsplit("/", 1)[1])
        height, width = example["image"].shape[:2]
        mine = [d for d in detections if d["image_id"] == image_id]
        boxes = np.array([[y / height, x / width, (y + h) / height, (x + w) / width] for x, y, w, h in
                          (d["bbox"] for d in mine)]).reshape(-1, 4)
        evaluator.add_image(image_id, example["boxes"], example["labels"], example["difficult"], boxes,
                            [d["score"] for d in mine], [dense[d["category_id"]] for d in mine], height, width)
    ours = coco_metrics.compute_coco_metrics(evaluator)
    ours_stats = [getattr(ours, name) for name in coco_metrics._COCO_STAT_NAMES]
    reference = _pycocotools_stats(data, detections)
    assert len(examples) == 10 and 0.2 < reference[0] < 0.95  # a meaningful score, not all or nothing
    np.testing.assert_allclose(ours_stats, reference, rtol=0, atol=1e-6)
    # With mask-like areas (not the box's), only the size breakdown may change: overall AP and AR stay.
    for annotation in data["annotations"]:
        annotation["area"] *= 0.6
    with_mask_areas = _pycocotools_stats(data, detections)
    overall = [0, 1, 2, 6, 7, 8]
    np.testing.assert_allclose([ours_stats[i] for i in overall], [with_mask_areas[i] for i in overall], atol=1e-6)


# ----------------------------------------------------------------------------- layouts and detection


def _tiny_coco(json_path, image_folder, file_names, category_name="thing", first_id=1):
    _mkdir(image_folder)
    images, annotations = [], []
    for offset, name in enumerate(file_names):
        _save(_image(seed=offset), image_folder / name, "JPEG")
        images.append({"id": first_id + offset, "file_name": name, "width": W, "height": H})
        annotations.append({"id": first_id + offset, "image_id": first_id + offset, "category_id": 1,
                            "bbox": [10, 5, 30, 20], "iscrowd": 0})
    return _write_json(json_path, {"info": {}, "licenses": [], "images": images, "annotations": annotations,
                                   "categories": [{"id": 1, "name": category_name}]})


def test_official_layout_is_detected_and_splits_map_to_files(tmp_path):
    root = tmp_path / "coco2017"
    _tiny_coco(root / "annotations" / "instances_train2017.json", root / "train2017", ["a.jpg", "b.jpg", "c.jpg"])
    _tiny_coco(root / "annotations" / "instances_val2017.json", root / "val2017", ["d.jpg"], first_id=7)
    (root / "annotations" / "notes.json").write_text('{"author": "me"}')  # JSON, not COCO: not listed
    assert formats.detect_layout(str(root)) == "coco"
    with pytest.raises(sources.SourceError) as error:
        formats.discover([str(root)], ("trainval", "test"))
    assert "2 COCO files" in str(error.value) and "annotations/instances_val2017.json" in str(error.value)
    assert "--splits=trainval=instances_train2017.json,test=instances_val2017.json" in str(error.value)
    found = formats.discover([str(root)], ("trainval", "test"), split_sources={
        "trainval": "instances_train2017.json", "test": "annotations/instances_val2017.json"})
    assert found.statements == [
        f"{root}: detected COCO JSON: annotations/instances_train2017.json (3 images, 3 annotations, 1 categories; "
        "images in train2017/) -> trainval; annotations/instances_val2017.json (1 images, 1 annotations, "
        "1 categories; images in val2017/) -> test"]
    assert [i.source_id for i in found.by_split["test"]] == ["coco2017/annotations/instances_val2017/7"]
    assert found.source_class_names() == ("thing",)
    with pytest.raises(sources.SourceError, match="no such COCO file"):
        formats.discover([str(root)], ("trainval",), split_sources={"trainval": "instances_test2017.json"})


def test_roboflow_and_root_json_layouts_find_their_images(tmp_path):
    roboflow = tmp_path / "rf"
    for split, names in (("train", ["a.jpg", "b.jpg"]), ("valid", ["c.jpg"])):
        _tiny_coco(roboflow / split / "_annotations.coco.json", roboflow / split, names)
    with pytest.raises(sources.SourceError, match=r"--splits=trainval=train/_annotations.coco.json,"
                                                  r"test=valid/_annotations.coco.json"):
        formats.discover([str(roboflow)], ("trainval", "test"))
    found = formats.discover([str(roboflow)], ("trainval", "test"), split_sources={"trainval": "train", "test": "valid"})
    assert [len(found.by_split[s]) for s in ("trainval", "test")] == [2, 1]
    assert found.by_split["test"][0].image_path == str(roboflow / "valid" / "c.jpg")
    assert found.by_split["test"][0].source_id == "rf/valid/_annotations.coco/1"  # the file's path keeps ids apart
    flat = tmp_path / "flat"
    _tiny_coco(flat / "labels.json", flat / "images", [f"{i}.jpg" for i in range(5)])
    found = formats.discover([str(flat)], ("train", "test"), test_fraction=0.4, split_seed=1)
    assert [len(found.by_split[s]) for s in ("train", "test")] == [3, 2]
    assert "images in images/) seeded split: train 3, test 2" in found.statements[0]
    assert found.by_split["train"][0].image_path.startswith(str(flat / "images"))


def test_annotation_files_given_by_flag_are_mapped_to_splits_by_path_or_name(tmp_path):
    photos = tmp_path / "photos"
    first = _tiny_coco(tmp_path / "a" / "labels.json", photos, ["a.jpg", "b.jpg"])
    second = _tiny_coco(tmp_path / "b" / "more.json", photos, ["c.jpg"], first_id=5)
    files = [str(first), str(second)]
    with pytest.raises(sources.SourceError, match="2 COCO files.*--splits=train=labels.json,test=more.json"):
        formats.discover([str(photos)], ("train", "test"), layout="coco", coco_annotations=files, images_dir=str(photos))
    found = formats.discover([str(photos)], ("train", "test"), layout="coco", coco_annotations=files,
                             images_dir=str(photos), split_sources={"train": str(first), "test": "more.json"})
    assert [item.source_id for item in found.by_split["test"]] == ["photos/more/5"]
    assert [os.path.basename(item.image_path) for item in found.by_split["train"]] == ["a.jpg", "b.jpg"]
    with pytest.raises(sources.SourceError, match="not one of the --annotations files"):
        formats.discover([str(photos)], ("train",), layout="coco", coco_annotations=files, images_dir=str(photos),
                         split_sources={"train": str(tmp_path / "other.json")})


def test_detection_reads_only_the_head_of_a_json_file(tmp_path):
    big = tmp_path / "big.json"
    big.write_text('{"info": {"x": "' + "y" * 200_000 + '"}, "images": []}')  # no COCO key in the first 64 kB
    assert not coco_json.looks_like_coco(str(big))
    assert coco_json.looks_like_coco(str(_write_json(tmp_path / "c.json", {"categories": [], "images": []})))
    assert not coco_json.looks_like_coco(str(_write_json(tmp_path / "l.json", [{"images": []}])))


def test_reading_keeps_far_less_than_the_json_in_memory(tmp_path):
    """Polygons are most of a COCO file and are never kept: the parse's peak of Python allocations
    stays under the 4x budget (json.load needs ~7x; bench_convert_coco measures it on 10,000 images)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in range(400)]
    annotations = [{"id": n, "image_id": n % 400, "category_id": 1 + n % 3, "bbox": [10.5, 20.25, 30.0, 40.0],
                    "area": 1200.0, "iscrowd": 0, "segmentation": [np.round(rng.uniform(0, 480, 64), 2).tolist()]}
                   for n in range(2800)]  # 7 per image, ~0.5 kB each, as in COCO
    path = _write_json(tmp_path / "big" / "instances.json", {"images": images, "annotations": annotations,
                                                              "categories": [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)]})
    tracemalloc.start()
    try:
        found = formats.discover([str(tmp_path / "big")], ("all",), layout="coco")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(found.by_split["all"]) == 400
    assert peak < 4 * os.path.getsize(path), (peak, os.path.getsize(path))


# ----------------------------------------------------------------------------- command line


def _errors(caplog):
    return [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]


def test_command_line_with_annotations_and_images_dir_and_with_a_mapped_dataset_dir(tmp_path):
    photos = tmp_path / "photos"
    labels = _tiny_coco(tmp_path / "labels" / "mine.json", photos, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    out = tmp_path / "out"
    assert tf_convert_data.main([f"--annotations={labels}", f"--images_dir={photos}", f"--output_dir={out}",
                                 "--num_workers=1", "--splits=train,test", "--test_fraction=0.25"]) == 0
    info = json.loads((out / "dataset_info.json").read_text())
    assert [info["splits"][s]["num_images"] for s in ("train", "test")] == [3, 1]
    assert info["classes"] == {"0": "none", "1": "thing"}
    root = tmp_path / "coco"
    _tiny_coco(root / "annotations" / "instances_train.json", root / "train", ["a.jpg", "b.jpg"])
    _tiny_coco(root / "annotations" / "instances_val.json", root / "val", ["c.jpg"])
    assert tf_convert_data.main([f"--dataset_dir={root}", f"--output_dir={tmp_path / 'out2'}", "--num_workers=1",
                                 "--splits=trainval=instances_train.json,test=instances_val.json"]) == 0
    info = json.loads((tmp_path / "out2" / "dataset_info.json").read_text())
    assert [info["splits"][s]["num_images"] for s in ("trainval", "test")] == [2, 1]


@pytest.mark.parametrize("flags, named", [
    (["--annotations={json}"], "--annotations needs --images_dir"),
    (["--annotations={tmp}/nowhere.json", "--images_dir={tmp}"], "nowhere.json does not exist"),
    (["--annotations={json}", "--images_dir={tmp}/nowhere"], "--images_dir"),
    (["--annotations={json}", "--images_dir={tmp}", "--dataset_dir={tmp}"], "either --dataset_dir or --annotations"),
    (["--annotations={json}", "--images_dir={tmp}", "--format=voc"], "--format=voc cannot apply"),
    ([], "give --dataset_dir"),
    (["--dataset_dir={tmp}/coco"], "--splits=trainval=instances_a.json,test=instances_b.json"),
    (["--annotations={tmp}/bad.json", "--images_dir={tmp}"], "bad.json: not valid JSON at line 1 column"),
    (["--annotations={tmp}/list.json", "--images_dir={tmp}"], "list.json: not a COCO annotation file: the top level"),
])
def test_bad_flags_give_one_line_and_exit_2(tmp_path, caplog, flags, named):
    json_path = _tiny_coco(tmp_path / "l.json", tmp_path / "img", ["a.jpg"])
    _tiny_coco(tmp_path / "coco" / "annotations" / "instances_a.json", tmp_path / "coco" / "a", ["a.jpg"])
    _tiny_coco(tmp_path / "coco" / "annotations" / "instances_b.json", tmp_path / "coco" / "b", ["b.jpg"])
    (tmp_path / "bad.json").write_text('{"images": [}')
    (tmp_path / "list.json").write_text('[{"images": []}]')
    argv = [flag.format(json=json_path, tmp=tmp_path) for flag in flags]
    status = tf_convert_data.main(argv + [f"--output_dir={tmp_path / 'out'}", "--num_workers=1"])
    errors = _errors(caplog)
    assert status == 2 and len(errors) == 1 and named in errors[0], errors
    assert "Traceback" not in caplog.text


# ----------------------------------------------------------------------------- the benchmark, so it cannot rot


@pytest.mark.slow
def test_bench_convert_coco_runs_on_a_tiny_dataset(tmp_path):
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "bench_convert_coco.py")
    completed = subprocess.run([sys.executable, script, "--num_images=40", "--workers=1", f"--work_dir={tmp_path}"],
                               capture_output=True, text=True, timeout=300,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert completed.returncode == 0, completed.stderr[-2000:]
    lines = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    by_what = {line["what"]: line for line in lines}
    assert by_what["COCO JSON file"]["config"]["images"] == 40 and by_what["COCO JSON file"]["annotations"] > 0
    for layout in ("voc", "coco"):
        assert by_what[f"tf_convert_data throughput, {layout} input"]["images"] == 40
    assert by_what["COCO time per image / VOC time per image"]["value"] > 0
    memory = by_what["COCO parse peak memory / JSON size"]
    assert memory["value"] > 0 and memory["json_load_for_comparison"] > 0 and memory["tracemalloc"] > 0
