#!/usr/bin/env python
"""Detects objects in image files with an exported SavedModel or a checkpoint, and draws them.

    python detect.py --saved_model=export/1 images/*.jpg --output_dir=out/
    python detect.py --checkpoint_path=ckpt/fine_tuning images/ --output_dir=out/ --min_score=0.3

Inputs are image files and folders (their images, not recursive unless ``--recursive``).
For each image the output folder gets a copy with the boxes, class names and scores drawn
(Pillow), under the input's file name (PNG inputs stay PNG, the rest become JPEG); all
detections go to ``detections.json`` and ``detections.csv`` (boxes in original image
pixels: ymin, xmin, ymax, xmax). With a checkpoint the network is rebuilt from the training
directory's configuration and the thresholds are the flags below; a SavedModel has its
thresholds from export. ``--min_score`` filters what is drawn and written in both cases.
"""

import csv
import io
import json
import os
import sys

import package_guard

package_guard.ensure_project_packages()

import command_line  # noqa: E402

from absl import flags, logging  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from evaluation import detectors, progress as progress_lib, ssd_eval  # noqa: E402
from preprocessing import ssd_vgg_preprocessing  # noqa: E402
from preprocessing import visualization  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
JSON_FILE = "detections.json"
CSV_FILE = "detections.csv"
CSV_FIELDS = ("file", "class_id", "class_name", "score", "ymin", "xmin", "ymax", "xmax")


INPUTS = command_line.Positional("inputs", "Image files and/or folders of images.", at_least=1)
MODEL_FLAGS = ("saved_model", "checkpoint_path")
_CHECKPOINT_ONLY = "Checkpoint only (a SavedModel keeps its export settings)."


def _one_model(values):
    """--saved_model or --checkpoint_path, exactly one (argparse's required mutually exclusive group)."""
    if values["saved_model"] is not None and values["checkpoint_path"] is not None:
        raise flags.ValidationError("--checkpoint_path: not allowed with --saved_model")
    if values["saved_model"] is None and values["checkpoint_path"] is None:
        raise flags.ValidationError("one of the flags --saved_model --checkpoint_path is required")
    return True


def define_flags(flag_values):
    """Defines the detection flags on ``flag_values`` (a fresh :class:`absl.flags.FlagValues`); returns it.
    The image files and folders are the plain arguments (:data:`INPUTS`)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("saved_model", None, "A SavedModel folder written by export_ssd_network.py.", **fv)
    flags.DEFINE_string("checkpoint_path", None,
                        "A training directory (its latest checkpoint) or a checkpoint prefix.", **fv)
    flags.register_multi_flags_validator(MODEL_FLAGS, _one_model, **fv)
    flags.DEFINE_string("output_dir", None, "Where the drawn images, detections.json and detections.csv go.",
                        required=True, **fv)
    flags.DEFINE_float("min_score", 0.5, "Keep (draw, write) detections with at least this score.", **fv)
    flags.DEFINE_integer("batch_size", 8, "Images per run of the model.", **fv)
    flags.DEFINE_bool("recursive", False, "Also take images in sub-folders of folder inputs.", **fv)
    flags.DEFINE_bool("no_images", False, "Write only the JSON and CSV, no drawn images.", **fv)
    flags.DEFINE_float("progress_every_secs", 10.0, "Progress line (rate, ETA) this often.", **fv)
    flags.DEFINE_string("model_name", None, f"Network; default: the training config's. {_CHECKPOINT_ONLY}", **fv)
    flags.DEFINE_string("image_size", None,
                        f"Network input 'S' or 'H,W'; default: the training config's. {_CHECKPOINT_ONLY}", **fv)
    flags.DEFINE_enum("resize_mode", "warp", ssd_vgg_preprocessing.RESIZE_MODES,
                      f"Input resizing. {_CHECKPOINT_ONLY}", **fv)
    flags.DEFINE_float("select_threshold", ssd_eval.DEFAULT_SELECT_THRESHOLD,
                       f"Minimum class score. {_CHECKPOINT_ONLY}", **fv)
    flags.DEFINE_float("nms_threshold", ssd_eval.DEFAULT_NMS_THRESHOLD, f"Per-class NMS IoU. {_CHECKPOINT_ONLY}",
                       **fv)
    flags.DEFINE_integer("top_k", ssd_eval.DEFAULT_TOP_K, f"Candidates per class before NMS. {_CHECKPOINT_ONLY}",
                         **fv)
    flags.DEFINE_integer("keep_top_k", ssd_eval.DEFAULT_KEEP_TOP_K,
                         f"Detections per image after NMS. {_CHECKPOINT_ONLY}", **fv)
    flags.DEFINE_bool("no_moving_averages", False, f"Use the raw weights, not the EMA. {_CHECKPOINT_ONLY}", **fv)
    return flag_values


def list_images(inputs, recursive=False):
    """Image files named by ``inputs`` (files kept as given; folders expanded, sorted)."""
    files = []
    for path in inputs:
        if os.path.isdir(path):
            found = []
            for root, dirs, names in os.walk(path):
                dirs.sort()
                found += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
                if not recursive:
                    break
            if not found:
                logging.warning("%s: no images (%s) in this folder", path, ", ".join(IMAGE_EXTENSIONS))
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files


def read_image_bytes(path):
    """The file's bytes when Pillow can read it as an image, else None (with a warning naming the file)."""
    with open(path, "rb") as stream:
        data = stream.read()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.format not in ("JPEG", "PNG", "BMP", "GIF"):
                raise ValueError(f"format {image.format} is not one TensorFlow decodes (JPEG, PNG, BMP, GIF)")
    except Exception as err:  # noqa: BLE001  (Pillow raises many kinds for broken files)
        logging.warning("Skipping %s: not a readable image (%s)", path, err)
        return None
    return data


def image_detections(values, index, min_score):
    """The detections of image ``index`` in a detector's output, as dicts, scores >= min_score."""
    out = []
    for k in range(int(values["num_detections"][index])):
        score = float(values["scores"][index][k])
        if score < min_score:
            continue
        ymin, xmin, ymax, xmax = (float(v) for v in values["boxes"][index][k])
        out.append({"class_id": int(values["classes"][index][k]), "class_name": str(values["class_names"][index][k]),
                    "score": score, "box": {"ymin": ymin, "xmin": xmin, "ymax": ymax, "xmax": xmax}})
    return out


def draw_detections(image, detections):
    """A copy of the PIL image (RGB) with each detection's box and 'name score' drawn (the evaluator's
    pictures draw with the same function and colours)."""
    image = image.convert("RGB")
    draw = ImageDraw.Draw(image)
    font = visualization.label_font(image.height)
    line_width = max(1, round(min(image.size) / 200))
    for detection in detections:
        box = detection["box"]
        visualization.draw_labelled_box(
            draw, image.size, (box["xmin"], box["ymin"], box["xmax"], box["ymax"]),
            visualization.class_colour(detection["class_id"]),
            f"{detection['class_name']} {detection['score']:.2f}", font, line_width=line_width)
    return image


def _output_name(path, used):
    stem, extension = os.path.splitext(os.path.basename(path))
    extension = ".png" if extension.lower() == ".png" else ".jpg"
    name, number = stem + extension, 1
    while name in used:
        number += 1
        name = f"{stem}_{number}{extension}"
    used.add(name)
    return name


def open_detector(opts):
    if opts.saved_model:
        return detectors.saved_model_detector(opts.saved_model)
    post = ssd_eval.PostProcessing(opts.select_threshold, opts.nms_threshold, opts.top_k, opts.keep_top_k)
    return detectors.checkpoint_detector(
        opts.checkpoint_path, post=post, resize_mode=opts.resize_mode, model_name=opts.model_name,
        image_size=opts.image_size, use_moving_averages=not opts.no_moving_averages)


OPTION_RULES = {
    "min_score": command_line.unit_interval(), "batch_size": command_line.positive_int(),
    "progress_every_secs": command_line.positive(), **ssd_eval.POST_PROCESSING_RULES,
}


def validate_options(opts):
    """Raises command_line.UsageError naming every flag with a value detection cannot use."""
    command_line.check_options(opts, OPTION_RULES, [command_line.image_size_problem(opts.image_size)])


def detect(opts):
    """Runs detection as ``opts`` say; returns the list written to detections.json. The model is
    loaded before ``--output_dir`` is created, so a bad model leaves nothing behind."""
    validate_options(opts)
    files = list_images(opts.inputs, opts.recursive)
    if not files:
        raise FileNotFoundError(f"no images in {opts.inputs}")
    results, used_names = [], set()
    with open_detector(opts) as detector:
        os.makedirs(opts.output_dir, exist_ok=True)
        logging.info("Detecting with %s on %d images", detector.description, len(files))
        progress = progress_lib.Progress("detect", len(files), opts.progress_every_secs)
        for start in range(0, len(files), opts.batch_size):
            batch_files = files[start:start + opts.batch_size]
            readable = [(path, data) for path in batch_files for data in [read_image_bytes(path)] if data is not None]
            if readable:
                values = detector.detect([data for _, data in readable])
                for index, (path, data) in enumerate(readable):
                    height, width = (int(v) for v in values["image_shape"][index])
                    entry = {"file": path, "height": height, "width": width,
                             "detections": image_detections(values, index, opts.min_score)}
                    if not opts.no_images:
                        entry["output"] = _output_name(path, used_names)
                        with Image.open(io.BytesIO(data)) as image:
                            draw_detections(image, entry["detections"]).save(
                                os.path.join(opts.output_dir, entry["output"]))
                    results.append(entry)
            progress.update(len(batch_files))
        progress.finish()
    write_results(opts.output_dir, results)
    count = sum(len(entry["detections"]) for entry in results)
    logging.info("%d detections (score >= %.2f) in %d images written to %s", count, opts.min_score, len(results),
                 opts.output_dir)
    return results


def write_results(output_dir, results):
    with open(os.path.join(output_dir, JSON_FILE), "w", encoding="utf-8") as stream:
        json.dump(results, stream, indent=1)
    with open(os.path.join(output_dir, CSV_FILE), "w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(CSV_FIELDS)
        for entry in results:
            for d in entry["detections"]:
                box = d["box"]
                writer.writerow([entry["file"], d["class_id"], d["class_name"], f"{d['score']:.6f}",
                                 f"{box['ymin']:.3f}", f"{box['xmin']:.3f}", f"{box['ymax']:.3f}",
                                 f"{box['xmax']:.3f}"])


def main(argv=None):
    return command_line.run_graph_command(define_flags(flags.FlagValues()), argv, __doc__, detect, positional=INPUTS)


if __name__ == "__main__":
    sys.exit(main())
