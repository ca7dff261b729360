"""Round trips: every box read back through the tf.data reader equals the XML box (relative, clipped).

The reference here reads the VOC XML with the standard library on its own (trusted files), so it
checks the converter's parsing, clipping, dropping, class ids and the reader together.
"""

import os
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from datasets import converter, sample_data


def reference_split(voc_root, split):
    """{image id: (boxes [N,4] relative clipped, class names, difficult, truncated)} from the XML files."""
    with open(os.path.join(voc_root, "ImageSets", "Main", f"{split}.txt")) as f:
        ids = f.read().split()
    expected = {}
    for image_id in ids:
        root = ElementTree.parse(os.path.join(voc_root, "Annotations", f"{image_id}.xml")).getroot()
        width, height = Image.open(os.path.join(voc_root, "JPEGImages", f"{image_id}.jpg")).size
        boxes, names, difficult, truncated = [], [], [], []
        for obj in root.iter("object"):
            box = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (float(box.find(tag).text) for tag in ("xmin", "ymin", "xmax", "ymax"))
            xmin, xmax = np.clip([xmin, xmax], 0, width)
            ymin, ymax = np.clip([ymin, ymax], 0, height)
            if xmax <= xmin or ymax <= ymin:
                continue
            boxes.append((ymin / height, xmin / width, ymax / height, xmax / width))
            names.append(obj.find("name").text)
            difficult.append(int(obj.find("difficult").text))
            truncated.append(int(obj.find("truncated").text))
        expected[image_id] = (np.array(boxes, np.float64).reshape(-1, 4), names, difficult, truncated)
    return expected


def check_round_trip(voc_root, dataset_dir, split, read_split):
    spec, examples = read_split(dataset_dir, split)
    expected = reference_split(voc_root, split)
    names_to_ids = {name: class_id for class_id, name in spec.labels_to_names.items()}
    by_id = {os.path.basename(example["source_id"].decode()): example for example in examples}
    assert len(by_id) == len(examples) == spec.num_samples == len(expected)
    assert sorted(by_id) == sorted(expected)
    num_objects = 0
    for image_id, (boxes, names, difficult, truncated) in expected.items():
        example = by_id[image_id]
        np.testing.assert_allclose(example["boxes"], boxes, rtol=0, atol=1e-6, err_msg=image_id)
        np.testing.assert_array_equal(example["labels"], [names_to_ids[n] for n in names], err_msg=image_id)
        np.testing.assert_array_equal(example["difficult"], difficult, err_msg=image_id)
        np.testing.assert_array_equal(example["truncated"], truncated, err_msg=image_id)
        assert example["image"].dtype == np.uint8 and example["image"].shape[2] == 3
        np.testing.assert_array_equal(example["shape"], example["image"].shape)
        num_objects += len(names)
    split_info = spec.info["splits"][split]
    assert split_info["num_objects"] == spec.num_objects == num_objects
    counted = {name: 0 for name in split_info["objects_per_class"]}
    for _, names, _, _ in expected.values():
        for name in names:
            counted[name] += 1
    assert counted == split_info["objects_per_class"]
    assert split_info["images_without_objects"] == sum(1 for v in expected.values() if not v[1])
    return spec, examples


def test_sample_dataset_round_trips(tmp_path, read_split):
    voc_root = sample_data.generate_voc_sample(str(tmp_path / "voc"), num_images=30, image_size=(64, 96), seed=11)
    result = converter.convert([voc_root], str(tmp_path / "out"), "sample", converter.ConversionOptions(num_shards=2))
    assert result.problems == []
    total = 0
    for split in ("trainval", "test"):
        spec, _ = check_round_trip(voc_root, tmp_path / "out", split, read_split)
        assert spec.num_classes == 4 and spec.labels_to_names == {0: "none", 1: "circle", 2: "square", 3: "triangle"}
        total += spec.num_samples
    assert total == 30 == result.info["num_images"]


@pytest.mark.shared_data
def test_bccd_round_trips_and_drops_its_two_degenerate_boxes(bccd_dir, tmp_path, read_split):
    result = converter.convert([str(bccd_dir)], str(tmp_path / "bccd"), "bccd", converter.ConversionOptions(num_workers=2))
    dropped = sorted((os.path.basename(p.file), p.field, p.reason) for p in result.problems)
    assert dropped == [("BloodImage_00338.xml", "object[12]/bndbox", "zero-area box"),
                       ("BloodImage_00343.xml", "object[3]/bndbox", "zero-area box")]
    report_text = open(os.path.join(tmp_path / "bccd", "conversion_report.txt")).read()
    assert "dropped object: 2 (zero-area box: 2)" in report_text and "BloodImage_00338.xml" in report_text
    for split, count in (("trainval", 292), ("test", 72)):
        spec, _ = check_round_trip(str(bccd_dir), tmp_path / "bccd", split, read_split)
        assert spec.num_samples == count and spec.num_classes == 4
    assert result.info["num_images"] == 364
    assert result.info["num_objects"] == 4155 + 372 + 361 - 2
    assert open(os.path.join(tmp_path / "bccd", "labels.txt")).read() == "0:none\n1:Platelets\n2:RBC\n3:WBC\n"
    shard = os.path.join(tmp_path / "bccd", result.info["splits"]["test"]["files"][0])
    for record in list(tf.compat.v1.io.tf_record_iterator(shard))[:5]:  # JPEG files are stored byte for byte
        features = tf.train.Example.FromString(record).features.feature
        filename = features["image/filename"].bytes_list.value[0].decode()
        assert filename.startswith("BCCD/JPEGImages/")
        original = open(os.path.join(bccd_dir, filename.split("/", 1)[1]), "rb").read()
        assert features["image/encoded"].bytes_list.value[0] == original


def _bccd_as_yolo(bccd_dir, root, image_ids, class_names):
    """BCCD's VOC annotations of ``image_ids`` as a YOLO dataset: images/ + labels/, classes.txt."""
    from datasets import voc_xml

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("\n".join(class_names) + "\n")
    for image_id in image_ids:
        annotation = voc_xml.read_annotation(os.path.join(bccd_dir, "Annotations", f"{image_id}.xml"))
        image_path = os.path.join(bccd_dir, "JPEGImages", f"{image_id}.jpg")
        width, height = Image.open(image_path).size
        lines = [f"{class_names.index(obj.name)} {(obj.xmin + obj.xmax) / 2 / width!r} "
                 f"{(obj.ymin + obj.ymax) / 2 / height!r} {(obj.xmax - obj.xmin) / width!r} "
                 f"{(obj.ymax - obj.ymin) / height!r}" for obj in annotation.objects]
        os.link(image_path, root / "images" / f"{image_id}.jpg")
        (root / "labels" / f"{image_id}.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.shared_data
def test_bccd_gives_the_same_boxes_from_voc_coco_json_and_yolo_text(bccd_dir, tmp_path, read_split):
    """Real data through the three readers: BCCD's test split written as COCO JSON and as YOLO text
    converts to the same images, labels and boxes (1e-6) as the VOC original, degenerate boxes dropped."""
    from test_data_coco import voc_as_coco

    with open(os.path.join(bccd_dir, "ImageSets", "Main", "test.txt")) as f:
        ids = f.read().split()
    class_names = ["Platelets", "RBC", "WBC"]
    voc_as_coco(str(bccd_dir), tmp_path / "coco" / "images", tmp_path / "coco" / "bccd.json", ids,
                {name: 3 * index + 2 for index, name in enumerate(class_names)})
    _bccd_as_yolo(str(bccd_dir), tmp_path / "yolo", ids, class_names)
    by_format = {}
    for layout, root in (("voc", bccd_dir), ("coco", tmp_path / "coco"), ("yolo", tmp_path / "yolo")):
        converter.convert([str(root)], str(tmp_path / f"out_{layout}"), "bccd",
                          converter.ConversionOptions(splits=("test",), test_fraction=0.0, num_workers=2), quiet=True)
        _, examples = read_split(tmp_path / f"out_{layout}", "test")
        by_format[layout] = {example["source_id"].decode().rsplit("/", 1)[-1]: example for example in examples}
    voc = by_format.pop("voc")
    assert len(voc) == len(ids) == 72
    for layout, examples in by_format.items():
        # COCO's source id ends with the COCO image id; key its records by the image file name instead.
        if layout == "coco":
            examples = {os.path.splitext(os.path.basename(e["filename"].decode()))[0]: e for e in examples.values()}
        assert sorted(examples) == sorted(voc), layout
        for image_id, expected in voc.items():
            got = examples[image_id]
            np.testing.assert_array_equal(got["labels"], expected["labels"], err_msg=f"{layout} {image_id}")
            np.testing.assert_allclose(got["boxes"], expected["boxes"], atol=1e-6, err_msg=f"{layout} {image_id}")
