"""COCO JSON against Pascal VOC input: conversion speed per image and the memory of the COCO parse.

    nice python bench/bench_convert_coco.py [--num_images=10000] [--workers=2] [--polygon_points=60]

Generates the built-in synthetic dataset as a VOC root (small real JPEGs), writes the same
annotations as one COCO file (annotations/instances_train.json, images hard-linked into train/,
each box with a segmentation polygon so that an annotation is about as large as COCO's, ~0.5 kB, and
up to 13 objects an image so that an image's share is too, ~3.8 kB),
then converts both, each in its own process with the same worker count, and measures the COCO parse
alone in a fresh process (peak RSS growth, and tracemalloc's peak of Python allocations).

Prints one JSON object per line: the JSON file, each conversion (images/s, peak RSS), the ratio of
COCO's time per image to VOC's (limit 1.5), and the parse's peak memory over the JSON size (limit 4),
with json.load's for comparison.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

import command_line  # noqa: E402

SPEED_LIMIT = 1.5  # COCO's time per image over VOC's
MEMORY_LIMIT = 4.0  # the parse's peak memory over the JSON file's size


def _status_bytes(field):
    """VmRSS (now) or VmHWM (peak) of this process. Not ru_maxrss: Linux carries it over exec from the
    parent, which has imported TensorFlow, so a child's peak would read as at least the parent's."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _rss_bytes():
    return _status_bytes("VmRSS")


def _peak_rss_bytes():
    return _status_bytes("VmHWM")


def write_coco(voc_root, coco_root, polygon_points, seed=0):
    """The VOC root's annotations as annotations/instances_train.json, images hard-linked into train/."""
    from datasets import sample_data, voc_xml

    rng = np.random.default_rng(seed)
    image_folder = os.path.join(coco_root, "train")
    os.makedirs(image_folder, exist_ok=True)
    os.makedirs(os.path.join(coco_root, "annotations"), exist_ok=True)
    category_ids = {name: 1 + 3 * index for index, name in enumerate(sorted(sample_data.CLASSES))}  # sparse
    images, annotations = [], []
    angles = np.linspace(0, 2 * np.pi, polygon_points, endpoint=False)
    for image_id, name in enumerate(sorted(os.listdir(os.path.join(voc_root, "Annotations"))), start=1):
        annotation = voc_xml.read_annotation(os.path.join(voc_root, "Annotations", name))
        source = os.path.join(voc_root, "JPEGImages", annotation.filename)
        target = os.path.join(image_folder, annotation.filename)
        try:
            os.link(source, target)  # the same inode: both conversions read the same cached bytes
        except OSError:
            shutil.copy(source, target)
        images.append({"id": image_id, "file_name": annotation.filename, "width": annotation.width,
                       "height": annotation.height, "license": 1, "coco_url": f"http://example.org/{image_id}.jpg",
                       "date_captured": "2026-01-01 00:00:00"})
        for obj in annotation.objects:
            w, h = obj.xmax - obj.xmin, obj.ymax - obj.ymin
            wobble = 1.0 - 0.2 * rng.random(polygon_points)
            xs = obj.xmin + w / 2 * (1 + wobble * np.cos(angles))
            ys = obj.ymin + h / 2 * (1 + wobble * np.sin(angles))
            polygon = [round(float(v), 2) for pair in zip(xs, ys) for v in pair]
            annotations.append({"segmentation": [polygon], "area": round(float(w * h * 0.8), 2), "iscrowd": obj.difficult,
                                "image_id": image_id, "bbox": [obj.xmin, obj.ymin, w, h],
                                "category_id": category_ids[obj.name], "id": len(annotations) + 1})
    data = {"info": {"description": "bench_convert_coco"}, "licenses": [{"id": 1, "name": "CC"}], "images": images,
            "annotations": annotations,
            "categories": [{"supercategory": "shape", "id": i, "name": n} for n, i in category_ids.items()]}
    path = os.path.join(coco_root, "annotations", "instances_train.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"))
    return path, len(images), len(annotations)


def measure_parse(coco_root, how):
    """In this (fresh) process, which has not imported TensorFlow (its import's peak would hide the
    parse's): the COCO discovery's peak memory in bytes, by RSS growth or tracemalloc."""
    from datasets import formats

    splits = ("trainval", "test")
    if how == "tracemalloc":
        import tracemalloc

        tracemalloc.start()
        start = time.perf_counter()
        formats.discover([coco_root], splits, layout="coco")
        seconds = time.perf_counter() - start
        return tracemalloc.get_traced_memory()[1], seconds
    if how == "json.load":
        path = os.path.join(coco_root, "annotations", "instances_train.json")
        before, start = _rss_bytes(), time.perf_counter()
        with open(path, encoding="utf-8") as f:
            json.load(f)
        return _peak_rss_bytes() - before, time.perf_counter() - start
    before, start = _rss_bytes(), time.perf_counter()
    found = formats.discover([coco_root], splits, layout="coco")
    seconds = time.perf_counter() - start
    assert sum(len(items) for items in found.by_split.values()) > 0
    return _peak_rss_bytes() - before, seconds


def measure_conversion(root, workers, output_dir):
    """In this (fresh) process: converts ``root``; returns (images, seconds, peak RSS MiB)."""
    from datasets import converter

    options = converter.ConversionOptions(splits=("trainval", "test"), num_workers=workers)
    start = time.perf_counter()
    result = converter.convert([root], output_dir, "bench", options, quiet=True)
    seconds = time.perf_counter() - start
    return result.num_images, seconds, _peak_rss_bytes() / 2**20


def _child(*args):
    completed = subprocess.run([sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True,
                               check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"bench child {args} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _warm(folder):
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "rb") as f:
            f.read()


def define_flags(flag_values):
    fv = {"flag_values": flag_values}
    flags.DEFINE_integer("num_images", 10000, "images in the generated dataset", **fv)
    flags.DEFINE_integer("workers", 2, "worker processes of both conversions", **fv)
    flags.DEFINE_integer("polygon_points", 32,
                         "vertices of each segmentation polygon; 32 makes an annotation ~0.5 kB of JSON, as in COCO",
                         **fv)
    flags.DEFINE_integer("max_objects", 13, "objects per generated image at most (1..max, COCO averages 7.3)", **fv)
    flags.DEFINE_string("work_dir", None, "where the data go (default: a temporary folder, removed after)", **fv)
    flags.DEFINE_string("child", None, "internal: 'parse:<how>:<coco root>' or 'convert:<workers>:<root>:<out>'", **fv)
    return flag_values


def main(argv=None):
    args = command_line.parse_flags(define_flags(flags.FlagValues()), argv, __doc__, program="bench_convert_coco")
    if not (args.child or "").startswith("parse:"):
        import package_guard

        package_guard.ensure_project_packages()
    if args.child:
        kind, rest = args.child.split(":", 1)
        if kind == "parse":
            how, root = rest.split(":", 1)
            peak, seconds = measure_parse(root, how)
            print(json.dumps({"peak_bytes": peak, "seconds": seconds}))
        else:
            workers, root, output_dir = rest.split(":", 2)
            images, seconds, rss = measure_conversion(root, int(workers), output_dir)
            print(json.dumps({"images": images, "seconds": seconds, "peak_rss_mib": rss}))
        return
    from bench_common import machine

    work_dir = args.work_dir or tempfile.mkdtemp(prefix="bench_convert_coco_")
    try:
        run(args, work_dir, machine())
    finally:
        if not args.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)


def run(args, work_dir, machine_line):
    from datasets import sample_data

    voc_root, coco_root = os.path.join(work_dir, "voc"), os.path.join(work_dir, "coco")
    # COCO has 7.3 objects per image; the sample's default (1-4) would make the JSON a third as large per image.
    sample_data.MAX_OBJECTS = args.max_objects
    sample_data.generate_voc_sample(voc_root, num_images=args.num_images, image_size=(64, 128), seed=0)
    json_path, num_images, num_annotations = write_coco(voc_root, coco_root, args.polygon_points)
    json_bytes = os.path.getsize(json_path)
    config = {"images": num_images, "workers": args.workers}
    print(json.dumps({"what": "COCO JSON file", "config": config, "annotations": num_annotations,
                      "value": round(json_bytes / 2**20, 2), "unit": "MiB",
                      "bytes_per_image": round(json_bytes / num_images), "machine": machine_line}), flush=True)
    _warm(os.path.join(voc_root, "JPEGImages"))
    rates = {}
    for layout, root in (("voc", voc_root), ("coco", coco_root)):
        measured = _child(f"--child=convert:{args.workers}:{root}:{os.path.join(work_dir, 'out_' + layout)}")
        rates[layout] = measured["images"] / measured["seconds"]
        print(json.dumps({"what": f"tf_convert_data throughput, {layout} input", "config": config,
                          "value": round(rates[layout], 1), "unit": "images/s", "images": measured["images"],
                          "seconds": round(measured["seconds"], 2), "peak_rss_mib": round(measured["peak_rss_mib"], 1),
                          "machine": machine_line}), flush=True)
    ratio = rates["voc"] / rates["coco"]
    print(json.dumps({"what": "COCO time per image / VOC time per image", "config": config, "value": round(ratio, 3),
                      "limit": SPEED_LIMIT, "ok": ratio <= SPEED_LIMIT, "machine": machine_line}), flush=True)
    parse = {how: _child(f"--child=parse:{how}:{coco_root}") for how in ("rss", "tracemalloc", "json.load")}
    print(json.dumps({"what": "COCO parse peak memory / JSON size", "config": config,
                      "value": round(parse["rss"]["peak_bytes"] / json_bytes, 2), "unit": "x (peak RSS growth)",
                      "tracemalloc": round(parse["tracemalloc"]["peak_bytes"] / json_bytes, 2),
                      "json_load_for_comparison": round(parse["json.load"]["peak_bytes"] / json_bytes, 2),
                      "parse_seconds": round(parse["rss"]["seconds"], 2), "limit": MEMORY_LIMIT,
                      "ok": parse["rss"]["peak_bytes"] / json_bytes <= MEMORY_LIMIT, "machine": machine_line}),
          flush=True)


if __name__ == "__main__":
    main()
