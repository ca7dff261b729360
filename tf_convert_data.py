"""Converts Pascal VOC or labelImg annotations into sharded TFRecords for SSD training.

    python tf_convert_data.py --dataset_dir=VOCdevkit/VOC2007 --output_dir=data/voc07 --output_name=pascalvoc_2007
    python tf_convert_data.py --dataset_dir=VOCdevkit/VOC2007 --dataset_dir=VOCdevkit/VOC2012 \\
        --output_dir=data/voc0712 --output_name=pascalvoc_0712 --splits=trainval
    python tf_convert_data.py --dataset_dir=my_labelimg_folder --output_dir=data/mine --test_fraction=0.2

Writes OUT/<name>_<split>-NNNNN-of-NNNNN.tfrecord, OUT/labels.txt, OUT/dataset_info.json and
OUT/conversion_report.{txt,json}. Exit status: 0 when images were written, 1 when none were
(or, with --strict, when any image or object was skipped), 2 for unusable arguments.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's start-up notes are not this tool's output

import package_guard  # noqa: E402

package_guard.ensure_project_packages()

from absl import flags, logging  # noqa: E402

import command_line  # noqa: E402
from datasets import converter, sources  # noqa: E402


def _split_names(text):
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one split name")
    return tuple(names)


def build_parser():
    parser = argparse.ArgumentParser(prog="tf_convert_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", action="append", required=True,
                        help="a VOC root (Annotations/, JPEGImages/, ImageSets/Main/) or a labelImg folder; "
                             "repeat to merge several roots into one dataset (e.g. VOC2007 and VOC2012)")
    parser.add_argument("--output_dir", required=True, help="where the shards, labels.txt and dataset_info.json go")
    parser.add_argument("--output_name", default="dataset",
                        help="shard file prefix and dataset name (pascalvoc_2007, pascalvoc_2012, pascalvoc_0712 "
                             "for the VOC datasets); default %(default)s")
    parser.add_argument("--splits", type=_split_names, default=("trainval", "test"),
                        help="comma-separated split names: VOC ImageSets/Main/<split>.txt files, or for folders "
                             "without split files one or two names (the last gets --test_fraction); "
                             "default trainval,test")
    parser.add_argument("--label_map", default=None,
                        help="labels.txt (`id:name` or one name per line) fixing class names and ids; default: "
                             "the class names found in the data, sorted, ids from 1")
    parser.add_argument("--unknown_class", choices=converter.UNKNOWN_CLASS_POLICIES, default="skip",
                        help="objects whose class is not in --label_map: skip them (reported) or stop with an "
                             "error before writing; default %(default)s")
    parser.add_argument("--test_fraction", type=float, default=0.2,
                        help="folders without split files: share of images put in the last split; default %(default)s")
    parser.add_argument("--split_seed", type=int, default=0, help="seed of that split; default %(default)s")
    parser.add_argument("--shuffle_seed", type=int, default=0, help="seed of the order of images across shards")
    parser.add_argument("--num_shards", type=int, default=0,
                        help=f"shards per split; 0 (default): one per {converter.IMAGES_PER_SHARD} images")
    parser.add_argument("--num_workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes; default: the number of CPU cores (%(default)s)")
    parser.add_argument("--keep_incomplete_images", action="store_true",
                        help="keep JPEGs whose scan data ends early (the decoder fills the rest with grey), with a "
                             "warning in the report, instead of skipping them")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 if any image or object was skipped (the output is still written)")
    return parser


OPTION_RULES = {
    "test_fraction": command_line.unit_interval(),
    "split_seed": command_line.non_negative_int(), "shuffle_seed": command_line.non_negative_int(),
    "num_shards": command_line.non_negative_int(), "num_workers": command_line.positive_int(),
}


def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # this tool uses argparse; absl logging only needs to know it may log
    logging.set_verbosity(logging.INFO)
    logging.use_absl_handler()
    try:
        command_line.check_options(args, OPTION_RULES)
    except command_line.UsageError as error:
        logging.error("%s", error)
        return command_line.EXIT_USAGE
    options = converter.ConversionOptions(
        splits=args.splits,
        label_map_path=args.label_map,
        unknown_class=args.unknown_class,
        test_fraction=args.test_fraction,
        split_seed=args.split_seed,
        shuffle_seed=args.shuffle_seed,
        num_shards=args.num_shards,
        num_workers=args.num_workers,
        keep_incomplete_images=args.keep_incomplete_images,
    )
    return command_line.run_command(lambda: _convert(args, options),
                                    [((converter.ConversionError, sources.SourceError), command_line.EXIT_USAGE, None)])


def _convert(args, options):
    result = converter.convert(args.dataset_dir, args.output_dir, args.output_name, options)
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
