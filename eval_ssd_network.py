#!/usr/bin/env python
"""Evaluates SSD checkpoints on a converted dataset split: VOC07 11-point and VOC area mAP, COCO AP.

    python eval_ssd_network.py --checkpoint_path=ckpt/fine_tuning --dataset_dir=data/voc07 \\
        --dataset_split_name=test                     # the latest checkpoint, once
    python eval_ssd_network.py --checkpoint_path=ckpt/fine_tuning --wait_for_checkpoints \\
        --timeout=3600 --keep_best                    # every new checkpoint while training runs

This command defines and parses the flags; the evaluation itself is :mod:`evaluation.evaluator`
(also what a training run's own validation uses). One pass over the split: evaluation
preprocessing, network, post-processing (decode, per-class NMS) in the graph; the boxes are
mapped back to original image pixels and matched to the ground truth per class on the host
(:class:`evaluation.detection_metrics.DetectionEvaluator`, VOC ``difficult`` boxes ignored). The network (input size, anchors, class names) is rebuilt
from the training directory's ``training_config.json``; flags override it. The dataset
defaults to the one training used. EMA weights are used when the checkpoint has them.

Results: the per-class table on stdout; TensorBoard summaries (per-class AP, mAPs, COCO
numbers, PR curves) in ``--eval_dir`` (default ``<train_dir>/eval_<split>``, next to the
training events); one JSON line per checkpoint appended to ``<eval_dir>/metrics.jsonl``;
with ``--keep_best`` a copy of the best checkpoint so far in ``<eval_dir>/best/``.

With ``--detections_file=PATH`` the detections the metrics scored are also written as a COCO results
file (a JSON list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``, boxes in original
image pixels), to check the numbers with your own pycocotools or submit them to a COCO server
(:mod:`evaluation.coco_results`). For a split converted from COCO JSON, ``image_id`` and
``category_id`` are the JSON's own ids; otherwise ``image_id`` is the record's source_id string (not
loadable by pycocotools, which needs integers, but a per-image dump) and ``category_id`` our class
id. ``{step}`` in PATH is replaced by the checkpoint's global step, so a follower
(``--wait_for_checkpoints``) keeps one file per checkpoint; without it the file holds the last
evaluation. A PATH in a folder that does not exist, or naming a directory, is refused (exit 2)
before anything is evaluated.
"""

import sys

import package_guard

package_guard.ensure_project_packages()

import command_line  # noqa: E402

from absl import flags  # noqa: E402

from datasets import dataset_factory  # noqa: E402
from deployment import devices  # noqa: E402
from evaluation import evaluator, ssd_eval  # noqa: E402
from preprocessing import ssd_vgg_preprocessing  # noqa: E402


def define_flags(flag_values):
    """Defines the evaluation flags on ``flag_values`` (a fresh :class:`absl.flags.FlagValues`); returns it."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("checkpoint_path", None,
                        "A training directory (its latest checkpoint) or a checkpoint prefix.", required=True, **fv)
    flags.DEFINE_bool("wait_for_checkpoints", False,
                      "Follow the training directory --checkpoint_path: evaluate each new checkpoint once.", **fv)
    flags.DEFINE_float("timeout", 3600.0,
                       "With --wait_for_checkpoints: stop after this many seconds without a new checkpoint.", **fv)
    flags.DEFINE_float("eval_interval_secs", 60.0,
                       "With --wait_for_checkpoints: look for a new checkpoint at most this often.", **fv)
    flags.DEFINE_string("eval_dir", None, "Summaries, metrics.jsonl and best/; default <train_dir>/eval_<split>.",
                        **fv)
    flags.DEFINE_string("dataset_dir", None, "A converted dataset; default: the one in the training config, else "
                        "the built-in sample dataset.", **fv)
    flags.DEFINE_string("dataset_name", None, "Expected dataset name; default: what the directory holds.", **fv)
    flags.DEFINE_string("dataset_split_name", "test", "Split to evaluate.", **fv)
    flags.DEFINE_string("model_name", None, "Network; default: the training config's (else ssd_300_vgg).", **fv)
    flags.DEFINE_string("image_size", None, "Network input 'S' or 'H,W'; default: the training config's.", **fv)
    flags.DEFINE_enum("resize_mode", "warp", ssd_vgg_preprocessing.RESIZE_MODES,
                      "warp: stretch to the input size (as in training); pad: keep the aspect ratio.", **fv)
    flags.DEFINE_integer("batch_size", 8, "Images per forward pass.", **fv)
    flags.DEFINE_integer("num_preprocessing_threads", 4, "Parallel parsing and preprocessing.", **fv)
    flags.DEFINE_integer("max_num_images", None, "Evaluate only the first N images of the split.", **fv)
    flags.DEFINE_float("select_threshold", ssd_eval.DEFAULT_SELECT_THRESHOLD, "Minimum class score.", **fv)
    flags.DEFINE_float("nms_threshold", ssd_eval.DEFAULT_NMS_THRESHOLD, "Per-class NMS IoU.", **fv)
    flags.DEFINE_integer("top_k", ssd_eval.DEFAULT_TOP_K, "Candidates per class before NMS.", **fv)
    flags.DEFINE_integer("keep_top_k", ssd_eval.DEFAULT_KEEP_TOP_K, "Detections per image after NMS.", **fv)
    flags.DEFINE_float("matching_iou", 0.5, "IoU above which a detection matches (VOC: 0.5).", **fv)
    flags.DEFINE_enum("voc_box_convention", "devkit", evaluator.VOC_BOX_CONVENTIONS,
                      "devkit: the VOC devkit's pixel-inclusive IoU and areas (a box is xmax - xmin + 1 pixels "
                      "wide), comparable with published VOC numbers; continuous: xmax - xmin.", **fv)
    flags.DEFINE_bool("no_coco", False, "Skip the COCO metrics (pycocotools).", **fv)
    flags.DEFINE_string("detections_file", None,
                        "Also write every scored detection as a COCO results JSON list [{image_id, category_id, "
                        "bbox: [x, y, w, h] in original pixels, score}] to this path (written aside, then renamed). "
                        "image_id: the COCO image id for records converted from COCO JSON, else the record's "
                        "source_id string (pycocotools needs integer ids: meant for COCO-sourced splits); "
                        "category_id: the original COCO category id when dataset_info.json records it, else our "
                        "class id. '{step}' in the path becomes the checkpoint's global step (one file per "
                        "checkpoint with --wait_for_checkpoints); without it each evaluation overwrites the file.",
                        **fv)
    flags.DEFINE_bool("no_moving_averages", False, "Use the raw weights even when the EMA is stored.", **fv)
    flags.DEFINE_bool("keep_best", False, "Copy the best checkpoint so far into <eval_dir>/best/.", **fv)
    flags.DEFINE_enum("best_metric", "voc07_map", evaluator.BEST_METRICS, "What --keep_best compares.", **fv)
    flags.DEFINE_integer("num_visualized_images", 3, "TensorBoard pictures (eval/detections/<i>) of the first N "
                         "images: detections scoring at least 0.5 beside the ground truth (0: none).", **fv)
    flags.DEFINE_float("progress_every_secs", 10.0, "Progress line (rate, ETA) this often.", **fv)
    flags.DEFINE_float("gpu_memory_fraction", devices.DEFAULT_GPU_MEMORY_FRACTION,
                       "Share of each GPU's memory the session may take.", **fv)
    flags.DEFINE_bool("allow_growth", False, "Let GPU memory grow on demand.", **fv)
    return flag_values


def default_options(**overrides):
    """The defaults as a namespace with ``overrides`` (for tests and benchmarks)."""
    return command_line.flag_defaults(define_flags(flags.FlagValues()), overrides, "evaluation options")


def main(argv=None):
    return command_line.run_graph_command(define_flags(flags.FlagValues()), argv, __doc__, evaluator.evaluate,
                                          [(dataset_factory.DatasetError, command_line.EXIT_USAGE, None)])


if __name__ == "__main__":
    sys.exit(main())
