"""kill -9 at seeded random moments of training (during a step, a checkpoint write, a summary write),
then the same command again: it resumes from the newest readable checkpoint, global step continuing.
"""

import glob
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from deployment import checkpoint_integrity

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_LINE = re.compile(r"global step (\d+): loss = ")
KILL_POINTS = 3  # every kind of moment once, in a seeded order (each restart costs a TensorFlow start-up)
KINDS = ("step", "checkpoint", "summary")
WAIT_SECS = 240


def _command(train_dir, dataset_dir):
    return [sys.executable, os.path.join(REPO_ROOT, "train_ssd_network.py"), f"--train_dir={train_dir}",
            f"--dataset_dir={dataset_dir}", "--image_size=96", "--batch_size=2", "--num_readers=1",
            "--num_preprocessing_threads=1", "--num_summary_images=1", "--log_every_n_steps=1",
            "--save_summaries_secs=1", "--save_interval_secs=2", "--max_to_keep=3", "--max_number_of_steps=100000"]


def _expected_resume_step(train_dir):
    """The global step of the newest checkpoint a restart can read (0 when there is none)."""
    for prefix in checkpoint_integrity.listed_checkpoints(train_dir):
        if checkpoint_integrity.checkpoint_problem(prefix) is None:
            return int(tf.train.load_checkpoint(prefix).get_tensor("global_step"))
    return 0


def _partial_checkpoint_files(train_dir):
    return glob.glob(os.path.join(train_dir, "*tempstate*"))


def _events_size(train_dir):
    return sum(os.path.getsize(p) for p in glob.glob(os.path.join(train_dir, "events.out.tfevents.*")))


def _newest_listed_step(train_dir):
    listed = checkpoint_integrity.listed_checkpoints(train_dir)
    return int(listed[0].rsplit("-", 1)[1]) if listed else -1


def _run_until(command, log_path, moment, rng, train_dir, resumed_from):
    """Starts training; kills it with SIGKILL at ``moment``; returns the steps it logged."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=train_dir,
                                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    deadline = time.monotonic() + WAIT_SECS
    try:
        def steps():
            with open(log_path) as stream:
                return [int(s) for s in STEP_LINE.findall(stream.read())]

        while not steps():
            assert process.poll() is None, open(log_path).read()[-3000:]
            assert time.monotonic() < deadline, "no training step within the time limit"
            time.sleep(0.05)
        if moment == "step":
            # Once this run has saved progress of its own, so that the restart has something new to resume.
            while _newest_listed_step(train_dir) <= resumed_from:
                assert time.monotonic() < deadline, "no checkpoint saved within the time limit"
                assert process.poll() is None, open(log_path).read()[-3000:]
                time.sleep(0.05)
            time.sleep(rng.uniform(0.2, 3.0))
        else:
            settle = time.monotonic() + rng.uniform(0.0, 2.0)  # not always the first write
            baseline = _events_size(train_dir)
            while True:
                assert time.monotonic() < deadline, f"no {moment} write seen within the time limit"
                assert process.poll() is None, open(log_path).read()[-3000:]
                if moment == "checkpoint" and _partial_checkpoint_files(train_dir) and time.monotonic() > settle:
                    break
                if moment == "summary" and time.monotonic() > settle and _events_size(train_dir) > baseline:
                    break
                time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        return steps()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_kill_9_at_random_moments_then_the_same_command_resumes(tmp_path, sample_dataset_dir):
    rng = np.random.default_rng(20261129)
    train_dir = str(tmp_path / "run")
    os.makedirs(train_dir)
    command = _command(train_dir, sample_dataset_dir)
    moments = [KINDS[i] for i in rng.permutation(len(KINDS))]  # every kind once, then seeded choices
    moments += [str(kind) for kind in rng.choice(KINDS, KILL_POINTS - len(KINDS))]
    history = []
    for index, moment in enumerate(moments):
        expected = _expected_resume_step(train_dir)
        logged = _run_until(command, str(tmp_path / f"run{index}.log"), moment, rng, train_dir, expected)
        assert logged[0] == expected + 1, (moment, expected, logged[:5], open(tmp_path / f"run{index}.log").read()[-3000:])
        history.append((moment, expected, logged[-1]))
    # The last restart runs to a fixed step and ends cleanly.
    expected = _expected_resume_step(train_dir)
    final = expected + 3
    result = subprocess.run(command[:-1] + [f"--max_number_of_steps={final}"], capture_output=True, text=True,
                            timeout=WAIT_SECS, cwd=train_dir, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert [int(s) for s in STEP_LINE.findall(log)] == list(range(expected + 1, final + 1)), log[-3000:]
    latest = tf.train.latest_checkpoint(train_dir)
    assert latest.endswith(f"-{final}") and checkpoint_integrity.checkpoint_problem(latest) is None
    assert not _partial_checkpoint_files(train_dir), "partial checkpoint writes are cleaned at start-up"
    assert {moment for moment, _, _ in history} == set(KINDS), history
    resumed = [expected for _, expected, _ in history] + [expected]
    assert resumed == sorted(resumed) and resumed[-1] > 0, f"training did not move on between kills: {history}"
    print("kill points (moment, resumed from, last step logged):", history)
