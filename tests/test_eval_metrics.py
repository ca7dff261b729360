"""Detection metrics against the VOC devkit algorithm and pycocotools; TensorBoard and JSON output read back."""

import json
import math
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation import coco_metrics, detection_metrics, summaries
from evaluation.detection_metrics import DetectionEvaluator


def class_result(result, name_or_label):
    """The :class:`ClassResult` of one class of an :class:`EvaluationResult`, by name or label."""
    (found,) = [cls for cls in result.per_class if name_or_label in (cls.name, cls.label)]
    return found


# --------------------------------------------------------------------------------------
# The reference: the VOC development kit's voc_eval.py / voc_ap, written out per class.
# Images are dicts with gt_boxes, gt_labels, gt_difficult, det_boxes, det_scores, det_labels;
# boxes are [ymin, xmin, ymax, xmax]. The devkit's argsort is not stable; with tied scores
# its order is arbitrary, so the reference uses a stable sort (ties keep insertion order).
# --------------------------------------------------------------------------------------


def devkit_voc_ap(rec, prec, use_07_metric):
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            if np.sum(rec >= t) == 0:
                p = 0
            else:
                p = np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def devkit_voc_eval(images, label, ovthresh=0.5, inclusive=True):
    """(ap_07, ap_area, npos) for one class, as voc_eval.py computes them; NaN APs when npos == 0."""
    plus = 1.0 if inclusive else 0.0
    class_recs = {}
    npos = 0
    for index, image in enumerate(images):
        mask = np.asarray(image["gt_labels"]) == label
        bbox = np.asarray(image["gt_boxes"], float).reshape(-1, 4)[mask]
        difficult = np.asarray(image["gt_difficult"], bool)[mask]
        npos += int(np.sum(~difficult))
        class_recs[index] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(bbox)}
    image_ids, confidence, boxes = [], [], []
    for index, image in enumerate(images):
        for box, score, det_label in zip(
            np.asarray(image["det_boxes"], float).reshape(-1, 4), image["det_scores"], image["det_labels"]
        ):
            if det_label == label:
                image_ids.append(index)
                confidence.append(score)
                boxes.append(box)
    confidence = np.array(confidence, float)
    boxes = np.array(boxes, float).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence, kind="stable")
    boxes = boxes[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = boxes[d, :]
        ovmax = -np.inf
        BBGT = R["bbox"]
        if BBGT.size > 0:
            iymin = np.maximum(BBGT[:, 0], bb[0])
            ixmin = np.maximum(BBGT[:, 1], bb[1])
            iymax = np.minimum(BBGT[:, 2], bb[2])
            ixmax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + plus, 0.0)
            ih = np.maximum(iymax - iymin + plus, 0.0)
            inters = iw * ih
            uni = (
                (bb[3] - bb[1] + plus) * (bb[2] - bb[0] + plus)
                + (BBGT[:, 3] - BBGT[:, 1] + plus) * (BBGT[:, 2] - BBGT[:, 0] + plus)
                - inters
            )
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    if npos == 0:
        return math.nan, math.nan, 0
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return devkit_voc_ap(rec, prec, True), devkit_voc_ap(rec, prec, False), npos


def make_image(gt_boxes=(), gt_labels=(), gt_difficult=None, det_boxes=(), det_scores=(), det_labels=()):
    gt_boxes = np.asarray(gt_boxes, float).reshape(-1, 4)
    return {
        "gt_boxes": gt_boxes,
        "gt_labels": np.asarray(gt_labels, int),
        "gt_difficult": np.zeros(len(gt_boxes), bool) if gt_difficult is None else np.asarray(gt_difficult, bool),
        "det_boxes": np.asarray(det_boxes, float).reshape(-1, 4),
        "det_scores": np.asarray(det_scores, float),
        "det_labels": np.asarray(det_labels, int),
    }


def evaluate(images, num_classes, **kwargs):
    evaluator = DetectionEvaluator(num_classes, **kwargs)
    for index, image in enumerate(images):
        evaluator.add_image(f"img{index}", **image)
    return evaluator, evaluator.compute()


def random_scene(rng, num_images, num_classes, integer=True, max_gt=6, max_det=12, difficult_rate=0.15):
    """Ground truth plus jittered copies (true positives, duplicates), random boxes and wrong labels."""
    images = []
    for _ in range(num_images):
        n_gt = rng.integers(0, max_gt + 1)
        y0, x0 = rng.uniform(0, 300, (2, n_gt))
        h, w = rng.uniform(8, 150, (2, n_gt))
        gt = np.stack([y0, x0, y0 + h, x0 + w], axis=1)
        gt_labels = rng.integers(1, num_classes + 1, n_gt)
        difficult = rng.random(n_gt) < difficult_rate
        dets, labels = [], []
        for box, label in zip(gt, gt_labels):
            for _ in range(rng.integers(0, 3)):  # 0 misses it, 2 is a duplicate
                scale = np.array([box[2] - box[0], box[3] - box[1]] * 2)
                dets.append(box + rng.normal(0, 0.15, 4) * scale)
                labels.append(label if rng.random() < 0.85 else rng.integers(1, num_classes + 1))
        for _ in range(rng.integers(0, max_det // 2)):
            yy, xx = rng.uniform(0, 300, 2)
            hh, ww = rng.uniform(8, 150, 2)
            dets.append(np.array([yy, xx, yy + hh, xx + ww]))
            labels.append(rng.integers(1, num_classes + 1))
        dets = np.array(dets, float).reshape(-1, 4)
        dets[:, 2:] = np.maximum(dets[:, 2:], dets[:, :2] + 1)
        if integer:
            gt, dets = np.round(gt), np.round(dets)
        images.append(
            make_image(gt, gt_labels, difficult, dets, rng.permutation(len(dets)) / max(len(dets), 1) * 0.9 + 0.05
                       + rng.uniform(0, 1e-3, len(dets)), labels)  # fmt: skip
        )
    return images


def assert_matches_devkit(images, num_classes, inclusive):
    _, result = evaluate(images, num_classes, pixel_inclusive=inclusive)
    ap07s, apareas = [], []
    for label in range(1, num_classes + 1):
        ap07, aparea, npos = devkit_voc_eval(images, label, inclusive=inclusive)
        cls = class_result(result, label)
        assert cls.num_ground_truth == npos
        if npos == 0:
            assert math.isnan(cls.voc07_ap) and math.isnan(cls.voc_area_ap)
            assert cls.name in result.classes_without_ground_truth
        else:
            assert cls.voc07_ap == pytest.approx(ap07, abs=1e-12)
            assert cls.voc_area_ap == pytest.approx(aparea, abs=1e-12)
            ap07s.append(ap07)
            apareas.append(aparea)
    if ap07s:
        assert result.voc07_map == pytest.approx(np.mean(ap07s), abs=1e-12)
        assert result.voc_area_map == pytest.approx(np.mean(apareas), abs=1e-12)
    else:
        assert math.isnan(result.voc07_map) and math.isnan(result.voc_area_map)
    return result


# ------------------------------------------------------------------- known answers


def test_perfect_detections_give_one():
    rng = np.random.default_rng(0)
    images = []
    for _ in range(5):
        gt = random_scene(rng, 1, 3, difficult_rate=0.0)[0]
        images.append(make_image(gt["gt_boxes"], gt["gt_labels"], None, gt["gt_boxes"],
                                 rng.uniform(0.5, 1, len(gt["gt_boxes"])), gt["gt_labels"]))  # fmt: skip
    _, result = evaluate(images, 3)
    assert result.voc07_map == pytest.approx(1.0) and result.voc_area_map == pytest.approx(1.0)
    for cls in result.per_class:
        assert cls.num_true_positives == cls.num_ground_truth > 0
        np.testing.assert_allclose(cls.precision, 1.0)
        assert cls.recall[-1] == pytest.approx(1.0)


def test_shuffled_scores_known_answers():
    gt = [[0, 0, 10, 10], [20, 20, 30, 30]]
    far = [50, 50, 60, 60]
    # FP first, then both TPs: precision 0, 1/2, 2/3 at recall 0, 1/2, 1.
    fp_first = make_image(gt, [1, 1], None, [far, gt[0], gt[1]], [0.9, 0.8, 0.7], [1, 1, 1])
    _, result = evaluate([fp_first], 1)
    assert result.voc07_map == pytest.approx(2 / 3) and result.voc_area_map == pytest.approx(2 / 3)
    # TP, FP, TP: area = 0.5 * 1 + 0.5 * 2/3; 11-point: 6 thresholds <= 0.5 see 1, 5 see 2/3.
    tp_fp_tp = make_image(gt, [1, 1], None, [gt[0], far, gt[1]], [0.9, 0.8, 0.7], [1, 1, 1])
    _, result = evaluate([tp_fp_tp], 1)
    assert result.voc_area_map == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert result.voc07_map == pytest.approx((6 + 5 * 2 / 3) / 11)
    cls = class_result(result, 1)
    np.testing.assert_allclose(cls.precision, [1, 0.5, 2 / 3])
    np.testing.assert_allclose(cls.recall, [0.5, 0.5, 1])
    np.testing.assert_array_equal(cls.is_true_positive, [True, False, True])


def test_duplicates_are_false_positives():
    gt = [[0, 0, 10, 10]]
    image = make_image(gt, [1], None, [[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 9, 10]], [0.9, 0.95, 0.5], [1, 1, 1])
    _, result = evaluate([image], 1)
    cls = class_result(result, 1)
    assert cls.num_true_positives == 1
    np.testing.assert_array_equal(cls.is_true_positive, [True, False, False])  # highest score claims the box
    assert result.voc_area_map == pytest.approx(1.0)
    assert_matches_devkit([image], 1, inclusive=False)


def test_best_box_already_claimed_is_a_false_positive_as_in_the_devkit():
    # The second detection overlaps box A best (claimed) and box B above 0.5: still a FP.
    box_a, box_b = [0, 0, 10, 10], [0, 1, 10, 11]
    image = make_image([box_a, box_b], [1, 1], None, [box_a, [0, 0.2, 10, 10.2]], [0.9, 0.8], [1, 1])
    _, result = evaluate([image], 1)
    np.testing.assert_array_equal(class_result(result, 1).is_true_positive, [True, False])
    assert_matches_devkit([image], 1, inclusive=False)


def test_difficult_boxes_are_neither_true_nor_false_positives():
    gt = [[0, 0, 10, 10], [20, 20, 30, 30]]
    image = make_image(gt, [1, 1], [False, True], gt, [0.6, 0.9], [1, 1])
    _, result = evaluate([image], 1)
    cls = class_result(result, 1)
    assert (cls.num_ground_truth, cls.num_difficult, cls.num_detections) == (1, 1, 2)
    assert len(cls.scores) == 1 and cls.num_true_positives == 1  # the detection on the difficult box is dropped
    assert result.voc07_map == pytest.approx(1.0) and result.voc_area_map == pytest.approx(1.0)
    assert_matches_devkit([image], 1, inclusive=True)


def test_class_with_only_difficult_or_no_ground_truth_is_nan_and_left_out_of_the_map():
    gt = [[0, 0, 10, 10], [20, 20, 30, 30]]
    image = make_image(gt, [1, 2], [False, True], [gt[0], gt[1], [40, 40, 50, 50]], [0.9, 0.8, 0.7], [1, 2, 3])
    _, result = evaluate([image], 3, class_names=["cat", "dog", "bird"])
    assert result.classes_without_ground_truth == ("dog", "bird")
    assert math.isnan(class_result(result, "dog").voc07_ap) and math.isnan(class_result(result, "bird").voc_area_ap)
    assert class_result(result, "bird").num_detections == 1
    assert np.all(np.isnan(class_result(result, "bird").recall))
    assert result.voc07_map == pytest.approx(1.0) and result.voc_area_map == pytest.approx(1.0)
    assert_matches_devkit([image], 3, inclusive=True)


def test_no_detections_give_zero_and_no_images_give_nan():
    image = make_image([[0, 0, 10, 10]], [1])
    _, result = evaluate([image], 2)
    assert class_result(result, 1).voc07_ap == 0.0 and class_result(result, 1).voc_area_ap == 0.0
    assert result.voc07_map == 0.0 and result.num_images == 1
    _, empty = evaluate([], 2)
    assert empty.num_images == 0 and math.isnan(empty.voc07_map) and math.isnan(empty.voc_area_map)
    assert empty.classes_without_ground_truth == ("class_1", "class_2")


def test_iou_must_be_strictly_above_the_threshold():
    image = make_image([[0, 0, 10, 10]], [1], None, [[0, 0, 10, 5]], [0.9], [1])  # IoU exactly 0.5
    _, result = evaluate([image], 1)
    assert class_result(result, 1).num_true_positives == 0
    image["det_boxes"] = np.array([[0, 0, 10, 5.01]])
    _, result = evaluate([image], 1)
    assert class_result(result, 1).num_true_positives == 1


def test_voc07_recall_thresholds_are_those_of_voc_eval_py():
    # 3 of 10 boxes found: recall 3/10 is just below np.arange's 0.30000000000000004, so only
    # the thresholds 0, 0.1, 0.2 see precision 1 (voc_eval.py gives 3/11, not 4/11).
    gt = [[10 * i, 0, 10 * i + 5, 5] for i in range(10)]
    image = make_image(gt, [1] * 10, None, gt[:3], [0.9, 0.8, 0.7], [1, 1, 1])
    _, result = evaluate([image], 1)
    assert result.voc07_map == pytest.approx(3 / 11)
    assert result.voc_area_map == pytest.approx(0.3)


def test_pixel_inclusive_follows_the_devkit_plus_one():
    # Continuous: IoU 4/8 = 0.5 (FP). Inclusive: boxes 4x9 and 5x9 pixels... intersection 5*9 / union 9*9 > 0.5.
    image = make_image([[0, 0, 8, 8]], [1], None, [[0, 0, 8, 4]], [0.9], [1])
    assert evaluate([image], 1, pixel_inclusive=False)[1].voc07_map == 0.0
    assert evaluate([image], 1, pixel_inclusive=True)[1].voc07_map == pytest.approx(1.0)
    np.testing.assert_allclose(detection_metrics.pairwise_iou([[0, 0, 8, 4]], [[0, 0, 8, 8]], True), [[45 / 81]])


def test_relative_boxes_are_scaled_to_pixels():
    evaluator = DetectionEvaluator(1, relative_boxes=True)
    evaluator.add_image("a", [[0.1, 0.2, 0.5, 0.6]], [1], None, [[0.1, 0.2, 0.5, 0.6]], [0.8], [1],
                        image_height=200, image_width=100)  # fmt: skip
    np.testing.assert_allclose(evaluator.images[0].gt_boxes, [[20, 20, 100, 60]])
    assert evaluator.compute().voc07_map == pytest.approx(1.0)
    with pytest.raises(ValueError, match="image_height"):
        evaluator.add_image("b", [[0, 0, 1, 1]], [1], None, [], [], [])


def test_ties_keep_the_order_images_were_added():
    gt = [[0, 0, 10, 10]]
    miss = make_image(gt, [1], None, [[50, 50, 60, 60]], [0.5], [1])
    hit = make_image(gt, [1], None, gt, [0.5], [1])
    assert evaluate([hit, miss], 1)[1].voc_area_map == pytest.approx(0.5)
    assert evaluate([miss, hit], 1)[1].voc_area_map == pytest.approx(0.5 * 0.5)


def test_degenerate_boxes_do_not_divide_by_zero():
    image = make_image([[5, 5, 5, 5], [0, 0, 10, 10]], [1, 1], None, [[5, 5, 5, 5], [0, 0, 10, 10]], [0.9, 0.8], [1, 1])
    _, result = evaluate([image], 1)
    np.testing.assert_array_equal(class_result(result, 1).is_true_positive, [False, True])
    assert class_result(evaluate([image], 1, pixel_inclusive=True)[1], 1).num_true_positives == 2


def test_counts_per_class():
    images = [
        make_image([[0, 0, 5, 5], [0, 0, 6, 6]], [1, 1], [False, False]),
        make_image([[0, 0, 5, 5], [1, 1, 4, 4]], [1, 2], [True, False]),
    ]
    _, result = evaluate(images, 2)
    assert [(c.num_images, c.num_ground_truth, c.num_difficult) for c in result.per_class] == [(1, 2, 1), (1, 1, 0)]


def test_bad_input_is_named():
    evaluator = DetectionEvaluator(2, class_names={0: "none", 1: "a", 2: "b"})
    assert evaluator.class_names == ["a", "b"]
    with pytest.raises(ValueError, match=r"'x'.*gt_labels.*label 0"):
        evaluator.add_image("x", [[0, 0, 1, 1]], [0], None, [], [], [])
    with pytest.raises(ValueError, match=r"'x'.*det_boxes\[1\]"):
        evaluator.add_image("x", [], [], None, [[0, 0, 1, 1], [2, 0, 1, 1]], [0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match=r"det_scores has 1 entries, expected 2"):
        evaluator.add_image("x", [], [], None, [[0, 0, 1, 1], [0, 0, 1, 1]], [0.1], [1, 1])
    with pytest.raises(ValueError, match=r"det_labels has label 3"):
        evaluator.add_image("x", [], [], None, [[0, 0, 1, 1]], [0.1], [3])
    evaluator.add_image("x", [], [], None, [], [], [])
    with pytest.raises(ValueError, match="already added"):
        evaluator.add_image("x", [], [], None, [], [], [])
    with pytest.raises(ValueError, match="3 names but num_classes is 2"):
        DetectionEvaluator(2, class_names=["a", "b", "c"])


def test_keep_images_false_keeps_only_the_matches():
    evaluator = DetectionEvaluator(1, keep_images=False)
    evaluator.add_image("a", [[0, 0, 10, 10]], [1], None, [[0, 0, 10, 10]], [0.9], [1])
    assert evaluator.compute().voc07_map == pytest.approx(1.0)
    with pytest.raises(RuntimeError, match="keep_images"):
        evaluator.images


# ------------------------------------------------------------- against the devkit


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("inclusive", [True, False])
def test_random_jitter_matches_devkit(seed, inclusive):
    rng = np.random.default_rng(seed)
    images = random_scene(rng, num_images=25, num_classes=4, integer=inclusive)
    result = assert_matches_devkit(images, 4, inclusive)
    assert 0.0 < result.voc_area_map < 1.0


def test_order_of_images_does_not_matter_without_ties():
    rng = np.random.default_rng(11)
    images = random_scene(rng, num_images=20, num_classes=3)
    _, forward = evaluate(images, 3)
    _, backward = evaluate(images[::-1], 3)
    assert forward.voc07_map == pytest.approx(backward.voc07_map, abs=1e-12)
    assert forward.voc_area_map == pytest.approx(backward.voc_area_map, abs=1e-12)


@st.composite
def small_scenes(draw):
    coordinate = st.integers(0, 40)
    num_images = draw(st.integers(0, 4))
    images = []
    for _ in range(num_images):
        def boxes(n):
            out = []
            for _ in range(n):
                y, x = draw(coordinate), draw(coordinate)
                out.append([y, x, y + draw(st.integers(1, 20)), x + draw(st.integers(1, 20))])
            return out

        n_gt, n_det = draw(st.integers(0, 4)), draw(st.integers(0, 6))
        gt = boxes(n_gt)
        det = boxes(n_det)
        # Copies of ground-truth boxes make true positives and duplicates likely.
        det += [list(gt[i]) for i in draw(st.lists(st.integers(0, max(n_gt - 1, 0)), max_size=3))] if n_gt else []
        images.append(
            make_image(
                gt,
                draw(st.lists(st.integers(1, 2), min_size=n_gt, max_size=n_gt)),
                draw(st.lists(st.booleans(), min_size=n_gt, max_size=n_gt)),
                det,
                draw(st.lists(st.integers(0, 5), min_size=len(det), max_size=len(det))),  # ties on purpose
                draw(st.lists(st.integers(1, 2), min_size=len(det), max_size=len(det))),
            )
        )
    return images


@settings(max_examples=150, deadline=None)
@given(small_scenes(), st.booleans())
def test_hypothesis_scenes_match_devkit(images, inclusive):
    assert_matches_devkit(images, 2, inclusive)


# ---------------------------------------------------------------- COCO (pycocotools)


def test_missing_pycocotools_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    evaluator, _ = evaluate([make_image([[0, 0, 10, 10]], [1])], 1)
    with pytest.raises(ImportError, match="pip install pycocotools"):
        coco_metrics.compute_coco_metrics(evaluator)


def pycocotools_stats_directly(images, num_classes):
    """COCOeval's stats on the same images, built here from scratch ([x, y, w, h], difficult as crowd)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    categories = [{"id": c, "name": str(c)} for c in range(1, num_classes + 1)]
    dataset = {"images": [], "annotations": [], "categories": categories}
    results = []
    for image_id, image in enumerate(images, start=1):
        dataset["images"].append({"id": image_id})
        for (y0, x0, y1, x1), label, difficult in zip(image["gt_boxes"], image["gt_labels"], image["gt_difficult"]):
            dataset["annotations"].append({"id": len(dataset["annotations"]) + 1, "image_id": image_id,
                                           "category_id": int(label), "bbox": [x0, y0, x1 - x0, y1 - y0],
                                           "area": (x1 - x0) * (y1 - y0), "iscrowd": int(difficult)})  # fmt: skip
        for (y0, x0, y1, x1), score, label in zip(image["det_boxes"], image["det_scores"], image["det_labels"]):
            results.append({"image_id": image_id, "category_id": int(label), "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": float(score)})  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        coco_eval = COCOeval(gt, gt.loadRes(results), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats


@pytest.mark.parametrize("seed", range(3))
def test_coco_numbers_equal_pycocotools_directly(seed):
    pytest.importorskip("pycocotools")
    rng = np.random.default_rng(100 + seed)
    images = random_scene(rng, num_images=30, num_classes=3, integer=False)
    # Sizes across COCO's small (< 32^2), medium and large (> 96^2) ranges.
    for image in images:
        scale = rng.choice([0.3, 1.0, 2.5])
        image["gt_boxes"] = image["gt_boxes"] * scale
        image["det_boxes"] = image["det_boxes"] * scale
    evaluator, _ = evaluate(images, 3)
    ours = coco_metrics.compute_coco_metrics(evaluator)
    expected = pycocotools_stats_directly(images, 3)
    got = [ours.ap, ours.ap50, ours.ap75, ours.ap_small, ours.ap_medium, ours.ap_large,
           ours.ar1, ours.ar10, ours.ar100, ours.ar_small, ours.ar_medium, ours.ar_large]  # fmt: skip
    np.testing.assert_allclose(got, np.where(expected < 0, np.nan, expected), rtol=0, atol=1e-12)
    assert 0 < ours.ap < ours.ap50 <= 1
    assert set(ours.per_class_ap) == {"class_1", "class_2", "class_3"}
    assert "Average Precision" in ours.summary_text


def test_coco_perfect_and_empty_detections():
    pytest.importorskip("pycocotools")
    gt = [[0, 0, 10, 10], [20, 20, 200, 120], [5, 5, 60, 70]]
    perfect, _ = evaluate([make_image(gt, [1, 2, 1], None, gt, [0.9, 0.8, 0.7], [1, 2, 1])], 3)
    metrics = coco_metrics.compute_coco_metrics(perfect)
    assert metrics.ap == pytest.approx(1.0) and metrics.ap50 == pytest.approx(1.0)
    assert metrics.per_class_ap["class_1"] == pytest.approx(1.0) and math.isnan(metrics.per_class_ap["class_3"])
    empty, _ = evaluate([make_image(gt, [1, 2, 1])], 3)
    metrics = coco_metrics.compute_coco_metrics(empty)
    assert metrics.ap == 0.0 and metrics.ar100 == 0.0


def test_coco_ignores_detections_on_difficult_boxes():
    pytest.importorskip("pycocotools")
    gt = [[0, 0, 50, 50], [100, 100, 150, 150]]
    image = make_image(gt, [1, 1], [False, True], gt, [0.6, 0.9], [1, 1])
    evaluator, _ = evaluate([image], 1)
    assert coco_metrics.compute_coco_metrics(evaluator).ap == pytest.approx(1.0)


# ------------------------------------------------------------------------ output


def reference_pr_counts(cls, thresholds):
    rows = []
    for t in thresholds:
        above = cls.scores >= t
        tp = int(np.sum(above & cls.is_true_positive))
        fp = int(np.sum(above & ~cls.is_true_positive))
        precision = tp / (tp + fp) if tp + fp else 0.0
        rows.append((tp, fp, 0, cls.num_ground_truth - tp, precision, tp / cls.num_ground_truth))
    return np.array(rows, np.float32).T


def summary_scene():
    rng = np.random.default_rng(5)
    images = random_scene(rng, num_images=12, num_classes=2)
    images.append(make_image(det_boxes=[[0, 0, 5, 5]], det_scores=[0.5], det_labels=[3]))  # "bird" has no gt
    return evaluate(images, 3, class_names=["red cell", "white", "bird"])


def test_summaries_read_back_from_the_event_file(tmp_path):
    import tensorflow as tf

    evaluator, result = summary_scene()
    coco = coco_metrics.compute_coco_metrics(evaluator) if _has_pycocotools() else None
    writer = tf.compat.v1.summary.FileWriter(str(tmp_path))
    summaries.write_summaries(writer, 1234, result, coco, num_pr_thresholds=11)
    writer.close()
    (event_file,) = tmp_path.glob("events.out.tfevents.*")
    scalars, curves = {}, {}
    for event in tf.compat.v1.train.summary_iterator(str(event_file)):
        for value in event.summary.value:
            assert event.step == 1234
            if value.HasField("tensor"):
                curves[value.tag] = (value.metadata, tf.make_ndarray(value.tensor))
            else:
                scalars[value.tag] = value.simple_value
    assert scalars["eval/mAP_VOC07"] == pytest.approx(result.voc07_map, abs=1e-6)
    assert scalars["eval/mAP_VOC_area"] == pytest.approx(result.voc_area_map, abs=1e-6)
    assert scalars["eval/num_images"] == 13
    assert scalars["eval/AP_VOC07/red_cell"] == pytest.approx(class_result(result, "red cell").voc07_ap, abs=1e-6)
    assert scalars["eval/AP_VOC_area/white"] == pytest.approx(class_result(result, "white").voc_area_ap, abs=1e-6)
    assert not any("bird" in tag for tag in [*scalars, *curves])  # undefined AP: nothing written
    if coco is not None:
        assert scalars["eval/COCO/AP"] == pytest.approx(coco.ap, abs=1e-6)
        assert scalars["eval/AP_COCO/white"] == pytest.approx(coco.per_class_ap["white"], abs=1e-6)
    assert set(curves) == {"eval/pr_curve/red_cell/pr_curves", "eval/pr_curve/white/pr_curves"}
    metadata, data = curves["eval/pr_curve/white/pr_curves"]
    assert metadata.plugin_data.plugin_name == "pr_curves"
    assert metadata.plugin_data.content == b"\x10\x0b"  # PrCurvePluginData(num_thresholds=11)
    expected = reference_pr_counts(class_result(result, "white"), np.linspace(0, 1, 11))
    np.testing.assert_allclose(data, expected, atol=1e-6)


def test_pr_curve_counts_detections_scoring_at_or_above_each_threshold():
    data = summaries.pr_curve_data(
        [1.0, 0.5, 0.5, 0.2], [True, True, False, False], num_ground_truth=4, num_thresholds=3
    )
    np.testing.assert_allclose(
        data,
        [
            [2, 2, 1],  # TP at thresholds 0, 0.5, 1
            [2, 1, 0],  # FP
            [0, 0, 0],  # TN: none for a detector
            [2, 2, 3],  # FN
            [0.5, 2 / 3, 1.0],  # precision
            [0.5, 0.5, 0.25],  # recall
        ],
    )
    empty = summaries.pr_curve_data([], [], num_ground_truth=2, num_thresholds=2)
    np.testing.assert_allclose(empty, [[0, 0], [0, 0], [0, 0], [2, 2], [0, 0], [0, 0]])


def test_pr_curve_proto_equals_tensorboards_raw_data_pb():
    pr_summary = pytest.importorskip("tensorboard.plugins.pr_curve.summary")
    _, result = summary_scene()
    cls = class_result(result, "white")
    data = summaries.pr_curve_data(cls.scores, cls.is_true_positive, cls.num_ground_truth, 300)
    theirs = pr_summary.raw_data_pb("eval/pr_curve/white", *data, num_thresholds=300)
    ours = summaries.evaluation_summary(result, num_pr_thresholds=300).value
    ours = [v for v in ours if v.tag == theirs.value[0].tag]
    assert ours and ours[0].SerializeToString() == theirs.value[0].SerializeToString()


def test_metrics_jsonl_lines_parse(tmp_path):
    evaluator, result = summary_scene()
    coco = coco_metrics.compute_coco_metrics(evaluator) if _has_pycocotools() else None
    path = tmp_path / "eval" / "metrics.jsonl"
    summaries.append_metrics_jsonl(str(path), summaries.metrics_record(100, result, coco, "ckpt/model.ckpt-100"))
    summaries.append_metrics_jsonl(str(path), summaries.metrics_record(200, result))
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0], parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert first["global_step"] == 100 and first["checkpoint_path"] == "ckpt/model.ckpt-100"
    assert first["voc07_map"] == pytest.approx(result.voc07_map) and first["num_images"] == 13
    assert first["per_class"]["bird"]["voc07_ap"] is None and first["classes_without_ground_truth"] == ["bird"]
    assert first["per_class"]["white"]["num_ground_truth"] == class_result(result, "white").num_ground_truth
    if coco is not None:
        assert first["coco_ap"] == pytest.approx(coco.ap) and "coco_ap50" in first
    assert [r["global_step"] for r in summaries.read_metrics_jsonl(str(path))] == [100, 200]
    path.write_text(path.read_text() + "{broken\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:3"):
        summaries.read_metrics_jsonl(str(path))


def test_table_lists_every_class_and_the_means():
    _, result = summary_scene()
    table = summaries.format_table(result)
    lines = table.splitlines()
    assert lines[0] == "VOC APs: continuous boxes (xmax - xmin wide; not the VOC devkit's convention)"
    assert "AP VOC07" in lines[1] and "AP VOC area" in lines[1]
    white = next(line for line in lines if line.startswith("white"))
    assert f"{class_result(result, 'white').voc07_ap:.4f}" in white
    bird = next(line for line in lines if line.startswith("bird"))
    assert bird.split()[-1] == "-"
    assert any(line.startswith("mAP (2 classes)") and f"{result.voc_area_map:.4f}" in line for line in lines)
    assert "no ground truth" in lines[-1] and "bird" in lines[-1]


def _has_pycocotools():
    try:
        import pycocotools.cocoeval  # noqa: F401
    except ImportError:
        return False
    return True
