"""Converts Pascal VOC, COCO JSON, YOLO text or labelImg annotations into sharded TFRecords for SSD training.

    python tf_convert_data.py --dataset_dir=VOCdevkit/VOC2007 --output_dir=data/voc07 --output_name=pascalvoc_2007
    python tf_convert_data.py --dataset_dir=VOCdevkit/VOC2007 --dataset_dir=VOCdevkit/VOC2012 \\
        --output_dir=data/voc0712 --output_name=pascalvoc_0712 --splits=trainval
    python tf_convert_data.py --dataset_dir=my_labelimg_folder --output_dir=data/mine --test_fraction=0.2
    python tf_convert_data.py --dataset_dir=my_yolo_dataset --output_dir=data/yolo --splits=trainval=train,test=val
    python tf_convert_data.py --dataset_dir=coco2017 --output_dir=data/coco \\
        --splits=trainval=instances_train2017.json,test=instances_val2017.json
    python tf_convert_data.py --annotations=instances.json --images_dir=photos --output_dir=data/mine

Writes OUT/<name>_<split>-NNNNN-of-NNNNN.tfrecord, OUT/labels.txt, OUT/dataset_info.json and
OUT/conversion_report.{txt,json}. For COCO JSON input, dataset_info.json also maps each class id to
its COCO category id (coco_category_ids), so that eval_ssd_network.py --detections_file can write
detections with COCO's own ids. Exit status: 0 when images were written, 1 when none were
(or, with --strict, when any image or object was skipped), 2 for unusable arguments.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's start-up notes are not this tool's output

import package_guard  # noqa: E402

package_guard.ensure_project_packages()

from absl import flags, logging  # noqa: E402

import command_line  # noqa: E402
from datasets import converter, formats, sources  # noqa: E402


def _split_entries(text):
    return [entry.strip() for entry in text.split(",") if entry.strip()]


def _split_names(text):
    return tuple(entry.partition("=")[0].strip() for entry in _split_entries(text))


def _split_sources(text):
    """{split: source} for the `name=source` entries of --splits."""
    pairs = (entry.partition("=") for entry in _split_entries(text))
    return {name.strip(): source.strip() for name, sep, source in pairs if sep}


def _splits_are_valid(text):
    pairs = [entry.partition("=") for entry in _split_entries(text)]
    return bool(pairs) and all(name.strip() and (not sep or source.strip()) for name, sep, source in pairs)


def define_flags(flag_values):
    """Defines the converter's flags on ``flag_values`` (a fresh :class:`absl.flags.FlagValues`); returns it."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_multi_string("dataset_dir", None,
                              "a VOC root (Annotations/, JPEGImages/, ImageSets/Main/), a COCO root (annotations/"
                              "instances_<split>.json and <split>/ image folders, Roboflow's <split>/_annotations."
                              "coco.json, or a *.json beside images/), a YOLO dataset (classes.txt or data.yaml, "
                              "images/ + labels/ or labels beside the images) or a labelImg folder; repeat to merge "
                              "several roots into one dataset (e.g. VOC2007 and VOC2012)", **fv)
    flags.DEFINE_multi_string("annotations", None,
                              "COCO JSON file(s) to convert instead of a --dataset_dir; needs --images_dir. Several "
                              "files: map each split to one with --splits=trainval=a.json,test=b.json", **fv)
    flags.DEFINE_string("images_dir", None,
                        "COCO: the folder the JSON's file_names are relative to (needed with --annotations; with "
                        "--dataset_dir it replaces the folder found from the layout)", **fv)
    flags.DEFINE_enum("format", "auto", formats.FORMATS,
                      "the annotation format of the dataset roots; auto (default) detects it per root and says what "
                      "it found in one line", **fv)
    flags.DEFINE_string("output_dir", None, "where the shards, labels.txt and dataset_info.json go", required=True,
                        **fv)
    flags.DEFINE_string("output_name", "dataset",
                        "shard file prefix and dataset name (pascalvoc_2007, pascalvoc_2012, pascalvoc_0712 for "
                        "the VOC datasets); default dataset", **fv)
    flags.DEFINE_string("splits", "trainval,test",
                        "comma-separated split names: VOC ImageSets/Main/<split>.txt files, YOLO split folders "
                        "(images/<split> or data.yaml's train/val/test), or for folders without split files and a "
                        "single COCO file one or two names (the last gets --test_fraction); name=source reads the "
                        "split from another source (trainval=train: VOC's ImageSets/Main/train.txt, YOLO's "
                        "images/train; COCO: trainval=instances_train2017.json, a file relative to the dataset dir "
                        "or its annotations/, required for every split when there are several COCO files); default "
                        "trainval,test",
                        **fv)
    flags.register_validator("splits", _splits_are_valid,
                             message="--splits: give at least one split name, as name or name=source", **fv)
    flags.DEFINE_string("label_map", None,
                        "labels.txt (`id:name` or one name per line) fixing class names and ids (COCO categories and "
                        "YOLO names are matched by name); default: the dataset's own class list (COCO categories in "
                        "category-id order, YOLO classes.txt / data.yaml in index order, ids 1..K), else the class "
                        "names found in the data, sorted, ids from 1", **fv)
    flags.DEFINE_enum("unknown_class", "skip", converter.UNKNOWN_CLASS_POLICIES,
                      "objects whose class is not in --label_map: skip them (reported) or stop with an error before "
                      "writing; default skip", **fv)
    flags.DEFINE_float("test_fraction", 0.2,
                       "sources without split files or folders (labelImg folders, one COCO file, YOLO without "
                       "split folders): share of images put in the last split; default 0.2", **fv)
    flags.DEFINE_integer("split_seed", 0, "seed of that split; default 0", **fv)
    flags.DEFINE_integer("shuffle_seed", 0, "seed of the order of images across shards", **fv)
    flags.DEFINE_integer("num_shards", 0,
                         f"shards per split; 0 (default): one per {converter.IMAGES_PER_SHARD} images", **fv)
    cores = os.cpu_count() or 1
    flags.DEFINE_integer("num_workers", cores, f"worker processes; default: the number of CPU cores ({cores})", **fv)
    flags.DEFINE_bool("keep_incomplete_images", False,
                      "keep JPEGs whose scan data ends early (the decoder fills the rest with grey), with a warning "
                      "in the report, instead of skipping them", **fv)
    flags.DEFINE_bool("strict", False,
                      "exit with status 1 if any image or object was skipped (the output is still written)", **fv)
    return flag_values


OPTION_RULES = {
    "test_fraction": command_line.unit_interval(),
    "split_seed": command_line.non_negative_int(), "shuffle_seed": command_line.non_negative_int(),
    "num_shards": command_line.non_negative_int(), "num_workers": command_line.positive_int(),
}


def _check_sources(args):
    """The input flags go together: a dataset dir, or COCO files with their image folder."""
    if args.annotations:
        if args.dataset_dir:
            raise command_line.UsageError("give either --dataset_dir or --annotations (with --images_dir), not both")
        if not args.images_dir:
            raise command_line.UsageError("--annotations needs --images_dir: the folder the JSON's file_names are "
                                          "relative to")
        if args.format not in ("auto", "coco"):
            raise command_line.UsageError(f"--annotations reads COCO JSON files; --format={args.format} cannot apply")
    elif not args.dataset_dir:
        raise command_line.UsageError("give --dataset_dir (a dataset folder), or --annotations=FILE.json with "
                                      "--images_dir=DIR")
    if args.images_dir and args.format not in ("auto", "coco"):
        raise command_line.UsageError(f"--images_dir is for COCO JSON; --format={args.format} finds its own images")
    if args.images_dir and not os.path.isdir(args.images_dir):
        what = "is a file, not a directory" if os.path.exists(args.images_dir) else "does not exist"
        raise command_line.UsageError(f"--images_dir {args.images_dir} {what}")


def main(argv=None):
    args = command_line.parse_flags(define_flags(flags.FlagValues()), argv, __doc__, program="tf_convert_data")
    logging.set_verbosity(logging.INFO)
    try:
        command_line.check_options(args, OPTION_RULES)
        _check_sources(args)
    except command_line.UsageError as error:
        logging.error("%s", error)
        return command_line.EXIT_USAGE
    options = converter.ConversionOptions(
        splits=_split_names(args.splits),
        split_sources=_split_sources(args.splits),
        label_map_path=args.label_map,
        unknown_class=args.unknown_class,
        test_fraction=args.test_fraction,
        split_seed=args.split_seed,
        shuffle_seed=args.shuffle_seed,
        num_shards=args.num_shards,
        num_workers=args.num_workers,
        keep_incomplete_images=args.keep_incomplete_images,
        format="coco" if args.annotations else args.format,
        coco_annotations=tuple(args.annotations or ()),
        images_dir=args.images_dir,
    )
    return command_line.run_command(lambda: _convert(args, options),
                                    [((converter.ConversionError, sources.SourceError), command_line.EXIT_USAGE, None)])


def _convert(args, options):
    dataset_dirs = args.dataset_dir or [args.images_dir]  # --annotations: record file names are relative to the images
    result = converter.convert(dataset_dirs, args.output_dir, args.output_name, options)
    if result.num_images == 0:
        logging.error("no usable images were found; see %s", os.path.join(args.output_dir, "conversion_report.txt"))
        return 1
    if args.strict and result.lost_anything:
        logging.error("--strict: images or objects were skipped; see %s",
                      os.path.join(args.output_dir, "conversion_report.txt"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
