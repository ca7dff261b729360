"""Conversion throughput (images/s) of tf_convert_data on BCCD with 1 and 2 worker processes.

    python bench/bench_convert.py [--dataset_dir=../shared/data/BCCD] [--workers=1,2] [--repeats=5]

Each repeat converts trainval and test into a fresh temporary folder (the files are copied, not
re-encoded: the work is XML parsing, image header and integrity checks and TFRecord writes).
Prints one JSON object per worker count: min and median images/s over the repeats.
"""

import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import package_guard  # noqa: E402

package_guard.ensure_project_packages()

from absl import flags, logging  # noqa: E402

import command_line  # noqa: E402
from datasets import converter  # noqa: E402

DEFAULT_DATASET = os.path.join(package_guard.PROJECT_ROOT, "..", "shared", "data", "BCCD")


def machine():
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}"


def convert_once(dataset_dir, workers):
    output_dir = tempfile.mkdtemp(prefix="bench_convert_")
    try:
        start = time.perf_counter()
        result = converter.convert([dataset_dir], output_dir, "bench",
                                   converter.ConversionOptions(num_workers=workers))
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    return result.num_images, seconds


def define_flags(flag_values):
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("dataset_dir", DEFAULT_DATASET, "A VOC-layout dataset to convert.", **fv)
    flags.DEFINE_string("workers", "1,2", "comma-separated worker counts", **fv)
    flags.DEFINE_integer("repeats", 5, "Conversions per worker count.", **fv)
    return flag_values


def main(argv=None):
    args = command_line.parse_flags(define_flags(flags.FlagValues()), argv, __doc__)
    logging.set_verbosity(logging.ERROR)  # BCCD's two degenerate boxes would be reported on every repeat
    dataset_dir = os.path.abspath(args.dataset_dir)
    if not os.path.isdir(dataset_dir):
        sys.exit(f"bench_convert: dataset {dataset_dir} not found")
    convert_once(dataset_dir, 1)  # warm the page cache so every configuration reads from memory
    for workers in [int(w) for w in args.workers.split(",")]:
        rates, num_images = [], 0
        for _ in range(args.repeats):
            num_images, seconds = convert_once(dataset_dir, workers)
            rates.append(num_images / seconds)
        print(json.dumps({
            "what": "tf_convert_data throughput",
            "config": {"dataset": os.path.basename(dataset_dir), "images": num_images, "workers": workers,
                       "repeats": args.repeats},
            "value": round(statistics.median(rates), 1),
            "unit": "images/s (median)",
            "min": round(min(rates), 1),
            "machine": machine(),
        }), flush=True)


if __name__ == "__main__":
    main()
