"""Converts an SSD checkpoint (this project's or SSD-Tensorflow's) to another class count.

    python -m checkpoints.convert_class_count --checkpoint_path=ckpt/voc07 \\
        --output=ckpt/pre_trained/ssd_300_vgg_4_classes.ckpt --num_classes=4 [--reinitialize_heads]

``--num_classes`` counts background (a 3-class dataset: 4). The class heads (``conv_cls``) are
left out, or with ``--reinitialize_heads`` written with fresh values of the new shape; optimizer
slots and ``global_step`` are not copied. After writing, the checkpoint is read back and its
variable count, parameter count and a few names are printed.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

import command_line  # noqa: E402
from checkpoints import class_count  # noqa: E402
from nets import nets_factory  # noqa: E402


PROGRAM = "python -m checkpoints.convert_class_count"


def define_flags(flag_values):
    """Defines the converter's flags on ``flag_values`` (a fresh :class:`absl.flags.FlagValues`); returns it."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("checkpoint_path", None, "SSD checkpoint prefix, or a directory with a 'checkpoint' state file",
                        required=True, **fv)
    flags.DEFINE_string("output", None,
                        "checkpoint prefix to write; the directory's 'checkpoint' file is pointed at it", required=True,
                        **fv)
    flags.DEFINE_integer("num_classes", None,
                         "new class count, background included (labels.txt lines of the converted dataset)",
                         required=True, **fv)
    flags.DEFINE_enum("model_name", "ssd_300_vgg", nets_factory.list_networks(),
                      "the network the checkpoint belongs to (default: ssd_300_vgg)", **fv)
    flags.DEFINE_string("model_scope", None, "the network's scope in the checkpoint, if not the network's name", **fv)
    flags.DEFINE_bool("reinitialize_heads", False,
                      "write the class heads with fresh values from the network's initialisers (default: leave them "
                      "out)", **fv)
    flags.DEFINE_integer("seed", 0, "graph seed of the re-initialised heads", **fv)
    return flag_values


def main(argv=None):
    args = command_line.parse_flags(define_flags(flags.FlagValues()), argv, __doc__, program=PROGRAM)
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
