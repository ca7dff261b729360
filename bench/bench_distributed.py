"""Training throughput of 1 ps + 2 workers on loopback against 1 worker with 2 CPU clones, same global batch.

    python bench/bench_distributed.py [--modes=async,sync] [--image_size=300] [--batch_size=4] \\
        [--steps=30] [--warmup_steps=5] [--repeats=3] [--dataset_dir=DIR]

What it measures: the overhead of TensorFlow's distributed runtime (gRPC between processes,
variables on a ps task, SyncReplicasOptimizer's accumulators and tokens) on ONE host, not scaling:
both setups share the same cores. Every configuration trains ``batch_size`` images per tower:

* ``one_machine``: ``train_ssd_network.py --num_clones=2 --clone_on_cpu`` (global batch 2 x B per step);
* ``cluster_sync``: 1 ps + 2 workers, ``--sync_replicas`` (each global step averages 2 x B images);
* ``cluster_async``: 1 ps + 2 workers, asynchronous (each global step applies one worker's B images).

Rates come from the trainer's own per-step log lines (``global step N``, log_every_n_steps=1) of
the chief: global steps per second between the first step after ``warmup_steps`` and the last,
and images/s = steps/s x images per global step. Each configuration runs ``repeats`` times from
scratch; one JSON line per configuration (median, min) and one per cluster mode with the ratio of
median images/s, cluster over one machine (> 1: the cluster is faster).
"""

import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from absl import flags  # noqa: E402

import command_line  # noqa: E402
from launch_local_cluster import TRAINER, LocalCluster  # noqa: E402

STEP_LINE = re.compile(r"^I\d{4} (\d\d:\d\d:\d\d\.\d+) .*global step (\d+): loss", re.MULTILINE)
RUN_TIMEOUT_SECS = 3600


def machine():
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}"


def steps_per_second(log, warmup_steps):
    """Global steps/s of a trainer log between the first logged step past ``warmup_steps`` and the last."""
    points = []
    for clock, step in STEP_LINE.findall(log):
        seconds = (datetime.datetime.strptime(clock, "%H:%M:%S.%f") - datetime.datetime(1900, 1, 1)).total_seconds()
        if points and seconds < points[-1][1]:
            seconds += 86400  # the run crossed midnight
        points.append((int(step), seconds))
    points = [(step, seconds) for step, seconds in points if step > warmup_steps]
    if len(points) < 2 or points[-1][1] <= points[0][1]:
        raise RuntimeError(f"too few step lines past warm-up step {warmup_steps} to time ({len(points)}); "
                           "raise --steps")
    return (points[-1][0] - points[0][0]) / (points[-1][1] - points[0][1])


def trainer_args(args, train_dir):
    flags = [f"--train_dir={train_dir}", f"--batch_size={args.batch_size}", f"--image_size={args.image_size}",
             f"--max_number_of_steps={args.warmup_steps + args.steps}", "--log_every_n_steps=1",
             "--checkpoint_path=", "--save_summaries_secs=0", "--save_interval_secs=100000",
             "--summarize_activations=false", "--summarize_variables=false", "--num_summary_images=0",
             f"--augmentation={args.augmentation}", "--validation_split="]  # steps/s of training alone
    if args.dataset_dir:
        flags.append(f"--dataset_dir={args.dataset_dir}")
    return flags


def run_one_machine(args, work_dir):
    command = [sys.executable, TRAINER, *trainer_args(args, os.path.join(work_dir, "train")), "--num_clones=2",
               "--clone_on_cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECS, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"one-machine run failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return steps_per_second(result.stderr, args.warmup_steps)


def run_cluster(args, work_dir, sync):
    flags = trainer_args(args, os.path.join(work_dir, "train")) + (["--sync_replicas"] if sync else [])
    with LocalCluster(1, 2, flags, log_dir=os.path.join(work_dir, "logs")) as local:
        local.start_all()
        codes = local.wait_workers(timeout=RUN_TIMEOUT_SECS)
        chief_log = local.read_log("worker", 0)
        if codes != [0, 0]:
            raise RuntimeError(f"cluster run failed {codes}:\n{chief_log[-3000:]}")
    return steps_per_second(chief_log, args.warmup_steps)


def _modes(text):
    return [m.strip() for m in text.split(",") if m.strip()]


def define_flags(flag_values):
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("modes", "async,sync", "cluster modes to compare: async, sync or both", **fv)
    flags.register_validator("modes", lambda text: bool(_modes(text)) and not set(_modes(text)) - {"async", "sync"},
                             message="--modes must list async and/or sync", **fv)
    flags.DEFINE_integer("image_size", 300, "Network input size.", **fv)
    flags.DEFINE_integer("batch_size", 4, "images per tower (clone or worker)", **fv)
    flags.DEFINE_integer("steps", 30, "timed global steps after the warm-up", **fv)
    flags.DEFINE_integer("warmup_steps", 5, "Global steps before the timing starts.", **fv)
    flags.DEFINE_integer("repeats", 3, "Runs of each configuration, each from scratch.", **fv)
    flags.DEFINE_enum("augmentation", "ssd", ["ssd", "none"], "The trainer's --augmentation.", **fv)
    flags.DEFINE_string("dataset_dir", None, "a converted dataset (default: the sample dataset)", **fv)
    return flag_values


def main(argv=None):
    args = command_line.parse_flags(define_flags(flags.FlagValues()), argv, __doc__)
    modes = _modes(args.modes)

    configs = {"one_machine": (lambda d: run_one_machine(args, d), 2 * args.batch_size)}
    for mode in modes:
        # Images per global step: sync averages both workers' batches, async applies one at a time.
        configs[f"cluster_{mode}"] = ((lambda d, s=(mode == "sync"): run_cluster(args, d, s)),
                                      2 * args.batch_size if mode == "sync" else args.batch_size)
    medians = {}
    for name, (run, images_per_step) in configs.items():
        rates = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix=f"bench_distributed_{name}_") as work_dir:
                rates.append(run(work_dir))
        images = [rate * images_per_step for rate in rates]
        medians[name] = statistics.median(images)
        print(json.dumps({
            "what": "training throughput",
            "config": {"setup": name, "image_size": args.image_size, "batch_per_tower": args.batch_size,
                       "images_per_global_step": images_per_step, "towers": 2, "steps": args.steps,
                       "warmup_steps": args.warmup_steps, "repeats": args.repeats, "augmentation": args.augmentation},
            "value": round(medians[name], 2),
            "unit": "images/s (median)",
            "min": round(min(images), 2),
            "steps_per_sec_median": round(statistics.median(rates), 3),
            "steps_per_sec_min": round(min(rates), 3),
            "machine": machine(),
        }), flush=True)
    for mode in modes:
        print(json.dumps({
            "what": "distributed runtime overhead on one host",
            "config": {"numerator": f"cluster_{mode} (1 ps + 2 workers, loopback)",
                       "denominator": "one_machine (1 worker, 2 CPU clones)", "image_size": args.image_size,
                       "batch_per_tower": args.batch_size},
            "value": round(medians[f"cluster_{mode}"] / medians["one_machine"], 3),
            "unit": "ratio of median images/s",
            "machine": machine(),
        }), flush=True)


if __name__ == "__main__":
    main()
