"""Converts an SSD checkpoint (this project's or SSD-Tensorflow's) to another class count.

    python -m checkpoints.convert_class_count --checkpoint_path=ckpt/voc07 \\
        --output=ckpt/pre_trained/ssd_300_vgg_4_classes.ckpt --num_classes=4 [--reinitialize_heads]

``--num_classes`` counts background (a 3-class dataset: 4). The class heads (``conv_cls``) are
left out, or with ``--reinitialize_heads`` written with fresh values of the new shape; optimizer
slots and ``global_step`` are not copied. After writing, the checkpoint is read back and its
variable count, parameter count and a few names are printed.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from checkpoints import class_count  # noqa: E402
from nets import nets_factory  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m checkpoints.convert_class_count",
        description="SSD checkpoint -> starting checkpoint for another class count (class heads dropped or "
                    "re-initialised; optimizer slots and global_step left out).",
    )
    parser.add_argument("--checkpoint_path", required=True,
                        help="SSD checkpoint prefix, or a directory with a 'checkpoint' state file")
    parser.add_argument("--output", required=True,
                        help="checkpoint prefix to write; the directory's 'checkpoint' file is pointed at it")
    parser.add_argument("--num_classes", required=True, type=int,
                        help="new class count, background included (labels.txt lines of the converted dataset)")
    parser.add_argument("--model_name", default="ssd_300_vgg", choices=nets_factory.list_networks(),
                        help="the network the checkpoint belongs to (default: %(default)s)")
    parser.add_argument("--model_scope", default=None,
                        help="the network's scope in the checkpoint, if not the network's name")
    parser.add_argument("--reinitialize_heads", action="store_true",
                        help="write the class heads with fresh values from the network's initialisers "
                             "(default: leave them out)")
    parser.add_argument("--seed", type=int, default=0, help="graph seed of the re-initialised heads")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        result = class_count.convert_class_count(
            args.checkpoint_path, args.output, args.num_classes, model_name=args.model_name,
            model_scope=args.model_scope, reinitialize_heads=args.reinitialize_heads, seed=args.seed)
    except class_count.ClassCountError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(result.describe())
    # Left-out heads are missing from the checkpoint: the trainer needs to be told to leave them fresh.
    extra = "" if result.reinitialized else " --ignore_missing_vars"
    print(f"train with: --checkpoint_path={os.path.dirname(result.summary.path)}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
