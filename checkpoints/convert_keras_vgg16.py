"""Converts Keras' VGG-16 ImageNet weights into a TF-Slim ``vgg_16`` checkpoint for SSD training.

    python -m checkpoints.convert_keras_vgg16 \\
        --keras_weights=vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 \\
        --output=ckpt/pre_trained/vgg_16.ckpt

then train with ``--checkpoint_path=ckpt/pre_trained --checkpoint_model_scope=vgg_16``
(SSD's layers that a vgg_16 checkpoint never has start from their initialisers).
The file with the dense layers (``vgg16_weights_tf_dim_ordering_tf_kernels.h5``) also gives
fc6/fc7/fc8, from which the trainer starts SSD's conv6/conv7 (the paper's reduced layers). After writing, the checkpoint is read back and
its variable count, parameter count and a few names are printed.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags, logging  # noqa: E402

import command_line  # noqa: E402
from checkpoints import keras_vgg16  # noqa: E402

DEFAULT_OUTPUT = os.path.join("ckpt", "pre_trained", "vgg_16.ckpt")


def define_flags(flag_values):
    """Defines the converter's flags on ``flag_values`` (a fresh :class:`absl.flags.FlagValues`); returns it."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("keras_weights", None,
                        "Keras VGG-16 weights file, e.g. vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 (from "
                        "~/.keras/models after keras.applications.VGG16(weights='imagenet'))", required=True, **fv)
    flags.DEFINE_string("output", DEFAULT_OUTPUT,
                        f"checkpoint prefix to write (default: {DEFAULT_OUTPUT}); the directory's 'checkpoint' file "
                        "is pointed at it so the directory works as --checkpoint_path", **fv)
    return flag_values


def main(argv=None):
    args = command_line.parse_flags(define_flags(flags.FlagValues()), argv, __doc__,
                                    program="python -m checkpoints.convert_keras_vgg16")
    logging.info("converting %s -> %s", args.keras_weights, args.output)
    try:
        summary = keras_vgg16.convert(args.keras_weights, args.output)
    except keras_vgg16.KerasWeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary.describe())
    has_fc = f"{keras_vgg16.CHECKPOINT_SCOPE}/fc6/weights" in summary.shapes
    print("includes fc6/fc7: training starts SSD's conv6/conv7 from them, reduced as in the paper" if has_fc
          else "no dense layers in the file: conv6/conv7 will start from their initialisers")
    print(f"train with: --checkpoint_path={os.path.dirname(summary.path)} "
          f"--checkpoint_model_scope={keras_vgg16.CHECKPOINT_SCOPE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
