"""Anchor coverage: positives and best IoU per box, grouped by class and size, on real converted splits."""

import numpy as np
import pytest
import tensorflow as tf

from datasets import converter, dataset_factory
from nets import anchor_coverage, nets_factory
from test_nets_anchors import centers_to_corners
from tf_compat import tf1


def _statistics(net, labels, boxes):
    with tf.Graph().as_default(), tf1.Session() as session:
        return session.run(anchor_coverage.box_statistics(net, tf.constant(labels), tf.constant(boxes, tf.float32)))


def test_hand_worked_boxes():
    net = nets_factory.get_network("ssd_300_vgg", img_shape=(96, 96))
    anchor = centers_to_corners(net.flat_anchors()[7])  # a box equal to one anchor: best IoU 1
    tiny = [0.5, 0.5, 0.51, 0.52]  # 0.96 x 1.92 input pixels: far smaller than any anchor
    labels = np.array([[2, 1, 0]])
    boxes = np.array([[anchor, tiny, [0.1, 0.1, 0.9, 0.9]]], np.float32)
    stats = _statistics(net, labels, boxes)
    assert stats["valid"].tolist() == [[True, True, False]]  # label 0 is padding
    assert stats["best_iou"][0, 0] == pytest.approx(1.0, abs=1e-6)
    assert 0 < stats["best_iou"][0, 1] < 0.1
    assert stats["positives"][0, 1] == 1  # the bipartite anchor only
    assert stats["positives"][0, 0] >= 1
    np.testing.assert_allclose(stats["areas"][0, 1], 0.01 * 96 * 0.02 * 96, rtol=1e-4)


def test_report_on_a_converted_split_counts_every_box(sample_dataset_dir):
    spec = dataset_factory.get_dataset(None, "trainval", sample_dataset_dir)
    net = nets_factory.get_network("ssd_300_vgg", img_shape=(96, 96), num_classes=spec.num_classes)
    report = anchor_coverage.coverage_report(net, spec)
    assert report.images == spec.num_samples
    assert report.overall.boxes == spec.num_objects
    assert report.overall.with_positive == report.overall.boxes  # the bipartite stage loses no box
    assert sum(g.boxes for g in report.by_class) == sum(g.boxes for g in report.by_size) == spec.num_objects
    assert [g.name for g in report.by_class] == [spec.labels_to_names[i] for i in sorted(spec.labels_to_names) if i]
    assert report.summary_line().startswith(f"Anchor coverage (ssd_300_vgg at 96x96, {spec.num_samples} images): all: "
                                            f"{spec.num_objects} boxes, 100.0% with a positive anchor")
    assert len(report.lines()) == 2 + 1 + len(report.by_class) + 3
    limited = anchor_coverage.coverage_report(net, spec, max_images=5)
    assert limited.images == 5 and f"the first 5 of {spec.num_samples} images" in limited.summary_line()


@pytest.mark.shared_data
def test_bccd_boxes_fit_ssd300_anchors(bccd_dir, tmp_path):
    data = str(tmp_path / "bccd")
    converter.convert([str(bccd_dir)], data, "bccd", converter.ConversionOptions(splits=("trainval",)), quiet=True)
    spec = dataset_factory.get_dataset(None, "trainval", data)
    report = anchor_coverage.coverage_report(nets_factory.get_network("ssd_300_vgg", num_classes=4), spec)
    assert report.overall.boxes == 3941 and report.overall.with_positive == 3941
    platelets = next(g for g in report.by_class if g.name == "Platelets")
    assert platelets.boxes == 292 and 0.55 < platelets.median_best_iou < 0.75


def test_command_prints_the_table(sample_dataset_dir, capsys):
    assert anchor_coverage.main([f"--dataset_dir={sample_dataset_dir}", "--image_size=96", "--max_images=4"]) == 0
    out = capsys.readouterr().out
    assert "Anchor coverage (ssd_300_vgg at 96x96, the first 4 of" in out and "small boxes" in out
    assert anchor_coverage.main([f"--dataset_dir={sample_dataset_dir}", "--split=nope"]) == 2
    assert "no split 'nope'" in capsys.readouterr().err
