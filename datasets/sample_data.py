"""The built-in synthetic detection dataset: coloured shapes on textured backgrounds, in VOC layout.

Three classes of distinct shapes (ellipse-like 'circle', rectangle-like 'square', 'triangle') of
varied size, colour and aspect, sometimes overlapping, on smooth-noise backgrounds with stripes;
about one image in ten has no object. Everything is drawn from one seed, so the same arguments
give the same files. `ensure_sample_dataset` generates and converts it once into a cache folder;
the trainer uses it when no --dataset_dir is given and the tests use it as a fixture.
"""

import os
import shutil
import tempfile
import xml.sax.saxutils

import numpy as np
from absl import logging
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle")
SAMPLE_VERSION = 1  # bump when the generator's output changes, so caches are rebuilt
SPLITS = ("trainval", "test")
TEST_SHARE = 0.2
EMPTY_IMAGE_SHARE = 0.1
MAX_OBJECTS = 4
MIN_OBJECT_SIDE = 12
DIFFICULT_BELOW = 16  # objects whose shorter side is under this many pixels are marked difficult
OUTPUT_NAME = "sample"


def _background(rng, width, height):
    coarse = rng.uniform(40, 215, size=(rng.integers(3, 7), rng.integers(3, 7), 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
    period = rng.uniform(6, 30)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:height, 0:width]
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    image += stripes[..., None] * rng.uniform(5, 25)
    image += rng.normal(0, rng.uniform(3, 12), size=image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def _iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def _draw_object(draw, rng, class_name, box):
    xmin, ymin, xmax, ymax = box
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    outline = tuple(int(c) for c in rng.integers(0, 256, size=3)) if rng.random() < 0.5 else None
    if class_name == "circle":
        draw.ellipse([xmin, ymin, xmax - 1, ymax - 1], fill=colour, outline=outline, width=2)
    elif class_name == "square":
        draw.rectangle([xmin, ymin, xmax - 1, ymax - 1], fill=colour, outline=outline, width=2)
    else:
        apex = xmin + rng.uniform(0.2, 0.8) * (xmax - 1 - xmin)
        points = [(apex, ymin), (xmax - 1, ymax - 1), (xmin, ymax - 1)]
        if rng.random() < 0.5:  # upside down
            points = [(apex, ymax - 1), (xmax - 1, ymin), (xmin, ymin)]
        draw.polygon(points, fill=colour, outline=outline)


def _place_objects(rng, width, height):
    objects = []
    if rng.random() < EMPTY_IMAGE_SHARE:
        return objects
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        for _attempt in range(20):
            side = rng.uniform(MIN_OBJECT_SIDE, 0.6 * min(width, height))
            aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
            box_w = int(min(width, max(MIN_OBJECT_SIDE, round(side * np.sqrt(aspect)))))
            box_h = int(min(height, max(MIN_OBJECT_SIDE, round(side / np.sqrt(aspect)))))
            xmin = int(rng.integers(0, width - box_w + 1))
            ymin = int(rng.integers(0, height - box_h + 1))
            box = (xmin, ymin, xmin + box_w, ymin + box_h)
            if all(_iou(box, other[1]) < 0.4 for other in objects):  # overlaps, but each object stays visible
                objects.append((CLASSES[int(rng.integers(len(CLASSES)))], box))
                break
    return objects


def _annotation_xml(filename, width, height, objects):
    parts = [
        "<annotation>",
        "  <folder>JPEGImages</folder>",
        f"  <filename>{xml.sax.saxutils.escape(filename)}</filename>",
        "  <source><database>ssd-towers synthetic sample</database></source>",
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
        "  <segmented>0</segmented>",
    ]
    for name, (xmin, ymin, xmax, ymax) in objects:
        difficult = int(min(xmax - xmin, ymax - ymin) < DIFFICULT_BELOW)
        parts += [
            "  <object>",
            f"    <name>{name}</name>",
            "    <pose>Unspecified</pose>",
            "    <truncated>0</truncated>",
            f"    <difficult>{difficult}</difficult>",
            f"    <bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>",
            "  </object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def _size_range(image_size):
    if isinstance(image_size, int):
        return image_size, image_size
    low, high = image_size
    if not 32 <= low <= high:
        raise ValueError(f"image_size must be an int or (min, max) with 32 <= min <= max, got {image_size}")
    return int(low), int(high)


def generate_voc_sample(output_dir, num_images=200, image_size=(128, 256), seed=0):
    """Writes the synthetic dataset in VOC layout under `output_dir` and returns `output_dir`.

    `image_size` is a side in pixels or a (min, max) range for each image's width and height.
    """
    low, high = _size_range(image_size)
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(output_dir, sub), exist_ok=True)
    ids = []
    for index in range(num_images):
        image_id = f"sample_{index:05d}"
        width, height = int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))
        image = _background(rng, width, height)
        objects = _place_objects(rng, width, height)
        draw = ImageDraw.Draw(image)
        for name, box in objects:
            _draw_object(draw, rng, name, box)
        if rng.random() < 0.3:
            image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0))))
        image.save(os.path.join(output_dir, "JPEGImages", f"{image_id}.jpg"), "JPEG", quality=90)
        with open(os.path.join(output_dir, "Annotations", f"{image_id}.xml"), "w", encoding="utf-8") as f:
            f.write(_annotation_xml(f"{image_id}.jpg", width, height, objects))
        ids.append(image_id)
    order = rng.permutation(len(ids))
    num_test = int(round(len(ids) * TEST_SHARE))
    test_ids = sorted(ids[i] for i in order[:num_test])
    trainval_ids = sorted(ids[i] for i in order[num_test:])
    for split, split_ids in (("trainval", trainval_ids), ("test", test_ids)):
        with open(os.path.join(output_dir, "ImageSets", "Main", f"{split}.txt"), "w", encoding="utf-8") as f:
            f.write("".join(f"{i}\n" for i in split_ids))
    return output_dir


def default_cache_dir():
    return os.environ.get("SSD_TOWERS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ssd_towers", "sample")


def ensure_sample_dataset(cache_dir=None, num_images=200, image_size=(128, 256), seed=0, num_workers=1):
    """Returns the folder of the converted sample dataset, generating and converting it on first use.

    Several processes may race: each builds in its own temporary folder and renames it into place;
    the loser discards its copy and uses the winner's.
    """
    from datasets import converter  # here, so generating VOC files alone does not import TensorFlow

    cache_dir = cache_dir or default_cache_dir()
    low, high = _size_range(image_size)
    final_dir = os.path.join(cache_dir, f"v{SAMPLE_VERSION}-n{num_images}-s{seed}-px{low}-{high}")
    if os.path.isfile(os.path.join(final_dir, converter.DATASET_INFO)):
        logging.info("Using the built-in sample dataset cached in %s", final_dir)
        return final_dir
    os.makedirs(cache_dir, exist_ok=True)
    work_dir = tempfile.mkdtemp(prefix=".building-", dir=cache_dir)
    try:
        voc_dir = generate_voc_sample(os.path.join(work_dir, "voc"), num_images, (low, high), seed)
        converted_dir = os.path.join(work_dir, "converted")
        options = converter.ConversionOptions(splits=SPLITS, num_workers=num_workers, shuffle_seed=seed)
        converter.convert([voc_dir], converted_dir, OUTPUT_NAME, options, quiet=True)
        try:
            os.rename(converted_dir, final_dir)
        except OSError:
            if not os.path.isfile(os.path.join(final_dir, converter.DATASET_INFO)):
                raise
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    logging.info("Generated the built-in sample dataset (%d synthetic images, classes %s) in %s",
                 num_images, ", ".join(CLASSES), final_dir)
    return final_dir
