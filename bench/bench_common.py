"""What the benchmarks in bench/ share: the machine line of their JSON output and the data they train on.

Imported by the bench scripts as ``bench_common`` (a script's own folder is first on ``sys.path``).
"""

import os
import pathlib
import platform
import resource
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
BCCD_DIR = REPO_ROOT.parent / "shared" / "data" / "BCCD"


def machine():
    """One line naming this host, its CPUs and TensorFlow's version."""
    import tensorflow as tf

    return f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, TF {tf.__version__}"


def timed_steps(session, step, warmup, steps):
    """Seconds that ``steps`` runs of ``step`` take after ``warmup`` untimed ones."""
    for _ in range(warmup):
        session.run(step)
    start = time.perf_counter()
    for _ in range(steps):
        session.run(step)
    return time.perf_counter() - start


def peak_rss_mib():
    """This process's peak resident memory so far, in MiB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def prepare_dataset(dataset_dir, work_dir):
    """``dataset_dir`` when given; else BCCD (../shared/data/BCCD) converted into ``work_dir``, else the
    built-in sample dataset there. Returns the converted dataset's directory."""
    if dataset_dir:
        return dataset_dir
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import package_guard

    package_guard.ensure_project_packages()
    if (BCCD_DIR / "Annotations").is_dir():
        from datasets import converter

        out = os.path.join(work_dir, "bccd")
        converter.convert([str(BCCD_DIR)], out, "bccd", converter.ConversionOptions(splits=("trainval", "test")),
                          quiet=True)
        return out
    from datasets import sample_data

    return sample_data.ensure_sample_dataset(cache_dir=os.path.join(work_dir, "sample"))
