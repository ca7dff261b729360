"""Checks that a ``vgg_16`` checkpoint really holds the ImageNet VGG-16 weights, RGB-ordered.

A fixed image, drawn from formulas (no files, no random generator), goes through the
VGG-16 convolutional base restored from the checkpoint; the conv5_3 activations' mean,
std, maximum and a few individual values are compared with numbers recorded once from
the shared ImageNet checkpoint (``vgg16_imagenet_conv5_3.json`` beside this module).
Any correct conversion of the Oxford VGG-16 weights (TF-Slim's ``vgg_16.ckpt``, or Keras'
file through :mod:`checkpoints.convert_keras_vgg16`) passes; random weights, a missing
BGR -> RGB flip or a transposed kernel do not.

    python -m checkpoints.vgg16_imagenet_check --checkpoint_path=ckpt/pre_trained/vgg_16.ckpt

Re-recording (only when the image recipe or the reference checkpoint changes on purpose)::

    python -m checkpoints.vgg16_imagenet_check \\
        --checkpoint_path=../shared/weights/vgg_16_imagenet/vgg_16_imagenet_conv.ckpt --record
"""

import hashlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

import command_line  # noqa: E402
from checkpoints.keras_vgg16 import CHECKPOINT_SCOPE, CONV_LAYERS, RGB_MEANS  # noqa: E402
from tf_compat import slim, tf1  # noqa: E402

REFERENCE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vgg16_imagenet_conv5_3.json")
IMAGE_RECIPE = "reference_image v1: 224x224 gradients, rings, disk, square, stripes"
IMAGE_SIZE = 224
RELATIVE_TOLERANCE = 1e-4
NUM_SAMPLED_VALUES = 8


def reference_image(size=IMAGE_SIZE):
    """A [size, size, 3] float32 RGB image in 0..255, the same on every machine."""
    y, x = np.meshgrid(np.linspace(0.0, 1.0, size), np.linspace(0.0, 1.0, size), indexing="ij")
    red = 0.5 + 0.5 * np.sin(2 * np.pi * (1.5 * x + 0.25 * y))
    green = 0.5 + 0.5 * np.cos(2 * np.pi * 14 * np.hypot(x - 0.3, y - 0.7))  # rings
    blue = 1.0 - 0.8 * y
    image = np.stack([red, green, blue], axis=-1)
    disk = np.hypot(x - 0.65, y - 0.35) < 0.18
    image[disk] = (0.9, 0.15, 0.1)
    square = (np.abs(x - 0.25) < 0.12) & (np.abs(y - 0.25) < 0.12)
    image[square] = (0.05, 0.2, 0.85)
    stripes = (y > 0.75) & (np.floor((x + y) * 24) % 2 == 0)
    image[stripes] = (0.95, 0.95, 0.9)
    return (255.0 * image).astype(np.float32)


def vgg16_conv_base(images, scope=CHECKPOINT_SCOPE):
    """VGG-16's 13 conv layers and 5 pools with TF-Slim's names; returns {name: activation}."""
    end_points = {}
    net = images
    with tf1.variable_scope(scope):
        with slim.arg_scope([slim.conv2d], padding="SAME", activation_fn=tf.nn.relu):
            for slim_scope, _, channels_out in CONV_LAYERS.values():
                block, layer = slim_scope.split("/")
                if layer.endswith("_1") and block != "conv1":
                    net = slim.max_pool2d(net, [2, 2], scope=f"pool{int(block[-1]) - 1}")
                with tf1.variable_scope(block):
                    net = slim.conv2d(net, channels_out, [3, 3], scope=layer)
                end_points[f"{scope}/{slim_scope}"] = net
    return end_points


def conv5_3_activations(checkpoint_path, rgb_image):
    """Restores the conv base from checkpoint_path and returns conv5_3 for one RGB 0..255 image."""
    # On the CPU: GPU convolutions may run in TF32, far outside the 1e-4 tolerance.
    with tf.Graph().as_default(), tf.device("/cpu:0"):
        images = tf1.placeholder(tf.float32, [1, None, None, 3])
        end_points = vgg16_conv_base(images - np.asarray(RGB_MEANS, np.float32))
        variables = {variable.op.name: variable for variable in tf1.global_variables()}
        saver = tf1.train.Saver(var_list=variables)
        with tf1.Session() as session:
            saver.restore(session, checkpoint_path)
            return session.run(end_points[f"{CHECKPOINT_SCOPE}/conv5/conv5_3"], {images: rgb_image[None]})[0]


def _spread_sample_indices(activations):
    """The largest activation of each image quadrant, then the largest overall, all distinct."""
    height, width = activations.shape[:2]
    indices = []
    for rows in (slice(0, height // 2), slice(height // 2, height)):
        for cols in (slice(0, width // 2), slice(width // 2, width)):
            h, w, c = np.unravel_index(np.argmax(activations[rows, cols]), activations[rows, cols].shape)
            indices.append([int(h + rows.start), int(w + cols.start), int(c)])
    for flat in np.argsort(activations, axis=None)[::-1]:
        if len(indices) == NUM_SAMPLED_VALUES:
            break
        index = [int(i) for i in np.unravel_index(flat, activations.shape)]
        if index not in indices:
            indices.append(index)
    return indices


def conv5_3_statistics(activations, sample_indices=None):
    """Mean, std, max and values at sample_indices (default: the largest activations)."""
    if sample_indices is None:
        sample_indices = _spread_sample_indices(activations)
    return {
        "shape": list(activations.shape),
        "mean": float(activations.mean(dtype=np.float64)),
        "std": float(activations.std(dtype=np.float64)),
        "max": float(activations.max()),
        "samples": [{"index": list(index), "value": float(activations[tuple(index)])} for index in sample_indices],
    }


def load_reference(path=REFERENCE_FILE):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def compare_with_reference(statistics, reference, rtol=RELATIVE_TOLERANCE):
    """Returns one line per disagreement (empty when the statistics match the reference)."""
    if statistics["shape"] != reference["shape"]:
        return [f"conv5_3 shape {statistics['shape']} != reference {reference['shape']}"]
    # Values far below the spread are compared against the spread, so near-zero ones do not fail on noise.
    floor = rtol * reference["std"]
    problems = []
    for key in ("mean", "std", "max"):
        if abs(statistics[key] - reference[key]) > rtol * abs(reference[key]) + floor:
            problems.append(f"conv5_3 {key} {statistics[key]:.6g} != reference {reference[key]:.6g}")
    for ours, theirs in zip(statistics["samples"], reference["samples"]):
        if abs(ours["value"] - theirs["value"]) > rtol * abs(theirs["value"]) + floor:
            problems.append(f"conv5_3{theirs['index']} {ours['value']:.6g} != reference {theirs['value']:.6g}")
    return problems


def check_checkpoint(checkpoint_path, reference=None):
    """Runs the reference image through checkpoint_path; returns (statistics, problems)."""
    reference = load_reference() if reference is None else reference
    image = reference_image()
    if abs(float(image.mean(dtype=np.float64)) - reference["image_mean"]) > 1e-6 * reference["image_mean"]:
        raise ValueError(f"{REFERENCE_FILE}: recorded for another reference image (mean {reference['image_mean']}, "
                         f"now {image.mean(dtype=np.float64)}); re-record it (see this module's docstring)")
    activations = conv5_3_activations(checkpoint_path, image)
    statistics = conv5_3_statistics(activations, [sample["index"] for sample in reference["samples"]])
    return statistics, compare_with_reference(statistics, reference)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_reference(checkpoint_path, path=REFERENCE_FILE):
    statistics = conv5_3_statistics(conv5_3_activations(checkpoint_path, reference_image()))
    data_file = checkpoint_path + ".data-00000-of-00001"
    reference = {
        "recorded_from": os.path.basename(checkpoint_path),
        "recorded_from_data_sha256": _sha256(data_file) if os.path.isfile(data_file) else None,
        "image": IMAGE_RECIPE,
        "image_mean": float(reference_image().mean(dtype=np.float64)),
        "input": "RGB 0..255 minus means " + str(list(RGB_MEANS)),
        **statistics,
    }
    lines = [f" {json.dumps(key)}: {json.dumps(value)}" for key, value in reference.items() if key != "samples"]
    samples = ",\n".join(f"  {json.dumps(sample)}" for sample in reference["samples"])
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("{\n" + ",\n".join(lines) + ',\n "samples": [\n' + samples + "\n ]\n}\n")
    return reference


def define_flags(flag_values):
    """Defines the check's flags on ``flag_values`` (a fresh :class:`absl.flags.FlagValues`); returns it."""
    flags.DEFINE_string("checkpoint_path", None, "vgg_16 checkpoint prefix (or its directory)", required=True,
                        flag_values=flag_values)
    flags.DEFINE_bool("record", False, f"rewrite {REFERENCE_FILE} from this checkpoint", flag_values=flag_values)
    return flag_values


def main(argv=None):
    args = command_line.parse_flags(define_flags(flags.FlagValues()), argv, __doc__,
                                    program="python -m checkpoints.vgg16_imagenet_check")
    path = args.checkpoint_path
    if os.path.isdir(path):
        path = tf.train.latest_checkpoint(path) or path
    if args.record:
        reference = record_reference(path)
        print(f"recorded conv5_3 mean {reference['mean']:.6g}, std {reference['std']:.6g} to {REFERENCE_FILE}")
        return 0
    statistics, problems = check_checkpoint(path)
    print(f"{path}: conv5_3 mean {statistics['mean']:.6g}, std {statistics['std']:.6g}, max {statistics['max']:.6g}")
    if problems:
        print("NOT the ImageNet VGG-16 weights with RGB input:\n  " + "\n  ".join(problems))
        return 1
    print("matches the ImageNet VGG-16 reference (RGB input)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
