"""A disk that fills up during a conversion or a checkpoint write: a clear message (exit status 5) and
the previous output intact. The small disk is a tmpfs mounted for the test (skipped where mounting is
not allowed)."""

import os
import subprocess
import sys

import pytest
import tensorflow as tf

import command_line
import tf_convert_data
from datasets import dataset_factory, sample_data
from deployment import checkpoint_integrity

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a folder on a fresh tmpfs of that size; unmounted after the test."""
    mounted = []

    def mount(size):
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_a_conversion_that_fills_the_disk_keeps_the_previous_dataset(tmp_path, small_disk, caplog):
    disk = small_disk("300k")
    small = sample_data.generate_voc_sample(str(tmp_path / "small"), num_images=4, image_size=48, seed=1)
    large = sample_data.generate_voc_sample(str(tmp_path / "large"), num_images=60, image_size=128, seed=2)
    out = disk / "data"
    assert tf_convert_data.main([f"--dataset_dir={small}", f"--output_dir={out}", "--num_workers=1"]) == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    status = tf_convert_data.main([f"--dataset_dir={large}", f"--output_dir={out}", "--num_workers=1"])
    assert status == command_line.EXIT_OS
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "No space left on device" in errors[0] and str(out) in errors[0], errors
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before  # no temporary folder left
    assert dataset_factory.get_dataset(None, "trainval", str(out)).num_samples == 3


def _checkpoint_files(prefix):
    return {path: open(path, "rb").read() for path in sorted(tf.io.gfile.glob(prefix + ".*"))
            if "tempstate" not in path}


def _used_bytes(folder):
    stats = os.statvfs(folder)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


@pytest.mark.slow
def test_a_checkpoint_write_that_fills_the_disk_stops_with_a_message_and_keeps_the_last_checkpoint(
        tmp_path, small_disk, sample_dataset_dir):
    disk = small_disk("1g")
    train_dir = disk / "run"
    command = [sys.executable, os.path.join(REPO_ROOT, "train_ssd_network.py"), f"--train_dir={train_dir}",
               f"--dataset_dir={sample_dataset_dir}", "--image_size=96", "--batch_size=2", "--num_readers=1",
               "--num_preprocessing_threads=1", "--num_summary_images=0", "--summarize_activations=false",
               "--summarize_variables=false", "--optimizer=sgd", "--learning_rate=0.001", "--log_every_n_steps=1",
               "--save_interval_secs=3", "--max_to_keep=5"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    first = subprocess.run(command + ["--max_number_of_steps=2"], capture_output=True, text=True, timeout=600,
                           cwd=str(tmp_path), env=env)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    kept = tf.train.latest_checkpoint(str(train_dir))
    kept_bytes = _checkpoint_files(kept)
    one_checkpoint = sum(len(data) for data in kept_bytes.values())
    # Shrink the disk so that the next checkpoint write runs out of space half-way.
    subprocess.run(["mount", "-o", f"remount,size={_used_bytes(disk) + one_checkpoint // 2}", str(disk)], check=True)
    second = subprocess.run(command + ["--max_number_of_steps=100000"], capture_output=True, text=True,
                            timeout=600, cwd=str(tmp_path), env=env)
    log = second.stdout + second.stderr
    assert second.returncode == command_line.EXIT_OS, log[-3000:]
    # One line for the command's failure (TensorFlow's writer thread, failing too, gets one of its own).
    errors = [line for line in log.splitlines() if "command_line.py" in line and line.startswith("E")]
    assert errors and "No space left on device (free some space" in errors[-1], log[-3000:]
    assert str(train_dir) in errors[-1], errors
    assert "Traceback" not in log, log[-3000:]
    assert tf.train.latest_checkpoint(str(train_dir)) == kept
    assert _checkpoint_files(kept) == kept_bytes  # the interrupted write's temporary files aside
    assert checkpoint_integrity.checkpoint_problem(kept) is None
