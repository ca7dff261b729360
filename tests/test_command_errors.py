"""Failures a user can meet become one line naming the file or flag, with a distinct exit status.

Each test builds its own bad input: flags out of range, checkpoints cut short or with flipped bytes,
TFRecord shards cut short, an --output_dir that is a file, a label map that is not UTF-8.
"""

import errno
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import command_line
import detect
import eval_ssd_network
import export_ssd_network
import tf_convert_data
from datasets import dataset_factory, sample_data, shard_check
from deployment import checkpoint_integrity
from tf_compat import tf1
from training.config import TrainingConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- option rules


def test_rules_describe_and_allow_literal_values():
    assert command_line.positive_int().describe() == "an integer >= 1"
    assert command_line.unit_interval(low_inclusive=False).describe() == "a number in (0, 1]"
    assert command_line.positive(optional=True).describe() == "a number > 0 (or unset)"
    rule = command_line.positive_int()
    assert [rule.allows(v) for v in (1, 7, 0, -1, 1.5, None, True, float("nan"))] == [
        True, True, False, False, False, False, False, False]
    half_open = command_line.unit_interval(high_inclusive=False)
    assert [half_open.allows(v) for v in (0.0, 0.5, 1.0, float("inf"))] == [True, True, False, False]
    assert command_line.positive(optional=True).allows(None)


def test_every_bad_training_flag_is_named_at_once():
    opts = TrainingConfig(batch_size=0, learning_rate=-1.0, image_size="abc", new_layers_only_epochs=-1.0,
                          zoom_out_max_ratio=0.5, match_threshold=0.5, negative_threshold=0.7)
    with pytest.raises(command_line.UsageError) as caught:
        opts.check()
    message = str(caught.value)
    for expected in ("--batch_size must be an integer >= 1 (or unset), got 0", "--learning_rate must be a number > 0, got -1.0",
                     "--image_size must be 'S' or 'H,W'", "got 'abc'", "--new_layers_only_epochs must be a number >= 0",
                     "--zoom_out_max_ratio must be a number >= 1, got 0.5",
                     "--negative_threshold (0.7) must not exceed --match_threshold (0.5)"):
        assert expected in message, message
    TrainingConfig().check()  # the defaults are valid
    # 0 means something for these: summaries after every step, only the final checkpoint.
    TrainingConfig(save_summaries_secs=0, save_interval_secs=0).check()


def _run(script, *args, cwd=None, env_dir=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if env_dir:
        env["SSD_TOWERS_CACHE"] = str(env_dir)
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, script), *args], capture_output=True,
                            text=True, env=env, timeout=300, cwd=cwd)
    return result.returncode, result.stdout + result.stderr


ABSL_ERROR = re.compile(r"^E\d{4} [\d:.]+ +\d+ [\w.]+\.py:\d+\] ")  # TensorFlow's C++ lines name .cc files


def _error_lines(log):
    return [line for line in log.splitlines() if ABSL_ERROR.match(line)]


@pytest.mark.parametrize("flags, named", [
    (["--batch_size=0"], "--batch_size must be an integer >= 1 (or unset), got 0"),
    (["--batch_size=-1", "--image_size=abc"], "--image_size must be 'S' or 'H,W'"),
])
def test_train_command_with_bad_flags_exits_2_with_one_line(tmp_path, flags, named):
    status, log = _run("train_ssd_network.py", f"--train_dir={tmp_path / 'run'}", *flags, env_dir=tmp_path)
    assert status == command_line.EXIT_USAGE, log[-2000:]
    assert "Traceback" not in log, log[-3000:]
    errors = _error_lines(log)
    assert len(errors) == 1 and named in errors[0], log[-2000:]
    assert not (tmp_path / "run").exists()


def test_eval_export_detect_name_bad_flags(tmp_path, caplog):
    assert eval_ssd_network.main(["--checkpoint_path=x", "--batch_size=0", "--nms_threshold=2"]) == 2
    assert "--batch_size must be an integer >= 1, got 0" in caplog.text
    assert "--nms_threshold must be a number in (0, 1], got 2.0" in caplog.text
    assert export_ssd_network.main(["--checkpoint_path=x", f"--output_dir={tmp_path / 'e'}", "--top_k=0"]) == 2
    assert "--top_k must be an integer >= 1, got 0" in caplog.text
    assert detect.main(["in.jpg", "--checkpoint_path=x", f"--output_dir={tmp_path / 'd'}", "--min_score=1.5",
                        "--image_size=0"]) == 2
    assert "--min_score must be a number in [0, 1], got 1.5" in caplog.text
    assert "--image_size must be 'S' or 'H,W'" in caplog.text
    assert not (tmp_path / "e").exists() and not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------- damaged checkpoints


def _save_checkpoints(directory, steps=(1, 2)):
    """Small checkpoints model.ckpt-<step> in ``directory`` (a saver's state file lists them all)."""
    with tf.Graph().as_default():
        weights = tf1.get_variable("weights", [300, 100], initializer=tf1.random_normal_initializer(seed=1))
        step = tf1.train.get_or_create_global_step()
        saver = tf1.train.Saver(max_to_keep=10)
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            prefixes = []
            for value in steps:
                session.run(step.assign(value))
                prefixes.append(saver.save(session, os.path.join(str(directory), "model.ckpt"), global_step=value))
            return prefixes, session.run(weights)


def _cut(path, keep=0.5):
    data = open(path, "rb").read()
    with open(path, "wb") as stream:
        stream.write(data[:int(len(data) * keep)])


def _flip(path, offset=100):
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0xFF
    with open(path, "wb") as stream:
        stream.write(bytes(data))


@pytest.mark.parametrize("damage", ["cut data", "flipped byte", "cut index"])
def test_verify_checkpoint_names_the_damage(tmp_path, damage):
    [prefix], _ = _save_checkpoints(tmp_path, steps=(5,))
    assert checkpoint_integrity.checkpoint_problem(prefix) is None
    if damage == "cut data":
        _cut(prefix + ".data-00000-of-00001")
    elif damage == "flipped byte":
        _flip(prefix + ".data-00000-of-00001")
    else:
        _cut(prefix + ".index")
    with pytest.raises(checkpoint_integrity.CorruptCheckpointError, match="model.ckpt-5 is unreadable") as caught:
        checkpoint_integrity.verify_checkpoint(prefix)
    assert ("index" in str(caught.value)) == (damage == "cut index")
    assert command_line.describe_failure(caught.value)[0] == command_line.EXIT_DAMAGED


def test_recovery_resumes_from_the_newest_readable_checkpoint_and_keeps_the_bad_one(tmp_path):
    prefixes, _ = _save_checkpoints(tmp_path, steps=(1, 2, 3))
    _cut(prefixes[2] + ".data-00000-of-00001")
    _flip(prefixes[1] + ".data-00000-of-00001")
    assert checkpoint_integrity.recover_train_dir(str(tmp_path)) == prefixes[0]
    assert tf.train.latest_checkpoint(str(tmp_path)) == prefixes[0]
    moved = sorted(os.listdir(tmp_path / checkpoint_integrity.QUARANTINE_DIR))
    assert moved == sorted(f"model.ckpt-{s}.{kind}" for s in (2, 3) for kind in ("data-00000-of-00001", "index", "meta"))
    # A second start finds a sound directory and changes nothing.
    assert checkpoint_integrity.recover_train_dir(str(tmp_path)) == prefixes[0]


def test_recovery_with_no_readable_checkpoint_is_an_error_that_moves_nothing(tmp_path):
    prefixes, _ = _save_checkpoints(tmp_path, steps=(1, 2))
    for prefix in prefixes:
        _cut(prefix + ".data-00000-of-00001")
    with pytest.raises(checkpoint_integrity.CorruptCheckpointError, match="none of its 2 checkpoint"):
        checkpoint_integrity.recover_train_dir(str(tmp_path))
    assert not (tmp_path / checkpoint_integrity.QUARANTINE_DIR).exists()
    assert tf.train.latest_checkpoint(str(tmp_path)) == prefixes[1]


def test_a_damaged_checkpoint_is_named_by_eval_detect_and_export_and_export_leaves_nothing(tmp_path, caplog):
    [prefix], _ = _save_checkpoints(tmp_path / "train", steps=(7,))
    _cut(prefix + ".data-00000-of-00001")
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(image)
    for status in (
        eval_ssd_network.main([f"--checkpoint_path={tmp_path / 'train'}"]),
        detect.main([str(image), f"--checkpoint_path={prefix}", f"--output_dir={tmp_path / 'detections'}"]),
        export_ssd_network.main([f"--checkpoint_path={tmp_path / 'train'}", f"--output_dir={tmp_path / 'export'}"]),
    ):
        assert status == command_line.EXIT_DAMAGED
    assert caplog.text.count(f"checkpoint {prefix} is unreadable") == 3, caplog.text
    assert not (tmp_path / "export").exists() and not (tmp_path / "detections").exists()
    assert [p for p in os.listdir(tmp_path) if "partial" in p] == []


def test_train_names_a_damaged_checkpoint_path(tmp_path, sample_dataset_dir):
    [prefix], _ = _save_checkpoints(tmp_path / "pretrained", steps=(1,))
    _cut(prefix + ".data-00000-of-00001")
    status, log = _run("train_ssd_network.py", f"--train_dir={tmp_path / 'run'}", f"--checkpoint_path={prefix}",
                       f"--dataset_dir={sample_dataset_dir}", "--image_size=96", "--batch_size=2",
                       "--max_number_of_steps=1", env_dir=tmp_path)
    assert status == command_line.EXIT_DAMAGED, log[-3000:]
    assert "Traceback" not in log and f"checkpoint {prefix} is unreadable" in log, log[-3000:]


# ----------------------------------------------------------------------------- damaged shards


def test_crc32c_matches_the_standard_check_value():
    assert shard_check.crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue's check value


def _write_records(path, count=6):
    payloads = [bytes([i]) * (50 + 10 * i) for i in range(count)]
    with tf.io.TFRecordWriter(str(path)) as writer:
        for payload in payloads:
            writer.write(payload)
    return payloads


def test_scan_counts_the_complete_records_of_a_shard_cut_anywhere(tmp_path):
    path = tmp_path / "s.tfrecord"
    payloads = _write_records(path)
    size = path.stat().st_size
    assert shard_check.scan_shard(str(path)) == shard_check.ShardScan(str(path), 6, size, None)
    ends = np.cumsum([16 + len(p) for p in payloads])
    whole = path.read_bytes()
    for cut in range(1, size):
        path.write_bytes(whole[:cut])
        scan = shard_check.scan_shard(str(path))
        assert scan.records == int(np.sum(ends <= cut)), cut
        assert (scan.problem is None) == (cut in ends), cut
    second = int(ends[0])  # where the second record's length starts
    path.write_bytes(whole[:second] + bytes([whole[second] ^ 1]) + whole[second + 1:])
    scan = shard_check.scan_shard(str(path))
    assert scan.records == 1 and "damaged header" in scan.problem


def _examples_read(spec, is_training):
    with tf.Graph().as_default():
        dataset = dataset_factory.build_dataset(spec, is_training=is_training, seed=0, num_readers=2, repeat=1)
        next_example = tf1.data.make_one_shot_iterator(dataset).get_next()
        names = []
        with tf1.Session() as session:
            while True:
                try:
                    names.append(session.run(next_example["filename"]))
                except tf.errors.OutOfRangeError:
                    return sorted(names)


def test_training_and_evaluation_read_the_sound_records_of_a_cut_shard(tmp_path, caplog):
    root = sample_data.generate_voc_sample(str(tmp_path / "voc"), num_images=12, image_size=48, seed=3)
    from datasets import converter

    out = tmp_path / "data"
    converter.convert([root], str(out), "s", converter.ConversionOptions(splits=("trainval",), num_shards=2))
    spec = dataset_factory.get_dataset(None, "trainval", str(out))
    whole = _examples_read(spec, is_training=False)
    assert len(whole) == spec.num_samples
    shard = spec.files[1]
    complete = shard_check.scan_shard(shard).records
    data = open(shard, "rb").read()
    with open(shard, "wb") as stream:
        stream.write(data[:len(data) - 100])
    for is_training in (False, True):
        read = _examples_read(spec, is_training)
        assert len(read) == spec.num_samples - 1 and set(read) < set(whole), (is_training, complete)
    assert f"Damaged shard {shard}: cut short at byte {len(data) - 100}" in caplog.text
    assert f"reading {spec.num_samples - 1} of its {spec.num_samples} images" in caplog.text
    assert shard_check.main([f"--dataset_dir={out}"]) == command_line.EXIT_DAMAGED


# ----------------------------------------------------------------------------- the converter's own inputs


def test_converter_names_an_output_dir_that_is_a_file_and_a_label_map_that_is_not_utf8(tmp_path, caplog):
    root = sample_data.generate_voc_sample(str(tmp_path / "voc"), num_images=4, image_size=48, seed=1)
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    assert tf_convert_data.main([f"--dataset_dir={root}", f"--output_dir={a_file}", "--num_workers=1"]) == 2
    assert f"--output_dir {a_file} is a file, not a directory" in caplog.text
    assert tf_convert_data.main([f"--dataset_dir={root}", f"--output_dir={a_file / 'sub'}", "--num_workers=1"]) == 2
    assert f"{a_file} is a file, not a directory" in caplog.text
    labels = tmp_path / "labels.txt"
    labels.write_bytes("circle\nsquare\ntri\xe4ngle\n".encode("latin-1"))
    assert tf_convert_data.main([f"--dataset_dir={root}", f"--output_dir={tmp_path / 'out'}", "--num_workers=1",
                                 f"--label_map={labels}"]) == 2
    assert f"{labels}, line 3: not UTF-8 text" in caplog.text
    assert tf_convert_data.main([f"--dataset_dir={root}", f"--output_dir={tmp_path / 'o2'}", "--num_workers=0"]) == 2
    assert "--num_workers must be an integer >= 1, got 0" in caplog.text
    assert "Traceback" not in caplog.text


def test_converter_names_an_output_dir_it_cannot_write(tmp_path, caplog, monkeypatch):
    # The tests may run as root, whom permissions do not stop: the check itself is what is tested here.
    root = sample_data.generate_voc_sample(str(tmp_path / "voc"), num_images=4, image_size=48, seed=1)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(tmp_path) else real_access(path, mode))
    assert tf_convert_data.main([f"--dataset_dir={root}", f"--output_dir={tmp_path / 'out'}", "--num_workers=1"]) == 2
    assert f"{tmp_path} is not writable (permission denied)" in caplog.text
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the common mapping


def test_failures_map_to_one_line_and_a_status_per_family():
    describe = command_line.describe_failure
    full = OSError(errno.ENOSPC, "No space left on device", "/data/out/s-00001.tfrecord")
    assert describe(full) == (command_line.EXIT_OS, "/data/out/s-00001.tfrecord: No space left on device "
                                                    "(free some space or choose a directory on another disk)")
    assert describe(PermissionError(errno.EACCES, "Permission denied", "/ro"))[0] == command_line.EXIT_OS
    assert describe(FileNotFoundError(errno.ENOENT, "No such file or directory", "x.ckpt"))[0] == command_line.EXIT_USAGE
    assert describe(tf.errors.DataLossError(None, None, "truncated record at 114494\nmore"))[1] == \
        "damaged data: truncated record at 114494"
    assert describe(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating"))[0] == command_line.EXIT_TENSORFLOW
    assert describe(tf.errors.UnknownError(None, None, "x.ckpt; No space left on device"))[0] == command_line.EXIT_OS
    try:
        b"caf\xe9".decode("utf-8")
    except UnicodeDecodeError as error:
        assert describe(error)[0] == command_line.EXIT_USAGE
    session_error = tf.errors.InvalidArgumentError(None, None, "Graph execution error:\n\n===\nbad input at 3\nmore")
    assert command_line.first_line(session_error) == "bad input at 3"
    flush = RuntimeError("/run/events.out.tfevents.1; No space left on device\n\tFailed to flush 5 events")
    assert describe(flush) == (command_line.EXIT_OS, "/run/events.out.tfevents.1; No space left on device "
                                                     "(free some space or choose a directory on another disk)")
    assert describe(RuntimeError("a bug")) is None  # keeps its traceback
    assert command_line.run_command(lambda: 0.25) == 0  # a command's work may return what it made
    with pytest.raises(RuntimeError):
        command_line.run_command(lambda: (_ for _ in ()).throw(RuntimeError("a bug")))


def test_the_coordinator_s_error_log_is_one_line_while_a_command_runs(caplog):
    import logging

    def work():
        try:
            raise tf.errors.UnknownError(None, None, "Graph execution error:\n\nNode: 'save/SaveV2'\nx; disk gone\n")
        except tf.errors.UnknownError as error:
            logging.getLogger("tensorflow").error("Error reported to Coordinator: %s", str(error),
                                                  exc_info=(type(error), error, error.__traceback__))
        return 0

    with caplog.at_level(logging.INFO, logger="tensorflow"):
        assert command_line.run_command(work) == 0
    [record] = [r for r in caplog.records if r.name == "tensorflow"]
    assert record.getMessage() == "Error reported to Coordinator: x; disk gone" and record.exc_info is None
    assert "Traceback" not in caplog.text
