"""Input-pipeline throughput of SSD training: read + parse + decode + augment [+ encode] + batch.

Measures the trainer's own pipeline (``training.graph.build_input_dataset``) on BCCD
converted to TFRecords (in a temporary folder, or ``--dataset_dir``), for each
``--parallel_calls`` value and with anchor matching in the pipeline (``encode_targets_in=input``,
the trainer's default) and without it (``tower``: matching then runs in the towers). Prints one
JSON object per configuration: images/s min and median over ``--repeats`` fresh graphs.

    python bench/bench_input_pipeline.py [--batch_size 32 --num_batches 20 --repeats 3]
"""

import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import package_guard  # noqa: E402

package_guard.ensure_project_packages()

import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

import command_line  # noqa: E402
from datasets import converter, dataset_factory  # noqa: E402
from tf_compat import tf1  # noqa: E402
from training import graph as graph_lib  # noqa: E402
from training.config import TrainingConfig  # noqa: E402

BCCD_DIR = REPO_ROOT.parent / "shared" / "data" / "BCCD"


def images_per_second(spec, model_name, parallel_calls, encode_targets_in, batch_size, num_batches, warmup_batches):
    opts = TrainingConfig(
        model_name=model_name, batch_size=batch_size, num_readers=2, num_preprocessing_threads=parallel_calls,
        encode_targets_in=encode_targets_in)
    with tf.Graph().as_default():
        net = graph_lib.build_network(opts, spec.num_classes)
        dataset = graph_lib.build_input_dataset(opts, spec, net, opts.seed)
        batch = tf1.data.make_one_shot_iterator(dataset).get_next()
        # One small fetch per batch: every op of the batch still runs, without large host copies.
        fetch = batch["labels"]
        with tf1.Session() as session:
            for _ in range(warmup_batches):
                session.run(fetch)
            start = time.perf_counter()
            for _ in range(num_batches):
                session.run(fetch)
            return batch_size * num_batches / (time.perf_counter() - start)


def define_flags(flag_values):
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("dataset_dir", None, "a converted dataset (default: BCCD, converted here)", **fv)
    flags.DEFINE_string("model_name", "ssd_300_vgg", "Network.", **fv)
    flags.DEFINE_string("parallel_calls", "1,2", "comma-separated num_preprocessing_threads values", **fv)
    flags.DEFINE_string("encode_targets_in", "input,tower", "comma-separated encode_targets_in values", **fv)
    flags.DEFINE_integer("batch_size", 32, "Images per batch.", **fv)
    flags.DEFINE_integer("num_batches", 20, "Timed batches per repeat.", **fv)
    flags.DEFINE_integer("warmup_batches", 2, "Batches before the timing starts.", **fv)
    flags.DEFINE_integer("repeats", 3, "Fresh graphs per configuration.", **fv)
    return flag_values


def main(argv=None):
    args = command_line.parse_flags(define_flags(flags.FlagValues()), argv, __doc__)
    tf1.disable_eager_execution()

    with tempfile.TemporaryDirectory() as work_dir:
        dataset_dir = args.dataset_dir
        if not dataset_dir:
            if not (BCCD_DIR / "Annotations").is_dir():
                raise SystemExit(f"BCCD not found at {BCCD_DIR}: pass --dataset_dir=<a converted dataset>")
            dataset_dir = os.path.join(work_dir, "bccd")
            converter.convert([str(BCCD_DIR)], dataset_dir, "bccd",
                              converter.ConversionOptions(splits=("trainval", "test")), quiet=True)
        spec = dataset_factory.get_dataset(None, "trainval", dataset_dir)
        for encode_targets_in in args.encode_targets_in.split(","):
            for parallel_calls in (int(v) for v in args.parallel_calls.split(",")):
                rates = [images_per_second(spec, args.model_name, parallel_calls, encode_targets_in, args.batch_size,
                                           args.num_batches, args.warmup_batches) for _ in range(args.repeats)]
                stages = "read+parse+decode+augment" + ("+encode" if encode_targets_in == "input" else "") + "+batch"
                print(json.dumps({
                    "what": f"input pipeline throughput ({stages})",
                    "config": {"network": args.model_name, "num_parallel_calls": parallel_calls,
                               "encode_targets_in": encode_targets_in, "batch_size": args.batch_size,
                               "num_batches": args.num_batches, "repeats": args.repeats,
                               "data": f"{spec.name}/{spec.split_name} ({spec.num_samples} images)"},
                    "value": round(statistics.median(rates), 1), "unit": "images/s (median)",
                    "min": round(min(rates), 1),
                    "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, TF {tf.__version__}",
                }), flush=True)


if __name__ == "__main__":
    main()
