"""Target encoding for one image: the project's matching against two references.

- ``bipartite``: :func:`nets.matching.bboxes_encode`, the paper's bipartite stage (rounds of a
  bounded ``tf.while_loop``) then the threshold stage: what the trainer runs.
- ``one_pass``: the rule it replaced, kept here as the time reference: every box's best anchor
  in one vectorised pass, the higher IoU winning a shared anchor (the loser keeps only its
  threshold matches). Target: ``bipartite`` within 1.5x of it at 50 boxes.
- ``while_loop``: SSD-Tensorflow's per-box ``tf.while_loop`` encoder.

Two kinds of images: ``random`` boxes, and ``crowded`` ones where boxes come in near-duplicate
pairs of 12-30 px at 300x300 (the case the bipartite stage exists for: more rounds).
Prints one JSON object per measurement (median seconds per image). Run from the repository root:

    python bench/bench_target_encoding.py                      # 8732 anchors, 10/50/200 boxes
    python bench/bench_target_encoding.py --boxes 5 --repeats 3 --img_size 96   # smoke test
"""

import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

import command_line  # noqa: E402
from nets import box_coding, matching, nets_factory  # noqa: E402
from tf_compat import tf1  # noqa: E402


def one_pass_encode(labels, boxes, net, match_threshold=0.5):
    """The previous rule, as it was implemented: targets for one image (labels [N], boxes [N, 4])."""
    anchors = net.flat_anchors()
    labels = tf.concat([tf.cast(labels, tf.int64), tf.zeros([1], tf.int64)], 0)[tf.newaxis]
    boxes = tf.concat([boxes, tf.zeros([1, 4])], 0)[tf.newaxis]
    anchor_corners = matching.anchors_to_corners(anchors)
    num_anchors = anchor_corners.shape[0]
    ymin, xmin, ymax, xmax = tf.unstack(boxes, 4, axis=-1)
    valid = (labels > 0) & (ymax > ymin) & (xmax > xmin)
    boxes = tf.where(valid[..., tf.newaxis], boxes, 0.0)
    iou = matching.iou_anchors_boxes(anchor_corners, boxes)
    best_anchor_per_box = tf.argmax(iou, axis=1, output_type=tf.int32)
    best_iou_per_box = tf.reduce_max(iou, axis=1)
    can_force = valid & (best_iou_per_box > 0.0)
    num_boxes = tf.shape(labels)[1]
    box_ids = tf.range(num_boxes)
    same_anchor = tf.equal(best_anchor_per_box[:, :, tf.newaxis], best_anchor_per_box[:, tf.newaxis, :])
    iou_n = best_iou_per_box[:, :, tf.newaxis]
    iou_m = best_iou_per_box[:, tf.newaxis, :]
    lower_index = box_ids[tf.newaxis, tf.newaxis, :] < box_ids[tf.newaxis, :, tf.newaxis]
    beaten = (iou_m > iou_n) | ((iou_m == iou_n) & lower_index)
    winner = can_force & tf.logical_not(tf.reduce_any(same_anchor & beaten & can_force[:, tf.newaxis, :], axis=2))
    batch_ids = tf.zeros_like(best_anchor_per_box)
    scatter_at = tf.stack([batch_ids, best_anchor_per_box], axis=-1)
    forced_shape = tf.stack([1, num_anchors])
    winner_ids = tf.where(winner, tf.cast(box_ids[tf.newaxis, :] + 1, tf.float32), 0.0)
    forced = tf.cast(tf.tensor_scatter_nd_max(tf.zeros(forced_shape), scatter_at, winner_ids), tf.int32)
    forced_iou = tf.tensor_scatter_nd_max(tf.zeros(forced_shape), scatter_at, tf.where(winner, best_iou_per_box, 0.0))
    best_box = tf.argmax(iou, axis=2, output_type=tf.int32)
    best_iou = tf.reduce_max(iou, axis=2)
    assigned = tf.where(forced > 0, forced - 1, best_box)
    ious = tf.where(forced > 0, forced_iou, best_iou)
    positive = (forced > 0) | (best_iou >= match_threshold)
    classes = tf.where(positive, tf.gather(labels, assigned, batch_dims=1), 0)
    offsets = box_coding.encode(tf.gather(boxes, assigned, batch_dims=1), anchors)
    box_targets = tf.where(positive[..., tf.newaxis], offsets, 0.0)
    weights = tf.cast(positive, tf.float32)
    return classes[0], box_targets[0], weights[0], 1.0 - weights[0], ious[0]


def while_loop_encode(labels, boxes, net):
    """SSD-Tensorflow's ``tf_ssd_bboxes_encode``, op for op: per feature layer, a tf.while_loop over
    the boxes, each step updating the anchors whose IoU beats their current best (its matching
    rule; its loss applies the 0.5 threshold later)."""
    num_classes = net.params.num_classes
    classes, localisations, scores = [], [], []
    scaling = net.params.prior_scaling
    for layer in net.anchors():
        yref, xref, href, wref = layer
        ymin, xmin = yref - href / 2.0, xref - wref / 2.0
        ymax, xmax = yref + href / 2.0, xref + wref / 2.0
        anchor_area = (ymax - ymin) * (xmax - xmin)
        shape = (yref.shape[0], yref.shape[1], href.size)

        def jaccard(bbox):
            inter_h = tf.maximum(tf.minimum(ymax, bbox[2]) - tf.maximum(ymin, bbox[0]), 0.0)
            inter_w = tf.maximum(tf.minimum(xmax, bbox[3]) - tf.maximum(xmin, bbox[1]), 0.0)
            inter = inter_h * inter_w
            union = anchor_area - inter + (bbox[2] - bbox[0]) * (bbox[3] - bbox[1])
            return inter / union

        def body(i, feat_labels, feat_scores, f_ymin, f_xmin, f_ymax, f_xmax):
            label, bbox = labels[i], boxes[i]
            overlap = jaccard(bbox)
            mask = tf.logical_and(overlap > feat_scores, feat_scores > -0.5)
            mask = tf.logical_and(mask, label < num_classes)
            imask = tf.cast(mask, tf.int64)
            fmask = tf.cast(mask, tf.float32)
            feat_labels = imask * label + (1 - imask) * feat_labels
            feat_scores = tf.where(mask, overlap, feat_scores)
            f_ymin = fmask * bbox[0] + (1 - fmask) * f_ymin
            f_xmin = fmask * bbox[1] + (1 - fmask) * f_xmin
            f_ymax = fmask * bbox[2] + (1 - fmask) * f_ymax
            f_xmax = fmask * bbox[3] + (1 - fmask) * f_xmax
            return i + 1, feat_labels, feat_scores, f_ymin, f_xmin, f_ymax, f_xmax

        init = [0, tf.zeros(shape, tf.int64), tf.zeros(shape), tf.zeros(shape), tf.zeros(shape), tf.ones(shape),
                tf.ones(shape)]
        _, feat_labels, feat_scores, f_ymin, f_xmin, f_ymax, f_xmax = tf1.while_loop(
            lambda i, *rest: tf.less(i, tf.shape(labels))[0], body, init
        )
        cy, cx = (f_ymax + f_ymin) / 2.0, (f_xmax + f_xmin) / 2.0
        h, w = f_ymax - f_ymin, f_xmax - f_xmin
        loc = tf.stack([(cx - xref) / wref / scaling[0], (cy - yref) / href / scaling[1],
                        tf.math.log(w / wref) / scaling[2], tf.math.log(h / href) / scaling[3]], axis=-1)
        classes.append(tf.reshape(feat_labels, [-1]))
        scores.append(tf.reshape(feat_scores, [-1]))
        localisations.append(tf.reshape(loc, [-1, 4]))
    return tf.concat(classes, 0), tf.concat(localisations, 0), tf.concat(scores, 0)


def random_image(rng, count):
    centre = rng.uniform(0.1, 0.9, (count, 2))
    size = rng.uniform(0.02, 0.6, (count, 2))
    boxes = np.clip(np.concatenate([centre - size / 2, centre + size / 2], axis=1), 0, 1).astype(np.float32)
    return rng.integers(1, 21, count).astype(np.int64), boxes


def crowded_image(rng, count):
    """Near-duplicate pairs of small boxes (12-30 px at 300x300), jittered by up to 1 px."""
    pairs = (count + 1) // 2
    centre = rng.uniform(0.1, 0.9, (pairs, 2))
    size = rng.uniform(0.04, 0.1, (pairs, 2))
    base = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    boxes = np.repeat(base, 2, axis=0)[:count] + rng.uniform(-0.003, 0.003, (count, 4))
    return rng.integers(1, 21, count).astype(np.int64), np.clip(boxes, 0, 1).astype(np.float32)


IMAGES = {"random": random_image, "crowded": crowded_image}


def time_per_image(sess, fetches, feed, repeats):
    """Median seconds of one run: robust to other work on a shared machine, fair to both versions."""
    sess.run(fetches, feed)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(fetches, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def define_flags(flag_values):
    fv = {"flag_values": flag_values}
    command_line.define_integer_list("boxes", [10, 50, 200], "Boxes per image, comma-separated.", flag_values)
    flags.DEFINE_list("images", ["random", "crowded"],
                      f"Kinds of images, comma-separated: {', '.join(sorted(IMAGES))}.", **fv)
    flags.register_validator("images", lambda kinds: bool(kinds) and set(kinds) <= set(IMAGES),
                             message=f"--images must list {' and/or '.join(sorted(IMAGES))}", **fv)
    flags.DEFINE_integer("repeats", 50, "Timed runs per measurement.", **fv)
    flags.DEFINE_integer("img_size", 300, "SSD300 input size; 300 gives 8732 anchors", **fv)
    return flag_values


def main(argv=None):
    args = command_line.parse_flags(define_flags(flags.FlagValues()), argv, __doc__)

    tf1.disable_eager_execution()
    net = nets_factory.get_network("ssd_300_vgg", img_shape=(args.img_size, args.img_size))
    cpu = platform.processor() or platform.machine()
    machine = f"{platform.node()} {cpu} cpus={os.cpu_count()} tf={tf.__version__}"
    rng = np.random.default_rng(0)
    with tf.Graph().as_default():
        labels = tf1.placeholder(tf.int64, [None])
        boxes = tf1.placeholder(tf.float32, [None, 4])
        implementations = {
            "bipartite": net.bboxes_encode(labels, boxes),
            "one_pass": one_pass_encode(labels, boxes, net),
            "while_loop": while_loop_encode(labels, boxes, net),
        }
        config = tf1.ConfigProto(device_count={"GPU": 0})
        with tf1.Session(config=config) as sess:
            for kind in args.images:
                for count in args.boxes:
                    image_labels, image_boxes = IMAGES[kind](rng, count)
                    feed = {labels: image_labels, boxes: image_boxes}
                    seconds = {}
                    settings = {"anchors": net.num_anchors, "boxes": count, "images": kind,
                                "repeats": args.repeats, "device": "CPU"}
                    for name, fetches in implementations.items():
                        seconds[name] = time_per_image(sess, fetches, feed, args.repeats)
                        print(json.dumps({"what": f"target_encoding_{name}", "config": settings,
                                          "value": seconds[name], "unit": "s/image", "machine": machine}), flush=True)
                    for reference in ("one_pass", "while_loop"):
                        print(json.dumps({"what": f"target_encoding_time_bipartite_vs_{reference}",
                                          "config": settings, "value": seconds["bipartite"] / seconds[reference],
                                          "unit": "x", "machine": machine}), flush=True)


if __name__ == "__main__":
    main()
