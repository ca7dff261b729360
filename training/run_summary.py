"""What a training run did, said once at its end: one log line and ``<train_dir>/run_summary.json``.

The trainer's chief calls :func:`summarize` and :func:`write` after ``slim.learning.train`` returns,
and also when it is interrupted or fails (then the reason is the exception's one-line description):

* ``first_global_step``, ``last_global_step``: the first and the last global step this run trained
  (``steps`` of them; a resumed run starts after its checkpoint's step);
* ``first_epoch``, ``last_epoch``: the same in epochs of the training split (at the global batch);
* ``wall_seconds`` from the start of the first step to the end, ``images_per_second`` over it;
* ``stop_reason``: the step function's ``stop_reason`` (a time limit, validation's early stop...),
  else the run's end (``--max_number_of_steps``/``--num_epochs``), an interruption or a failure;
* ``best``: from ``<train_dir>/best/best.json`` as validation wrote it, when it exists: its
  ``global_step``, ``metric``, the metric's value and ``checkpoint_path`` (the per-class details stay
  in best.json).
"""

import json
import os
import time

import tensorflow as tf

import command_line
from evaluation import evaluator

SUMMARY_FILE = "run_summary.json"


def stop_reason_of(step_reason, error, last_global_step, last_step, end_flag):
    """Why the run stopped, in words: ``error`` (an exception ending the run) first, then ``step_reason``
    (the step function's), then the end of the run (``end_flag`` names the flag that set ``last_step``)."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    if error is not None:
        return f"failed: {type(error).__name__}: {command_line.first_line(error)}"
    if step_reason:
        return step_reason
    if last_step is not None and last_global_step is not None and last_global_step >= last_step:
        return f"reached {end_flag} (global step {last_step})"
    return "stopped before its end (no step limit reached)"


def read_best(train_dir):
    """From ``<train_dir>/best/best.json`` (:func:`evaluation.evaluator.read_best_record`): its global step,
    metric name and value and checkpoint path, or None when there is none or it cannot be read."""
    best = evaluator.read_best_record(os.path.join(train_dir, evaluator.BEST_DIR))
    if best is None:
        return None
    return {key: best[key] for key in ("global_step", "metric", best.get("metric"), "checkpoint_path")
            if key in best}


def summarize(train_dir, start_global_step, last_global_step, started_at, images_per_step, steps_per_epoch,
              stop_reason, ended_at=None):
    """The run's summary as a JSON-ready dict. ``start_global_step``: the global step before the run's first
    step (None when no step ran); ``started_at``: ``time.time()`` when that step started."""
    ended_at = time.time() if ended_at is None else ended_at
    steps = 0 if start_global_step is None or last_global_step is None else last_global_step - start_global_step
    wall_seconds = 0.0 if started_at is None else max(ended_at - started_at, 0.0)

    def epoch(step):
        return None if step is None or not steps_per_epoch else round(step / steps_per_epoch, 4)

    first = None if not steps else start_global_step + 1
    last = last_global_step if steps else None
    return {
        "first_global_step": first,
        "last_global_step": last,
        "steps": steps,
        "first_epoch": epoch(start_global_step if steps else None),
        "last_epoch": epoch(last),
        "wall_seconds": round(wall_seconds, 1),
        "images_per_second": round(steps * images_per_step / wall_seconds, 3) if steps and wall_seconds else None,
        "stop_reason": stop_reason,
        "best": read_best(train_dir),
    }


def summary_line(summary):
    """The summary in one log line."""
    if summary["steps"]:
        text = (f"Run summary: global steps {summary['first_global_step']}..{summary['last_global_step']} "
                f"({summary['steps']} steps")
        if summary["last_epoch"] is not None:
            text += f", epoch {summary['first_epoch']:.2f} to {summary['last_epoch']:.2f}"
        text += f") in {summary['wall_seconds'] / 60.0:.1f} min"
        if summary["images_per_second"]:
            text += f", {summary['images_per_second']:.3g} images/s"
    else:
        text = "Run summary: no step trained"
    text += f"; stopped: {summary['stop_reason']}"
    best = summary["best"]
    if best:
        metric = best.get("metric", "metric")
        text += f"; best {metric} {best.get(metric, best.get('value'))} at global step {best.get('global_step')}"
    return text


def write(train_dir, summary):
    """Writes ``<train_dir>/run_summary.json`` (replacing a previous run's); returns its path."""
    tf.io.gfile.makedirs(train_dir)
    path = os.path.join(train_dir, SUMMARY_FILE)
    with tf.io.gfile.GFile(path + ".tmp", "w") as stream:
        stream.write(json.dumps(summary, indent=2, sort_keys=True, default=str))
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
    return path
