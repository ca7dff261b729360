"""Is a checkpoint readable, and which checkpoint of a training directory can training resume from.

A checkpoint cut short (a full disk, a kill during the write, a partial copy) or with flipped bytes
fails deep inside ``Saver.restore`` with an error that does not name it (``OutOfRangeError`` at
``save/RestoreV2``, ``IndexError: Read less bytes than requested``, or, from inside a
``managed_session``, ``RuntimeError: generator didn't yield``). So every command reads the checkpoint
it is about to restore from end to end first: the index, then every tensor, which TensorFlow checks
against the checksum stored in the index. That costs one read of the file (seconds for SSD300) and
turns any damage into :class:`CorruptCheckpointError`, which names the checkpoint and what is wrong.

The temporary files of a checkpoint write that never finished are removed at the same time.

A training directory keeps several checkpoints (``--max_to_keep``) for exactly this case:
:func:`recover_train_dir` resumes from the newest readable one. The unreadable newer ones are moved
into ``corrupt_checkpoints/`` inside the directory (kept for inspection, never deleted) and the
``checkpoint`` state file is rewritten to list the good ones, so TensorFlow's Supervisor, which
restores the latest checkpoint the state file names, picks the good one up.
"""

import os

import tensorflow as tf
from absl import logging

from command_line import DamagedFileError, first_line
from tf_compat import tf1

QUARANTINE_DIR = "corrupt_checkpoints"


class CorruptCheckpointError(DamagedFileError):
    """A checkpoint that cannot be read; the message names it and says what to do."""

    def __init__(self, prefix, reason, advice):
        super().__init__(f"checkpoint {prefix} is unreadable ({reason}); {advice}")
        self.prefix = prefix
        self.reason = reason


def _fingerprint(prefix):
    def stat(path):
        if "://" in path:  # gfile's times have whole seconds only; local files have nanoseconds
            info = tf.io.gfile.stat(path)
            return path, info.length, info.mtime_nsec
        info = os.stat(path)
        return path, info.st_size, info.st_mtime_ns, info.st_ino

    return tuple(stat(path) for path in sorted(tf.io.gfile.glob(prefix + ".*")))


# Checkpoints found sound in this process, by their files' names, sizes and times: the start-up
# checks early (to fail before minutes of graph building) and again where it restores.
_SOUND = set()


def checkpoint_problem(prefix):
    """Why the checkpoint at ``prefix`` cannot be restored, or None when every tensor reads back
    with its checksum."""
    if not tf.io.gfile.exists(prefix + ".index"):
        return f"{os.path.basename(prefix)}.index is missing"
    fingerprint = _fingerprint(prefix)
    if fingerprint in _SOUND:
        return None
    problem = _read_everything(prefix)
    if problem is None:
        _SOUND.add(fingerprint)
    return problem


def _read_everything(prefix):
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = sorted(reader.get_variable_to_shape_map())
    except Exception as error:  # noqa: BLE001 - TensorFlow raises OpError, ValueError, IndexError...
        return f"its index cannot be read: {first_line(error)}"
    for name in names:
        try:
            reader.get_tensor(name)
        except Exception as error:  # noqa: BLE001
            return f"tensor {name} cannot be read: {first_line(error)}"
    return None


def verify_checkpoint(prefix, advice="pass another --checkpoint_path"):
    """Raises :class:`CorruptCheckpointError` unless every tensor of ``prefix`` reads back."""
    problem = checkpoint_problem(prefix)
    if problem:
        raise CorruptCheckpointError(prefix, problem, advice)


def listed_checkpoints(train_dir):
    """The checkpoint prefixes the state file of ``train_dir`` lists, newest first (absolute)."""
    state = tf1.train.get_checkpoint_state(train_dir)
    if state is None:
        return []
    ordered = list(state.all_model_checkpoint_paths)
    if state.model_checkpoint_path and state.model_checkpoint_path not in ordered:
        ordered.append(state.model_checkpoint_path)
    prefixes = []
    for path in reversed(ordered):
        prefix = path if os.path.isabs(path) else os.path.join(train_dir, path)
        if prefix not in prefixes:
            prefixes.append(prefix)
    return prefixes


def _quarantine(train_dir, prefix):
    """Moves every file of checkpoint ``prefix`` into ``train_dir/corrupt_checkpoints``; returns that folder."""
    target = os.path.join(train_dir, QUARANTINE_DIR)
    tf.io.gfile.makedirs(target)
    base = os.path.basename(prefix)
    for path in tf.io.gfile.glob(prefix + ".*"):
        name = os.path.basename(path)
        if name.startswith(base + ".") and name[len(base) + 1:].split("-")[0] in ("index", "data", "meta"):
            tf.io.gfile.rename(path, os.path.join(target, name), overwrite=True)
    return target


def remove_partial_writes(train_dir):
    """Deletes the temporary files of checkpoint writes that never finished (TensorFlow writes each
    file as ``<name>.tempstate<number>`` and renames it when complete; a kill or a full disk leaves
    them, hundreds of MB each). Returns how many were removed."""
    partial = tf.io.gfile.glob(os.path.join(train_dir, "*.tempstate*"))
    for path in partial:
        tf.io.gfile.remove(path)
    if partial:
        logging.info("Removed %d temporary file(s) of an interrupted checkpoint write from %s", len(partial),
                     train_dir)
    return len(partial)


def recover_train_dir(train_dir):
    """The checkpoint of ``train_dir`` training will resume from, after moving unreadable newer ones
    aside (each with a warning); None when the directory has no checkpoint.

    Raises:
      CorruptCheckpointError: the directory lists checkpoints and none is readable (nothing is moved).
    """
    if not train_dir or not tf.io.gfile.isdir(train_dir):
        return None
    remove_partial_writes(train_dir)
    listed = listed_checkpoints(train_dir)
    if not listed:
        return None
    bad = []
    for prefix in listed:
        problem = checkpoint_problem(prefix)
        if problem is None:
            break
        bad.append((prefix, problem))
    else:
        details = "; ".join(f"{os.path.basename(p)}: {why}" for p, why in bad)
        raise CorruptCheckpointError(
            train_dir, f"none of its {len(bad)} checkpoint(s) can be read: {details}",
            "restore a backup of the directory, or move its model.ckpt-* files and 'checkpoint' away to start "
            "again from --checkpoint_path")
    good = listed[len(bad):]
    for prefix, problem in bad:
        folder = _quarantine(train_dir, prefix)
        logging.warning("Checkpoint %s is unreadable (%s): moved to %s; resuming from %s instead", prefix, problem,
                        folder, good[0])
    if bad:
        tf1.train.update_checkpoint_state(train_dir, good[0], all_model_checkpoint_paths=list(reversed(good)))
    return good[0]
