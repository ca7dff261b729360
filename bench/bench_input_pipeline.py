"""Input-pipeline throughput for SSD training: parse + decode + augment (+ encode) + batch, in images/s.

Prints one JSON object per measurement line (``what``, ``config``, ``value``, ``unit``,
``machine``), one per ``--parallel_calls`` value, all measured in one run on one machine.

Data sources (pick one):
- default: BCCD straight from its Pascal VOC folder (``--bccd_dir``, JPEGs + XML), read by
  the tiny loader below into serialized ``tf.train.Example`` records held in memory, with
  the SSD-Tensorflow keys; the dataset package's converter is not needed;
- ``--tfrecords GLOB``: TFRecord shards written by ``tf_convert_data.py`` (or by
  SSD-Tensorflow), read from disk.
Both then go through the same ``tf.io.parse_single_example`` with the SSD-Tensorflow keys
(``image/encoded``, ``image/object/bbox/{ymin,xmin,ymax,xmax}``,
``image/object/bbox/label``, ``image/object/bbox/difficult``), so the measured work is the
same; in-memory records leave out only disk reads.

Target encoding (anchor matching) is not in this branch: :func:`build_input_pipeline`
takes ``encode_fn(image, labels, boxes, difficult) -> tuple of tensors``, applied per
example after augmentation when given, whose outputs are batched instead.

Smoke run: ``python bench/bench_input_pipeline.py --max_images=8 --batch_size=4 --num_batches=2 --warmup_batches=1``
"""

import argparse
import glob
import json
import os
import pathlib
import platform
import sys
import time
import xml.etree.ElementTree as ElementTree

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import package_guard  # noqa: E402

package_guard.ensure_project_packages()

import tensorflow as tf  # noqa: E402

from preprocessing import preprocessing_factory, seeds  # noqa: E402
from tf_compat import tf1  # noqa: E402

DEFAULT_BCCD_DIR = REPO_ROOT.parent / "shared" / "data" / "BCCD"
NETWORK_INPUT_SHAPES = {"ssd_300_vgg": (300, 300), "ssd_512_vgg": (512, 512)}

FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/label": tf.io.VarLenFeature(tf.int64),
    "image/object/bbox/difficult": tf.io.VarLenFeature(tf.int64),
}


def _xml_text(node, path, xml_path):
    found = node.find(path)
    if found is None or found.text is None:
        raise ValueError(f"{xml_path}: missing field {path!r}")
    return found.text.strip()


def load_voc_examples(voc_dir, split="trainval", max_images=None):
    """Serialized ``tf.train.Example`` records (SSD-Tensorflow keys) of a VOC-layout folder.

    Labels are 1.. in sorted order of the class names found; boxes are clipped to [0, 1].
    """
    voc_dir = pathlib.Path(voc_dir)
    split_file = voc_dir / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise FileNotFoundError(f"split file not found: {split_file}")
    image_ids = split_file.read_text().split()[:max_images]
    annotations = []
    for image_id in image_ids:
        xml_path = voc_dir / "Annotations" / f"{image_id}.xml"
        root = ElementTree.parse(xml_path).getroot()
        height = float(_xml_text(root, "size/height", xml_path))
        width = float(_xml_text(root, "size/width", xml_path))
        objects = []
        for obj in root.findall("object"):
            name = _xml_text(obj, "name", xml_path)
            difficult = int(obj.findtext("difficult", "0").strip() or 0)
            corners = [float(_xml_text(obj, f"bndbox/{key}", xml_path)) for key in ("ymin", "xmin", "ymax", "xmax")]
            relative = [min(max(v / size, 0.0), 1.0) for v, size in zip(corners, (height, width, height, width))]
            objects.append((name, difficult, relative))
        annotations.append((voc_dir / "JPEGImages" / f"{image_id}.jpg", objects))
    class_ids = {name: i + 1 for i, name in enumerate(sorted({o[0] for _, objs in annotations for o in objs}))}

    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    records = []
    for image_path, objects in annotations:
        feature = {
            "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_path.read_bytes()])),
            "image/object/bbox/label": ints([class_ids[o[0]] for o in objects]),
            "image/object/bbox/difficult": ints([o[1] for o in objects]),
        }
        for index, key in enumerate(("ymin", "xmin", "ymax", "xmax")):
            feature[f"image/object/bbox/{key}"] = floats([o[2][index] for o in objects])
        records.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return records


def parse_example(serialized):
    """(uint8 image [H, W, 3], labels int64 [N], boxes float32 [N, 4], difficult int64 [N])."""
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    image = tf.io.decode_image(parsed["image/encoded"], channels=3, expand_animations=False)
    boxes = tf.stack([tf.sparse.to_dense(parsed[f"image/object/bbox/{key}"])
                      for key in ("ymin", "xmin", "ymax", "xmax")], axis=1)
    labels = tf.sparse.to_dense(parsed["image/object/bbox/label"])
    difficult = tf.sparse.to_dense(parsed["image/object/bbox/difficult"])
    return image, labels, boxes, difficult


def build_input_pipeline(records, network="ssd_300_vgg", batch_size=32, num_parallel_calls=2, seed=0,
                         encode_fn=None, options=None):
    """The training input pipeline as a ``tf.data.Dataset`` of padded batches.

    Args:
      records: serialized ``tf.train.Example`` bytes (from :func:`load_voc_examples`), or
        TFRecord file paths (``str``).
      encode_fn: optional ``(image, labels, boxes, difficult) -> tuple of tensors`` applied per
        example after augmentation (target encoding); its outputs are what gets batched.
    """
    out_shape = NETWORK_INPUT_SHAPES[network]
    preprocess = preprocessing_factory.get_preprocessing(network, is_training=True)
    if records and isinstance(records[0], str):
        dataset = tf.data.TFRecordDataset(records, num_parallel_reads=min(len(records), 4))
    else:
        dataset = tf.data.Dataset.from_tensor_slices(records)

    def process(index, serialized):
        image, labels, boxes, difficult = parse_example(serialized)
        example = preprocess(image, labels, boxes, difficult, out_shape, seeds.example_seed(seed, index), options)
        return encode_fn(*example) if encode_fn is not None else example

    dataset = dataset.repeat().enumerate().map(process, num_parallel_calls=num_parallel_calls)
    return dataset.padded_batch(batch_size, drop_remainder=True).prefetch(2)


def measure_throughput(records, num_parallel_calls, batch_size, num_batches, warmup_batches, **pipeline_kwargs):
    """Images/s over ``num_batches`` batches after ``warmup_batches``, in a fresh graph and session."""
    with tf.Graph().as_default():
        dataset = build_input_pipeline(records, batch_size=batch_size, num_parallel_calls=num_parallel_calls,
                                       **pipeline_kwargs)
        next_batch = tf1.data.make_one_shot_iterator(dataset).get_next()
        # Fetching only the first output keeps host-side copies small; every op still runs.
        fetch = tf.nest.flatten(next_batch)[0]
        with tf1.Session() as session:
            for _ in range(warmup_batches):
                session.run(fetch)
            start = time.perf_counter()
            for _ in range(num_batches):
                session.run(fetch)
            elapsed = time.perf_counter() - start
    return batch_size * num_batches / elapsed


def _machine():
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, TF {tf.__version__}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bccd_dir", default=str(DEFAULT_BCCD_DIR), help="VOC-layout folder read directly")
    parser.add_argument("--split", default="trainval")
    parser.add_argument("--tfrecords", default=None, help="glob of TFRecord shards (instead of --bccd_dir)")
    parser.add_argument("--network", default="ssd_300_vgg", choices=sorted(NETWORK_INPUT_SHAPES))
    parser.add_argument("--parallel_calls", default="1,2", help="comma-separated num_parallel_calls values")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_batches", type=int, default=30)
    parser.add_argument("--warmup_batches", type=int, default=3)
    parser.add_argument("--max_images", type=int, default=None, help="use only the first N images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.tfrecords:
        records = sorted(glob.glob(args.tfrecords))
        if not records:
            raise SystemExit(f"--tfrecords {args.tfrecords!r} matches no file")
        source = f"tfrecords:{args.tfrecords}"
    else:
        records = load_voc_examples(args.bccd_dir, args.split, args.max_images)
        source = f"voc:{args.bccd_dir}/{args.split} ({len(records)} images, in memory)"

    for parallel_calls in (int(v) for v in args.parallel_calls.split(",")):
        images_per_second = measure_throughput(
            records, parallel_calls, args.batch_size, args.num_batches, args.warmup_batches,
            network=args.network, seed=args.seed)
        print(json.dumps({
            "what": "input pipeline throughput (parse+decode+augment+batch)",
            "config": {"network": args.network, "num_parallel_calls": parallel_calls, "batch_size": args.batch_size,
                       "num_batches": args.num_batches, "source": source, "encode_fn": None},
            "value": round(images_per_second, 1),
            "unit": "images/s",
            "machine": _machine(),
        }), flush=True)


if __name__ == "__main__":
    main()
