"""Look at a converted split before training on it: images with their boxes drawn, and statistics.

    python -m datasets.browse --dataset_dir=data/bccd --split=trainval --output_dir=/tmp/bccd_browse
        [--num_images=20] [--augmented [--seed=0] [--model_name=ssd_300_vgg] [--image_size=300]
        [--zoom_out_max_ratio=4]]

Reads the split's TFRecords with TensorFlow, as the trainer does, and writes to ``--output_dir``:

- one PNG per drawn image: the first ``--num_images`` records of the split in shard order (the
  converter shuffled the images into the shards with its seed, so these are a random sample of the
  annotation set, and the same ones on every run). A PNG is named ``<index>_<file>.png``: the
  record's position in the split (0-based, the order of ``dataset_info.json``'s files) and its
  image file name (else its source id) made file-safe, e.g. ``0003_BloodImage_00012.png``. Each
  box has its class's colour and name, as in TensorBoard's training and evaluation images; a
  difficult box is dashed and named "name (difficult)"; an image whose shorter side is below 128
  pixels is enlarged by a whole factor (nearest neighbour) so that its names stay readable.
- with ``--augmented``: the same records after the training augmentation instead, as the network
  sees them: the trainer's function (``preprocessing_factory``, ``--model_name``'s), output size
  (the network's input, or ``--image_size``) and zoom-out (``--zoom_out_max_ratio``), the means
  added back for display, the boxes that survive the crop. Each record's randomness comes from
  ``--seed`` and its index (``preprocessing.seeds.example_seed``): the same seed draws the same
  pictures, another seed others. The PNGs are named ``<index>_<file>_augmented_seed<seed>.png``.
- ``stats.json``: the statistics of the whole split (every record, not only the drawn ones; see
  :mod:`datasets.split_statistics` for the fields), the records that could not be read, and the
  drawn files with the record each shows.

It prints the same statistics as tables on stdout: images (and how many have no objects), per
class and in total the images holding the class, objects, difficult objects, COCO small/medium/
large boxes (area below 32², below 96², from 96² image pixels), then box width, height, sqrt(area)
and aspect ratio (w/h) in pixels and relative to the image as min / 5th percentile / median / 95th
percentile / max. A long read logs its progress with an ETA every few seconds.

A damaged record is named (shard file and record number) in a warning and skipped, and the run
goes on: a record that is not a readable Example, or whose image does not decode when it is drawn;
a record whose data fails its checksum ends its shard, as in training (the rest of that shard is
not read, and the warning says how many records that is). The statistics then cover the records
read, which ``stats.json`` and the first printed line say. A dataset folder without
dataset_info.json, an unknown split (the message lists the split names), an output path that is a
file or a bad flag is one error line, exit status 2.
"""

import json
import os
import re
import sys

from absl import flags, logging

import command_line

DEFAULT_NUM_IMAGES = 20
STATS_FILENAME = "stats.json"
PROGRESS_EVERY_S = 5.0
MAX_NAME_LENGTH = 80  # of the file-safe part of a PNG's name

RULES = {
    "num_images": command_line.non_negative_int(),
    "seed": command_line.non_negative_int(),
    "zoom_out_max_ratio": command_line.Rule(low=1),
}


def define_flags(flag_values):
    """Defines the browser's flags on ``flag_values`` (a fresh :class:`absl.flags.FlagValues`); returns it."""
    from nets import nets_factory
    from training.config import TrainingConfig

    trainer = TrainingConfig()  # the trainer's defaults, so that --augmented shows what a default run trains on
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("dataset_dir", None, "A converted dataset (tf_convert_data.py output).", required=True, **fv)
    flags.DEFINE_string("split", "trainval", "The split to draw and measure.", **fv)
    flags.DEFINE_string("output_dir", None, "Where the PNGs and stats.json are written (created if needed; "
                        "files of the same names are replaced, others left alone).", required=True, **fv)
    flags.DEFINE_integer("num_images", DEFAULT_NUM_IMAGES, "Images drawn: the first N records of the split in "
                         "shard order (0: statistics only).", **fv)
    flags.DEFINE_boolean("augmented", False, "Draw the images after the training augmentation (what the network "
                         "sees) instead of as stored.", **fv)
    flags.DEFINE_integer("seed", 0, "--augmented: the seed of the augmentation (the trainer's --seed).", **fv)
    flags.DEFINE_enum("model_name", trainer.model_name, nets_factory.list_networks(), "--augmented: the network "
                      "whose preprocessing and input size are used (the trainer's --model_name).", **fv)
    flags.DEFINE_string("image_size", None, "--augmented: network input 'S' or 'H,W' (the trainer's "
                        "--image_size; default: the network's).", **fv)
    flags.DEFINE_float("zoom_out_max_ratio", trainer.zoom_out_max_ratio, "--augmented: the zoom-out stage's largest canvas (the "
                       "trainer's --zoom_out_max_ratio; 1 switches it off).", **fv)
    return flag_values


def safe_name(text):
    """``text`` as a file-name part: runs of anything but letters, digits, '.', '-' and '_' become
    one '_', without leading dots or underscores (no hidden files), at most :data:`MAX_NAME_LENGTH`
    characters."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip("._")[:MAX_NAME_LENGTH]


def image_filename(index, filename, source_id, digits, suffix=""):
    """``<index>_<file>.png`` for the record at ``index``: its image file's name without extension,
    else its source id, else ``record``, made file-safe (:func:`safe_name`)."""
    stem = os.path.splitext(os.path.basename(filename))[0] if filename else source_id
    return f"{index:0{digits}d}_{safe_name(stem) or 'record'}{suffix}.png"


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _prepare_output_dir(path):
    if os.path.exists(path) and not os.path.isdir(path):
        raise command_line.UsageError(f"--output_dir={path} is a file, not a directory: choose another path")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise command_line.UsageError(f"--output_dir={path}: {parent} is a file, not a directory")
    os.makedirs(path, exist_ok=True)


class _SplitReader:
    """The graph that reads a split shard by shard (one record per run, so that a damaged record is
    named and skipped without losing its neighbours) and the graph that decodes (and augments) a
    record to draw it."""

    def __init__(self, options, spec):
        import tensorflow as tf

        from datasets import tfrecord_schema
        from preprocessing import seeds, visualization
        from tf_compat import tf1

        self.shard = tf1.placeholder(tf.string, [], name="shard")
        self.count = tf1.placeholder(tf.int64, [], name="records")
        records = tf.data.TFRecordDataset(self.shard).take(self.count)
        records = records.map(lambda serialized: {"serialized": serialized,
                                                  **tfrecord_schema.parse_listing(serialized)})
        self.iterator = tf1.data.make_initializable_iterator(records)
        self.next = self.iterator.get_next()
        self.listing = {key: value for key, value in self.next.items() if key != "serialized"}

        self.serialized = tf1.placeholder(tf.string, [], name="serialized")
        self.index = tf1.placeholder(tf.int64, [], name="index")
        example = tfrecord_schema.parse_example(self.serialized)
        image, labels, boxes, difficult = example["image"], example["labels"], example["boxes"], example["difficult"]
        self.out_shape = None
        if options.augmented:
            image, labels, boxes, difficult, self.out_shape = self._augment(
                options, spec, image, labels, boxes, difficult, seeds.example_seed(options.seed, self.index))
            image = visualization.restore_means(image, self.rgb_means)
        self.drawn = {"image": image, "labels": labels, "boxes": boxes, "difficult": difficult,
                      "decoded_shape": example["shape"]}

    def _augment(self, options, spec, image, labels, boxes, difficult, seed):
        from preprocessing import preprocessing_factory
        from training import config as training_config
        from training import graph as training_graph

        config = training_config.TrainingConfig(model_name=options.model_name, image_size=options.image_size,
                                                zoom_out_max_ratio=options.zoom_out_max_ratio)
        out_shape = tuple(training_graph.build_network(config, spec.num_classes).params.img_shape)
        augmentation = training_graph.train_augmentation(config)
        self.rgb_means = augmentation.rgb_means
        preprocess = preprocessing_factory.get_preprocessing(config.model_name, is_training=True)
        return (*preprocess(image, labels, boxes, difficult, out_shape, seed=seed, options=augmentation), out_shape)


def _problem(problems, path, record, message):
    where = f"{path}, record {record}" if record else path
    logging.warning("%s: %s", where, message)
    problems.append({"file": path, "record": record, "problem": message})


_MAP_PREFIX = re.compile(r"^Error in user-defined function passed to .*? transformation with iterator: [\w:]+: ")


def _parse_failure(error):
    # A record that is no Example makes TensorFlow quote its bytes, which need not be UTF-8 text.
    if isinstance(error, UnicodeDecodeError):
        return "not a readable tf.train.Example"
    return _MAP_PREFIX.sub("", command_line.first_line(error))


class _Browse:
    """One run's state: the statistics so far, the problems met, the pictures drawn."""

    def __init__(self, options, spec, total):
        from datasets import split_statistics

        self.options, self.spec = options, spec
        self.statistics = split_statistics.SplitStatistics(spec.labels_to_names)
        self.problems = _framing_problems(spec)
        self.drawn = []
        self.digits = max(4, len(str(total - 1)))
        self.suffix = f"_augmented_seed{options.seed}" if options.augmented else ""

    def read_shard(self, session, reader, path, count, first_index, meter):
        """Measures every record of the shard at ``path`` (``count`` readable ones, the first at
        position ``first_index`` in the split) and draws those still wanted."""
        import tensorflow as tf

        session.run(reader.iterator.initializer, {reader.shard: path, reader.count: count})
        for record in range(count):
            wanted = len(self.drawn) < self.options.num_images
            try:
                values = session.run(reader.next if wanted else reader.listing)
            except tf.errors.OutOfRangeError:
                return
            except tf.errors.DataLossError as error:
                _problem(self.problems, path, record + 1,
                         f"damaged data ({command_line.first_line(error)}); the rest of this shard ({count - record} "
                         "records) is not read, in training neither: re-run tf_convert_data.py")
                meter.update(count - record)
                return
            except (tf.errors.InvalidArgumentError, UnicodeDecodeError) as error:
                _problem(self.problems, path, record + 1, f"skipped: {_parse_failure(error)}")
                meter.update(1)
                continue
            self.statistics.add_image(values["height"], values["width"], values["labels"], values["boxes"],
                                      values["difficult"])
            meter.update(1)
            if wanted:
                self.draw(session, reader, values, first_index + record, path, record + 1)

    def draw(self, session, reader, values, index, path, record):
        from PIL import Image

        picture = _draw(session, reader, values, index, self.spec, self.problems, path, record)
        if picture is None:
            return
        filename, source_id = _text(values["filename"]), _text(values["source_id"])
        name = image_filename(index, filename, source_id, self.digits, self.suffix)
        Image.fromarray(picture).save(os.path.join(self.options.output_dir, name))
        self.drawn.append({"file": name, "index": index, "shard": os.path.basename(path), "record": record,
                           "filename": filename, "source_id": source_id})

    def report(self, out_shape):
        """stats.json's content."""
        options, spec = self.options, self.spec
        summary = self.statistics.summary()
        augmentation = {"seed": options.seed, "model_name": options.model_name, "image_size": list(out_shape),
                        "zoom_out_max_ratio": options.zoom_out_max_ratio} if options.augmented else {}
        return {
            "dataset": spec.name,
            "dataset_dir": os.path.abspath(spec.dataset_dir),
            "split": spec.split_name,
            "records_in_split": spec.num_samples,
            "records_read": summary["images"],
            "problems": self.problems,
            "drawn": {"augmented": bool(options.augmented), **augmentation, "images": self.drawn},
            **summary,
        }


def browse(options):
    """The command's work (flags already parsed): draws, measures, prints; returns the exit status."""
    import tensorflow as tf

    from datasets import dataset_factory, split_statistics
    from evaluation import progress
    from tf_compat import tf1

    size_problem = command_line.image_size_problem(options.image_size) if options.image_size else None
    command_line.check_options(options, RULES, [size_problem])
    spec = dataset_factory.get_dataset(None, options.split, options.dataset_dir)
    _prepare_output_dir(options.output_dir)
    files, counts = dataset_factory.usable_records(spec, sorted(spec.files))
    run = _Browse(options, spec, sum(counts))
    with tf.Graph().as_default():
        reader = _SplitReader(options, spec)
        meter = progress.Progress(f"Reading split '{spec.split_name}'", sum(counts), every_secs=PROGRESS_EVERY_S)
        with tf1.Session(config=tf1.ConfigProto(device_count={"GPU": 0})) as session:
            for shard, (path, count) in enumerate(zip(files, counts)):
                run.read_shard(session, reader, path, count, sum(counts[:shard]), meter)
        meter.finish()
    report = run.report(reader.out_shape)
    with open(os.path.join(options.output_dir, STATS_FILENAME), "w", encoding="utf-8") as stream:
        json.dump(report, stream, indent=1)
        stream.write("\n")
    print(f"Split '{spec.split_name}' of dataset '{spec.name}' ({spec.dataset_dir})"
          + ("" if report["records_read"] == spec.num_samples else
             f": {report['records_read']} of its {spec.num_samples} records read"))
    if run.problems:
        print(f"{len(run.problems)} problem(s): named in the warnings above and in {STATS_FILENAME}")
    print("\n".join(split_statistics.format_tables(report)))
    what = "augmented images" if options.augmented else "images"
    print(f"\n{len(run.drawn)} {what} and {STATS_FILENAME} written to {options.output_dir}")
    return command_line.EXIT_OK


def _framing_problems(spec):
    """The shards whose record framing breaks, as problems (``dataset_factory.usable_records`` has
    walked and warned about each already: its scans are taken, not walked again)."""
    from datasets import dataset_factory

    problems = []
    for path in sorted(spec.files):
        scan = dataset_factory.shard_scan(path)
        if scan.problem:
            problems.append({"file": path, "record": scan.records + 1, "problem": scan.problem})
    return problems


def _draw(session, reader, values, index, spec, problems, path, record):
    """The record as a picture (uint8 [H, W, 3]) with its boxes, or None when its image cannot be decoded."""
    import numpy as np
    import tensorflow as tf

    from evaluation import detection_images

    try:
        example = session.run(reader.drawn, {reader.serialized: values["serialized"], reader.index: index})
    except (tf.errors.InvalidArgumentError, UnicodeDecodeError) as error:
        _problem(problems, path, record, f"not drawn: {_parse_failure(error)}")
        return None
    decoded_height, decoded_width = (int(v) for v in example["decoded_shape"][:2])
    if (decoded_height, decoded_width) != (int(values["height"]), int(values["width"])):
        # Relative boxes still land right on the picture, but the statistics' pixels use the stored size.
        _problem(problems, path, record, f"the record says {int(values['width'])}x{int(values['height'])} pixels "
                 f"but its image decodes to {decoded_width}x{decoded_height}: the statistics in pixels use the "
                 "stored size; re-run tf_convert_data.py")
    height, width = example["image"].shape[:2]
    ground_truth = {"boxes": np.asarray(example["boxes"]) * [height, width, height, width],
                    "labels": example["labels"], "difficult": example["difficult"]}
    return detection_images.ground_truth_panel(example["image"], ground_truth, spec.labels_to_names, caption=False)


def main(argv=None):
    """``python -m datasets.browse --dataset_dir=D --output_dir=O``: draws the first images of a split
    with their boxes and prints its statistics (see the module's doc)."""
    import package_guard

    package_guard.ensure_project_packages()
    return command_line.run_graph_command(define_flags(flags.FlagValues()), argv, __doc__, browse,
                                          program="python -m datasets.browse")


if __name__ == "__main__":
    sys.exit(main())
