"""Counts and box-size statistics of a converted split, per class and overall (numpy only, no TensorFlow).

Fed one image at a time (:meth:`SplitStatistics.add_image`, with the boxes as the TFRecords hold
them: relative ``[ymin, xmin, ymax, xmax]``), it answers what a user checks before training:

- images, images without objects, and per class the images holding it, its objects, its difficult
  objects;
- box sizes (of every object, difficult ones included) in pixels of the stored image and relative to it: width, height, sqrt(area), and the
  aspect ratio width/height in pixels; each as min / 5th percentile / median / 95th percentile / max
  (numpy's linear interpolation);
- COCO's size buckets on the box area in image pixels: small below 32², medium below 96², large
  from 96² (as ``nets.anchor_coverage`` counts them);
- boxes with no area and boxes reaching outside the image (neither should survive the converter;
  records written by other tools may have them);
- image sizes: how many distinct, the smallest and largest width and height, the most common ones.

:meth:`SplitStatistics.summary` is a JSON-ready dict; :func:`format_tables` prints it as text.
"""

import collections

import numpy as np

SIZE_BUCKETS = (("small", 32.0**2), ("medium", 96.0**2), ("large", np.inf))  # name, area below which it ends
PERCENTILES = (("min", 0), ("p5", 5), ("median", 50), ("p95", 95), ("max", 100))
# key in the summary, title in the table, decimals in the table
MEASURES = (
    ("width_px", "width (pixels)", 1),
    ("height_px", "height (pixels)", 1),
    ("sqrt_area_px", "sqrt(area) (pixels)", 1),
    ("aspect_ratio", "aspect ratio w/h (pixels)", 2),
    ("width_rel", "width (relative)", 3),
    ("height_rel", "height (relative)", 3),
    ("sqrt_area_rel", "sqrt(area) (relative)", 3),
)
OUTSIDE_TOLERANCE = 1e-6  # float32 coordinates of a box on the border may exceed 1 by a rounding step
MOST_COMMON_SIZES = 5
ALL = "all"


class SplitStatistics:
    """Accumulates the objects of a split's images; ``labels_to_names`` ({id: name}, 0 the
    background) gives every class a row, those without objects in the split included."""

    def __init__(self, labels_to_names):
        self.names = {int(k): str(v) for k, v in labels_to_names.items() if int(k) > 0}
        self.images = 0
        self.images_without_objects = 0
        self.image_sizes = collections.Counter()  # (width, height) -> images
        self.images_per_class = collections.Counter()
        self._labels, self._difficult, self._boxes, self._image_shapes = [], [], [], []

    def add_image(self, height, width, labels, boxes, difficult):
        """One image: its size in pixels and its objects (``boxes`` ``[N, 4]`` relative ``[ymin, xmin,
        ymax, xmax]``, ``labels`` and ``difficult`` ``[N]``)."""
        labels = np.asarray(labels, np.int64).reshape(-1)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        difficult = np.asarray(difficult, bool).reshape(-1)
        if len(difficult) != len(labels):  # as tfrecord_schema reads a record without (or with odd) flags
            difficult = np.zeros(len(labels), bool)
        self.images += 1
        self.image_sizes[(int(width), int(height))] += 1
        if not len(labels):
            self.images_without_objects += 1
            return
        for label in set(labels.tolist()):
            self.images_per_class[label] += 1
        self._labels.append(labels)
        self._difficult.append(difficult)
        self._boxes.append(boxes)
        self._image_shapes.append(np.tile([[height, width]], (len(labels), 1)).astype(np.float64))

    def _objects(self):
        if not self._labels:
            return np.zeros([0], np.int64), np.zeros([0], bool), np.zeros([0, 4]), np.zeros([0, 2])
        return (np.concatenate(self._labels), np.concatenate(self._difficult), np.concatenate(self._boxes),
                np.concatenate(self._image_shapes))

    def class_name(self, label):
        return self.names.get(int(label), f"class id {int(label)} (not in dataset_info.json)")

    def summary(self):
        """A JSON-ready dict: ``images``, ``images_without_objects``, ``image_sizes``, ``classes``
        (name -> group, in class id order) and ``all`` (every object). A group holds ``images``,
        ``objects``, ``difficult``, ``small``/``medium``/``large``, ``zero_area``, ``outside_image`` and
        for each of :data:`MEASURES` ``{min, p5, median, p95, max}`` (None without objects)."""
        labels, difficult, boxes, shapes = self._objects()
        ymin, xmin, ymax, xmax = boxes.T
        width_rel, height_rel = xmax - xmin, ymax - ymin
        width_px, height_px = width_rel * shapes[:, 1], height_rel * shapes[:, 0]
        area_px = width_px * height_px
        has_area = (width_rel > 0) & (height_rel > 0)
        values = {
            "width_px": width_px,
            "height_px": height_px,
            "sqrt_area_px": np.sqrt(np.maximum(area_px, 0.0)),
            "aspect_ratio": np.divide(width_px, height_px, out=np.full(len(labels), np.nan), where=has_area),
            "width_rel": width_rel,
            "height_rel": height_rel,
            "sqrt_area_rel": np.sqrt(np.maximum(width_rel * height_rel, 0.0)),
        }
        outside = ((boxes < -OUTSIDE_TOLERANCE) | (boxes > 1.0 + OUTSIDE_TOLERANCE)).any(axis=1)

        def group(mask, images):
            counts = {"images": int(images), "objects": int(mask.sum()), "difficult": int(difficult[mask].sum())}
            low = 0.0
            for bucket, high in SIZE_BUCKETS:
                counts[bucket] = int((mask & (area_px >= low) & (area_px < high)).sum())
                low = high
            counts["zero_area"] = int((mask & ~has_area).sum())
            counts["outside_image"] = int((mask & outside).sum())
            for key, _, _ in MEASURES:
                measured = values[key][mask]
                measured = measured[np.isfinite(measured)]
                counts[key] = ({name: float(np.percentile(measured, q)) for name, q in PERCENTILES}
                               if len(measured) else None)
            return counts

        label_ids = sorted(set(self.names) | set(labels.tolist()))
        widths = [size[0] for size in self.image_sizes]
        heights = [size[1] for size in self.image_sizes]
        return {
            "images": self.images,
            "images_without_objects": self.images_without_objects,
            "image_sizes": {
                "distinct": len(self.image_sizes),
                "width": {"min": min(widths), "max": max(widths)} if widths else None,
                "height": {"min": min(heights), "max": max(heights)} if heights else None,
                "most_common": [{"width": w, "height": h, "images": n}
                                for (w, h), n in self.image_sizes.most_common(MOST_COMMON_SIZES)],
            },
            "classes": {self.class_name(label): {"id": label, **group(labels == label, self.images_per_class[label])}
                        for label in label_ids},
            ALL: group(np.ones(len(labels), bool), self.images - self.images_without_objects),
        }


def _number(value, decimals):
    return "-" if value is None else f"{value:.{decimals}f}"


def format_tables(summary):
    """The summary as text lines: image counts and sizes, a count table (one row per class and
    ``all``), then one box-size table per measure."""
    sizes = summary["image_sizes"]
    everything = summary[ALL]
    lines = [f"{summary['images']} images, {summary['images_without_objects']} without objects; "
             f"{everything['objects']} objects, {everything['difficult']} difficult"]
    if sizes["distinct"]:
        common = ", ".join(f"{s['width']}x{s['height']} ({s['images']})" for s in sizes["most_common"])
        lines.append(f"image sizes (width x height): {sizes['distinct']} distinct, width {sizes['width']['min']}.."
                     f"{sizes['width']['max']}, height {sizes['height']['min']}..{sizes['height']['max']}; "
                     f"most common: {common}")
    rows = [(name, group) for name, group in summary["classes"].items()] + [(ALL, everything)]
    name_width = max([len("class")] + [len(name) for name, _ in rows] + [len(title) for _, title, _ in MEASURES]) + 2
    count_columns = ("images", "objects", "difficult", "small", "medium", "large")
    if everything["zero_area"] or everything["outside_image"]:
        count_columns += ("zero_area", "outside_image")
    lines += ["", "class".ljust(name_width) + "".join(f"{column:>14}" if "_" in column else f"{column:>10}"
                                                    for column in count_columns)]
    for name, group in rows:
        lines.append(name.ljust(name_width) + "".join(f"{group[column]:>14}" if "_" in column else
                                                      f"{group[column]:>10}" for column in count_columns))
    lines += ["", "box sizes: small < 32x32 pixels <= medium < 96x96 pixels <= large (COCO's buckets)"]
    for key, title, decimals in MEASURES:
        lines += ["", title.ljust(name_width) + "".join(f"{name:>10}" for name, _ in PERCENTILES)]
        for name, group in rows:
            stats = group[key] or {}
            lines.append(name.ljust(name_width) + "".join(f"{_number(stats.get(p), decimals):>10}"
                                                          for p, _ in PERCENTILES))
    return lines
