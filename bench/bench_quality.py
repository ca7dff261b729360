"""Quality benchmark: detection accuracy against training time on a real VOC-layout dataset.

Converts the dataset, trains SSD300 from an ImageNet VGG-16 checkpoint with the trainer's defaults
(the documented recipe; extra trainer flags after ``--``) for ``--train_minutes``, keeping a
checkpoint every ``--eval_every_minutes``, then evaluates every checkpoint on the test split with
the evaluator's own code (``eval_ssd_network``). Training runs alone; evaluation runs after it, so
the minutes on the curve are training minutes on an otherwise idle machine.

Prints one JSON object per evaluated checkpoint (step, minutes since the training command started,
images seen, VOC07 mAP and VOC area mAP in the devkit's convention, COCO AP and AP50, per-class
VOC07 AP) and a final summary (best VOC07 mAP and when it was reached). The trainer's log, the
checkpoints and the evaluator's summaries stay in ``--work_dir``::

    python bench/bench_quality.py --voc_dir ../shared/data/BCCD --work_dir /tmp/bccd_quality \\
        --train_minutes 120 --eval_every_minutes 10
    python bench/bench_quality.py --work_dir /tmp/bccd_quality --evaluate_only   # re-read a run
    python bench/bench_quality.py ... -- --learning_rate=0.0005            # another recipe
"""

import glob
import json
import os
import platform
import re
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import package_guard  # noqa: E402

package_guard.ensure_project_packages()

from absl import flags, logging  # noqa: E402

import command_line  # noqa: E402

DEFAULT_VOC_DIR = os.path.join(REPO_ROOT, os.pardir, "shared", "data", "BCCD")
DEFAULT_CHECKPOINT = os.path.join(REPO_ROOT, os.pardir, "shared", "weights", "vgg_16_imagenet",
                                  "vgg_16_imagenet_conv.ckpt")
RUN_RECORD = "bench_quality_run.json"
CHECKPOINT_STEP = re.compile(r"model\.ckpt-(\d+)\.index$")


def machine():
    import tensorflow as tf

    return f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, TF {tf.__version__}"


def convert(voc_dir, data_dir, name):
    from datasets import converter, dataset_factory

    if os.path.exists(os.path.join(data_dir, dataset_factory.DATASET_INFO)):
        return data_dir
    converter.convert([voc_dir], data_dir, name, converter.ConversionOptions(splits=("trainval", "test")),
                      quiet=True)
    return data_dir


def train(args, data_dir, train_dir, extra_flags):
    """Runs the trainer alone for ``--train_minutes``; records its command and start time."""
    command = [
        sys.executable, os.path.join(REPO_ROOT, "train_ssd_network.py"), f"--train_dir={train_dir}",
        f"--dataset_dir={data_dir}", f"--checkpoint_path={args.checkpoint_path}", "--checkpoint_model_scope=vgg_16",
        f"--max_train_minutes={args.train_minutes}", f"--save_interval_secs={int(args.eval_every_minutes * 60)}",
        # Training alone, as measured before in-run validation existed: the evaluation runs afterwards.
        "--max_to_keep=100000", "--validation_split=", *extra_flags,
    ]
    log_path = os.path.join(args.work_dir, "train.log")
    start = time.time()
    with open(os.path.join(args.work_dir, RUN_RECORD), "w", encoding="utf-8") as stream:
        json.dump({"command": command, "start_time": start, "train_minutes": args.train_minutes}, stream, indent=2)
    logging.info("Training for %.0f minutes (log: %s): %s", args.train_minutes, log_path, " ".join(command))
    with open(log_path, "w", encoding="utf-8") as log:
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT).returncode
    if status != 0:
        raise SystemExit(f"the trainer exited with status {status}; see {log_path}")
    return start


def checkpoints_in_order(train_dir):
    found = []
    for index in glob.glob(os.path.join(train_dir, "model.ckpt-*.index")):
        match = CHECKPOINT_STEP.search(index)
        if match:
            found.append((int(match.group(1)), index[: -len(".index")], os.path.getmtime(index)))
    return sorted(found)


def earlier_records(metrics_path):
    """{checkpoint prefix: metrics record} already in the evaluator's metrics.jsonl (re-reading a run
    evaluates only its new checkpoints)."""
    records = {}
    if os.path.exists(metrics_path):
        with open(metrics_path, encoding="utf-8") as stream:
            for line in stream:
                record = json.loads(line)
                if record.get("checkpoint_path") and "voc_box_convention" in record:
                    records[record["checkpoint_path"]] = record
    return records


def evaluate_all(args, data_dir, train_dir, start_time):
    """Evaluates every checkpoint of the run in step order; yields one result dict each."""
    import tensorflow as tf

    import eval_ssd_network
    from evaluation import evaluator, ssd_eval
    from tf_compat import tf1
    from training.config import TrainingRecord

    tf1.disable_eager_execution()
    checkpoints = checkpoints_in_order(train_dir)
    if not checkpoints:
        raise SystemExit(f"no checkpoint in {train_dir}")
    record = TrainingRecord.read(train_dir) or TrainingRecord()
    images_per_step = record.config.images_per_clone_step
    opts = eval_ssd_network.default_options(checkpoint_path=train_dir, dataset_dir=data_dir,
                                            dataset_split_name=args.split)
    source = ssd_eval.load_model_source(checkpoints[-1][1])
    evaluation = evaluator.Evaluation(opts, source)
    eval_dir = evaluator.default_eval_dir(opts, source)
    tf.io.gfile.makedirs(eval_dir)
    done = earlier_records(os.path.join(eval_dir, evaluator.METRICS_FILE))
    writer = tf1.summary.FileWriter(eval_dir)
    try:
        for step, prefix, saved_at in checkpoints:
            record = done.get(prefix) or evaluator.evaluate_checkpoint(
                evaluation, prefix, eval_dir, writer, opts, train_dir, out=sys.stderr)
            yield {
                "what": "quality",
                "step": step,
                "minutes": round((saved_at - start_time) / 60.0, 2),
                "images_seen": step * images_per_step,
                "voc07_map": record["voc07_map"],
                "voc_area_map": record["voc_area_map"],
                "coco_ap": record.get("coco_ap"),
                "coco_ap50": record.get("coco_ap50"),
                "voc_box_convention": record["voc_box_convention"],
                "per_class_voc07_ap": {name: entry["voc07_ap"] for name, entry in record["per_class"].items()},
            }
    finally:
        writer.close()


TRAINER_FLAGS = command_line.Positional("trainer_flags", "Extra train_ssd_network.py flags, after '--'.")


def define_flags(flag_values):
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("voc_dir", DEFAULT_VOC_DIR, "VOC-layout dataset with trainval and test splits.", **fv)
    flags.DEFINE_string("dataset_name", "bccd", "Name of the converted dataset.", **fv)
    flags.DEFINE_string("checkpoint_path", DEFAULT_CHECKPOINT, "ImageNet VGG-16 (TF-Slim vgg_16).", **fv)
    flags.DEFINE_string("work_dir", None, "Converted data, checkpoints, logs, evaluations.", required=True, **fv)
    flags.DEFINE_float("train_minutes", 120.0, "Training time.", **fv)
    flags.DEFINE_float("eval_every_minutes", 10.0, "A checkpoint (evaluated afterwards) this often.", **fv)
    flags.register_multi_flags_validator(
        ["train_minutes", "eval_every_minutes"], lambda v: v["train_minutes"] > 0 and v["eval_every_minutes"] > 0,
        message="--train_minutes and --eval_every_minutes must be > 0", **fv)
    flags.DEFINE_string("split", "test", "Split to evaluate on.", **fv)
    flags.DEFINE_bool("evaluate_only", False,
                      "Evaluate the checkpoints of an earlier run in --work_dir (no conversion, no training).", **fv)
    return flag_values


def main(argv=None):
    args = command_line.parse_flags(define_flags(flags.FlagValues()), argv, __doc__, positional=TRAINER_FLAGS)
    logging.set_verbosity(logging.INFO)

    os.makedirs(args.work_dir, exist_ok=True)
    data_dir = os.path.join(args.work_dir, "data")
    train_dir = os.path.join(args.work_dir, "train")
    if args.evaluate_only:
        with open(os.path.join(args.work_dir, RUN_RECORD), encoding="utf-8") as stream:
            run = json.load(stream)
        start, command = run["start_time"], run["command"]
    else:
        if not os.path.isdir(args.voc_dir):
            raise SystemExit(f"--voc_dir {args.voc_dir} does not exist")
        if not os.path.exists(args.checkpoint_path + ".index"):
            raise SystemExit(f"--checkpoint_path {args.checkpoint_path}: no such checkpoint (.index missing)")
        if os.path.exists(train_dir):
            raise SystemExit(f"{train_dir} exists: use another --work_dir, or --evaluate_only to read that run")
        convert(args.voc_dir, data_dir, args.dataset_name)
        start = train(args, data_dir, train_dir, args.trainer_flags)
        with open(os.path.join(args.work_dir, RUN_RECORD), encoding="utf-8") as stream:
            command = json.load(stream)["command"]

    results = []
    for result in evaluate_all(args, data_dir, train_dir, start):
        results.append(result)
        print(json.dumps(result), flush=True)
    best = max(results, key=lambda r: r["voc07_map"] if r["voc07_map"] is not None else -1.0)
    last = results[-1]
    print(json.dumps({
        "what": "quality_summary", "dataset": args.dataset_name, "split": args.split,
        "best_voc07_map": best["voc07_map"], "best_at_minutes": best["minutes"], "best_at_step": best["step"],
        "final_voc07_map": last["voc07_map"], "final_voc_area_map": last["voc_area_map"],
        "final_coco_ap": last["coco_ap"], "final_coco_ap50": last["coco_ap50"], "final_step": last["step"],
        "final_minutes": last["minutes"],
        "images_per_second": round(last["images_seen"] / max(60.0 * last["minutes"], 1e-9), 3),
        "voc_box_convention": last["voc_box_convention"], "trainer_command": " ".join(command[1:]),
        "machine": machine(),
    }), flush=True)


if __name__ == "__main__":
    main()
