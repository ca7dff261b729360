"""How well a network's anchors fit a dataset's boxes: positives per box and best IoU, by class and size.

SSD learns an object only through the anchors matched to it. With the bipartite stage every
box gets at least one positive anchor, but a box whose best anchor overlaps it little (best IoU
well below the match threshold) is taught through that one poorly fitting anchor only: the
anchors do not fit such objects (too small, too elongated, too crowded) and the network learns
them badly. This module measures that on a converted split, with the trainer's own matcher
(:func:`nets.matching.match_anchors`), on the boxes as stored (no augmentation; the network's
input is the image resized to ``img_shape``, so relative boxes keep their coordinates):

- per box: the number of positive anchors, the best IoU with any anchor, and whether that best
  IoU reaches ``match_threshold`` (else the box is positive through the bipartite stage only);
- grouped by class and by size (COCO's buckets on the box in network input pixels:
  small < 32², medium < 96², large).

The trainer logs :meth:`CoverageReport.summary_line` at start-up; the full table comes from

    python -m nets.anchor_coverage --dataset_dir=data/bccd --split=trainval [--model_name=ssd_300_vgg]
        [--image_size=300] [--match_threshold=0.5]
"""

import dataclasses
import sys

import numpy as np
import tensorflow as tf

from nets import matching

SIZE_BUCKETS = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, np.inf))
BATCH = 32


@dataclasses.dataclass(frozen=True)
class BoxStatistics:
    """One entry per valid box of the images read."""

    labels: np.ndarray  # int64
    areas: np.ndarray  # in network input pixels
    positives: np.ndarray  # positive anchors of the box
    best_iou: np.ndarray  # best IoU of the box with any anchor


@dataclasses.dataclass(frozen=True)
class GroupCoverage:
    name: str
    boxes: int
    with_positive: int  # boxes with at least one positive anchor
    below_threshold: int  # boxes whose best anchor IoU is below the match threshold
    median_best_iou: float
    p10_best_iou: float
    mean_positives: float

    def describe(self):
        return (f"{self.name}: {self.boxes} boxes, {_percent(self.with_positive, self.boxes)} with a positive anchor, "
                f"best IoU median {self.median_best_iou:.2f} (p10 {self.p10_best_iou:.2f}), "
                f"{_percent(self.below_threshold, self.boxes)} below the threshold, "
                f"{self.mean_positives:.1f} positives per box")


def _percent(part, whole):
    return f"{100.0 * part / whole:.1f}%" if whole else "n/a"


def _group(name, stats, mask, match_threshold):
    count = int(mask.sum())
    if not count:
        return GroupCoverage(name, 0, 0, 0, float("nan"), float("nan"), float("nan"))
    best = stats.best_iou[mask]
    return GroupCoverage(
        name=name, boxes=count, with_positive=int((stats.positives[mask] > 0).sum()),
        below_threshold=int((best < match_threshold).sum()), median_best_iou=float(np.median(best)),
        p10_best_iou=float(np.percentile(best, 10)), mean_positives=float(stats.positives[mask].mean()))


@dataclasses.dataclass(frozen=True)
class CoverageReport:
    network: str
    img_shape: tuple
    match_threshold: float
    images: int
    total_images: int
    overall: GroupCoverage
    by_class: tuple
    by_size: tuple

    def summary_line(self):
        sample = f"{self.images} images" if self.images == self.total_images else (
            f"the first {self.images} of {self.total_images} images")
        worst = [g for g in self.by_class + self.by_size if g.boxes and g.below_threshold / g.boxes >= 0.1]
        warning = ("; anchors fit poorly: " + ", ".join(
            f"{g.name} ({_percent(g.below_threshold, g.boxes)} below IoU {self.match_threshold:g})" for g in worst)
            if worst else "")
        return (f"Anchor coverage ({self.network} at {self.img_shape[0]}x{self.img_shape[1]}, {sample}): "
                f"{self.overall.describe()}; per class: "
                + "; ".join(f"{g.name} median best IoU {g.median_best_iou:.2f}" for g in self.by_class if g.boxes)
                + warning)

    def lines(self):
        header = f"{'group':<16}{'boxes':>8}{'positive':>10}{'best IoU p10':>14}{'median':>8}{'< thr':>8}{'pos/box':>9}"
        rows = [header, "-" * len(header)]
        for group in (self.overall,) + self.by_class + self.by_size:
            rows.append(f"{group.name:<16}{group.boxes:>8}{_percent(group.with_positive, group.boxes):>10}"
                        f"{group.p10_best_iou:>14.2f}{group.median_best_iou:>8.2f}"
                        f"{_percent(group.below_threshold, group.boxes):>8}{group.mean_positives:>9.1f}")
        return rows


def box_statistics(net, labels, boxes, match_threshold=0.5, negative_threshold=None):
    """Graph ops: per padded box [B, N] the positive anchors, best IoU and area in input pixels,
    and which boxes are valid. ``labels`` [B, N], ``boxes`` [B, N, 4] relative."""
    labels = tf.cast(labels, tf.int64)
    boxes = tf.cast(boxes, tf.float32)
    anchors = net.flat_anchors()
    assigned, positive, _, _ = matching.match_anchors(labels, boxes, anchors, match_threshold, negative_threshold)
    num_boxes = tf.shape(labels)[1]
    positives = tf.reduce_sum(tf.one_hot(assigned, num_boxes) * tf.cast(positive, tf.float32)[..., tf.newaxis],
                              axis=1)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, 4, axis=-1)
    valid = (labels > 0) & (ymax > ymin) & (xmax > xmin)
    iou = matching.iou_anchors_boxes(matching.anchors_to_corners(anchors), tf.where(valid[..., tf.newaxis], boxes, 0.0))
    height, width = net.params.img_shape
    areas = (ymax - ymin) * height * (xmax - xmin) * width
    return {"labels": labels, "areas": areas, "positives": positives, "best_iou": tf.reduce_max(iou, axis=1),
            "valid": valid}


def measure_split(net, spec, match_threshold=0.5, negative_threshold=None, max_images=None):
    """:class:`BoxStatistics` of a converted split (the first ``max_images`` images in file order)
    and the number of images read."""
    from datasets import dataset_factory, tfrecord_schema
    from tf_compat import tf1

    with tf.Graph().as_default():
        dataset = dataset_factory.read_records(spec).map(tfrecord_schema.parse_objects)
        if max_images:
            dataset = dataset.take(max_images)
        dataset = dataset.map(lambda example: (example["labels"], example["boxes"])).padded_batch(BATCH)
        labels, boxes = tf1.data.make_one_shot_iterator(dataset).get_next()
        fetches = box_statistics(net, labels, boxes, match_threshold, negative_threshold)
        collected = {key: [] for key in ("labels", "areas", "positives", "best_iou")}
        images = 0
        with tf1.Session(config=tf1.ConfigProto(device_count={"GPU": 0})) as session:
            while True:
                try:
                    values = session.run(fetches)
                except tf.errors.OutOfRangeError:
                    break
                images += len(values["valid"])
                for key in collected:
                    collected[key].append(values[key][values["valid"]])
    stats = BoxStatistics(**{key: np.concatenate(parts) if parts else np.zeros([0]) for key, parts in collected.items()})
    return stats, images


def coverage_report(net, spec, match_threshold=0.5, negative_threshold=None, max_images=None):
    """:class:`CoverageReport` of ``net``'s anchors on the split ``spec``."""
    stats, images = measure_split(net, spec, match_threshold, negative_threshold, max_images)
    everything = np.ones(len(stats.labels), bool)
    by_class = tuple(_group(name, stats, stats.labels == label, match_threshold)
                     for label, name in sorted(spec.labels_to_names.items()) if label > 0)
    by_size = tuple(_group(f"{bucket} boxes", stats, (stats.areas >= low) & (stats.areas < high), match_threshold)
                    for bucket, low, high in SIZE_BUCKETS)
    return CoverageReport(network=net.name, img_shape=tuple(net.params.img_shape), match_threshold=match_threshold,
                          images=images, total_images=spec.num_samples,
                          overall=_group("all", stats, everything, match_threshold), by_class=by_class,
                          by_size=by_size)


def define_flags(flag_values):
    """Defines the command's flags on ``flag_values`` (a fresh :class:`absl.flags.FlagValues`); returns it."""
    from absl import flags

    from nets import nets_factory

    fv = {"flag_values": flag_values}
    flags.DEFINE_string("dataset_dir", None, "A converted dataset (tf_convert_data.py output).", required=True, **fv)
    flags.DEFINE_string("split", "trainval", "The split whose boxes are measured.", **fv)
    flags.DEFINE_enum("model_name", "ssd_300_vgg", nets_factory.list_networks(), "The network whose anchors are "
                      "measured.", **fv)
    flags.DEFINE_string("image_size", None, "Network input 'S' or 'H,W' (default: the network's).", **fv)
    flags.DEFINE_float("match_threshold", 0.5, "IoU from which an anchor is positive (the trainer's "
                       "--match_threshold).", **fv)
    flags.DEFINE_integer("max_images", None, "Read only the first N images of the split.", **fv)
    return flag_values


def main(argv=None):
    import package_guard

    package_guard.ensure_project_packages()
    from absl import flags

    import command_line
    from datasets import dataset_factory
    from nets import nets_factory
    from tf_compat import tf1

    args = command_line.parse_flags(define_flags(flags.FlagValues()), argv, __doc__,
                                    program="python -m nets.anchor_coverage")
    tf1.disable_eager_execution()
    try:
        spec = dataset_factory.get_dataset(None, args.split, args.dataset_dir)
        overrides = {"num_classes": spec.num_classes}
        image_size = nets_factory.parse_image_size(args.image_size)
        if image_size:
            overrides["img_shape"] = image_size
        net = nets_factory.get_network(args.model_name, **overrides)
        report = coverage_report(net, spec, args.match_threshold, max_images=args.max_images)
    except (dataset_factory.DatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary_line())
    print("\n".join(report.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
