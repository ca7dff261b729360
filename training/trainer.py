"""Runs a training: from a :class:`training.config.TrainingConfig` to ``slim.learning.train``.

:func:`train` follows these steps, in this order:

1. :func:`training.machines.machines_for`: this machine, or this task of a cluster (a ps task serves
   and never trains); it holds the :class:`deployment.model_deploy.DeploymentConfig` and the session
   configuration, and checks the deployment fits the machine.
2. The dataset, the training directory's recovery (a checkpoint cut short is quarantined), the step
   to resume from and the :class:`training.plan.TrainingPlan` (what trains when).
3. :func:`training.graph.build_training_graph`: input pipeline, towers, train op.
4. ``training_config.json`` (:class:`training.config.TrainingRecord`), the init_fn (resume >
   ``--checkpoint_path`` > scratch, :mod:`deployment.checkpoint_init`), the saver and the step
   function (logging, summaries, the NaN guard, the phase switch: :mod:`deployment.train_op`) with
   the chief's validation (best checkpoint, early stopping: :mod:`training.validation`) after each step.
5. ``slim.learning.train``, then (the chief, also when the run is interrupted or fails) the run's
   summary: one line and ``run_summary.json`` (:mod:`training.run_summary`).
"""

import contextlib

from absl import logging
import tensorflow as tf

from deployment import checkpoint_init, checkpoint_integrity, devices, learning_rate as lr_lib, train_op as train_op_lib
from nets import anchor_coverage
from tf_compat import slim, tf1
from training import graph as graph_lib, machines as machines_lib, plan as plan_lib, run_summary
from training import validation as validation_lib
from training.config import DatasetRecord, TrainingRecord

# Images of the training split the start-up's anchor coverage line reads (a few seconds).
ANCHOR_COVERAGE_IMAGES = 1000


def train(config):
    """Runs training as ``config`` says; returns the final total loss (a ps task serves until killed)."""
    config = plan_lib.resolve_precision(plan_lib.resolve_batch_size(config.check()))
    machine = machines_lib.machines_for(config)
    if machine.serves_only:
        return machine.serve()
    deploy_config = machine.deploy_config
    if not devices.available_gpus() and config.batch_size * config.num_clones >= 16:
        logging.warning("No GPU: on a CPU one step of %s at batch %d takes tens of seconds (and many GB of memory); "
                        "--batch_size and --image_size make it faster.", config.model_name,
                        config.batch_size * config.num_clones)
    spec = plan_lib.resolve_dataset(config)
    if machine.is_chief:
        # A newest checkpoint cut short (a kill or a full disk during its write) must not end the run;
        # a damaged --checkpoint_path is named now, not after minutes of graph building.
        if not checkpoint_integrity.recover_train_dir(config.train_dir) and config.checkpoint_path:
            start_from = checkpoint_init.resolve_checkpoint(config.checkpoint_path)
            if start_from:
                checkpoint_integrity.verify_checkpoint(start_from, "pass another --checkpoint_path")
    data_seed = plan_lib.data_seed_for(config.seed, plan_lib.starting_global_step(config.train_dir))
    images_per_step = config.batch_size * deploy_config.num_clones * graph_lib.batches_per_step(config, deploy_config)
    network = graph_lib.build_network(config, spec.num_classes)
    training_plan = plan_lib.resolve_training_plan(config, network.name, spec.num_samples, images_per_step)
    last_step = plan_lib.last_global_step(config, spec.num_samples, images_per_step)
    # Only the chief validates (once, not per tower): the best weights and the stop are the run's.
    validation_plan = (validation_lib.plan_validation(config, spec, images_per_step, last_step)
                       if machine.is_chief else None)
    if machine.is_chief:
        logging.info("%s", anchor_coverage.coverage_report(
            network, spec, config.match_threshold, config.negative_threshold,
            max_images=ANCHOR_COVERAGE_IMAGES).summary_line())

    with tf.Graph().as_default():
        parts = graph_lib.build_training_graph(config, spec, deploy_config, data_seed, training_plan.frozen_scopes,
                                               training_plan.new_layers_only_steps, training_plan.first_phase_scopes)
        record = TrainingRecord(
            config=config, network={k: (list(v) if isinstance(v, tuple) else v)
                                    for k, v in parts.net.params._asdict().items()},
            num_anchors=parts.net.num_anchors, deployment=repr(deploy_config), data_seed=data_seed,
            dataset=DatasetRecord.of(spec), frozen_scopes=training_plan.frozen_scopes,
            new_layers_only_steps=training_plan.new_layers_only_steps,
            first_phase_scopes=training_plan.first_phase_scopes)
        path = record.write(config.train_dir) if machine.is_chief else "the chief's train_dir"
        accumulation = (f" x {config.accumulate_steps} accumulated micro-batches = {images_per_step} images per "
                        "global step" if config.accumulate_steps > 1 else "")
        arithmetic = "" if config.precision == "fp32" else f", towers in {config.precision}"
        arithmetic += ", towers compiled by XLA" if config.xla else ""
        logging.info("Training %s on %s/%s (%d images, %d classes incl. background), %d clone(s) x batch %d%s%s, "
                     "%d anchors, on %s; configuration in %s", parts.net.name, spec.name, spec.split_name,
                     spec.num_samples, spec.num_classes, deploy_config.num_clones, config.batch_size, accumulation,
                     arithmetic, parts.net.num_anchors, machine.describe(), path)
        init_fn = None
        if machine.is_chief:
            plan = checkpoint_init.plan_initialization(config.train_dir, config.checkpoint_path,
                                                       **plan_lib.initialization_arguments(config, parts.net))
            checkpoint_init.log_plan(plan, note=training_plan.note)
            init_fn = checkpoint_init.init_fn_from_plan(plan)
        saver = tf1.train.Saver(max_to_keep=config.max_to_keep,
                                keep_checkpoint_every_n_hours=config.keep_checkpoint_every_n_hours,
                                write_version=tf1.train.SaverDef.V2)
        after_step_hooks = []  # rules run after each step that may end the run (validation, early stopping)
        if validation_plan is not None:
            after_step_hooks.append(validation_lib.validation_hook_for(
                validation_plan, config, parts.net, deploy_config, parts.train.moving_average))
        steps_per_epoch = lr_lib.steps_per_epoch(spec.num_samples, images_per_step)
        step_fn, summary_writer = make_train_step_fn(config, parts, training_plan, machine.is_chief,
                                                     after_step_hooks, steps_per_epoch, last_step)
        train_step_fn = machine.wrap_train_step(step_fn)
        machine.prepare_graph()
        machine.wait_for_chief()
        with machine.training_context(parts.sync_optimizer), _run_summary_at_end(
                config, step_fn, machine.is_chief, images_per_step, steps_per_epoch, last_step):
            final_loss = slim.learning.train(
                parts.train.train_tensor, logdir=config.train_dir, init_fn=init_fn, train_step_fn=train_step_fn,
                number_of_steps=last_step, log_every_n_steps=config.log_every_n_steps,
                summary_op=None, summary_writer=summary_writer,
                save_interval_secs=config.save_interval_secs, saver=saver, session_config=machine.session_config,
                master=machine.master, is_chief=machine.is_chief, sync_optimizer=parts.sync_optimizer,
                ignore_live_threads=parts.sync_optimizer is not None and machine.is_chief,
                session_wrapper=machine.session_wrapper,
            )
        machine.close()
        return final_loss


@contextlib.contextmanager
def _run_summary_at_end(config, step_fn, is_chief, images_per_step, steps_per_epoch, last_step):
    """On the chief, when the run ends (returns, is interrupted or fails): the summary line and
    ``run_summary.json``. Writing it never hides the run's own error."""
    error = None
    try:
        yield
    except BaseException as raised:
        error = raised
        raise
    finally:
        if is_chief:
            try:
                end_flag = "--num_epochs" if config.num_epochs is not None else "--max_number_of_steps"
                reason = run_summary.stop_reason_of(step_fn.stop_reason, error, step_fn.last_global_step,
                                                    last_step, end_flag)
                summary = run_summary.summarize(
                    config.train_dir, step_fn.first_global_step, step_fn.last_global_step, step_fn.started_at,
                    images_per_step, steps_per_epoch, reason)
                path = run_summary.write(config.train_dir, summary)
                logging.info("%s (%s)", run_summary.summary_line(summary), path)
            except Exception as write_error:  # noqa: BLE001 (the summary must not replace the run's outcome)
                logging.warning("Could not write the run summary: %s", write_error)


def make_train_step_fn(config, parts, training_plan, is_chief, after_step_hooks=(), steps_per_epoch=None,
                       last_step=None):
    """The step function: logging, the chief's summaries (run inside its train step, not in a thread of their
    own), the run's time limit and, with two phases, the switch to the second phase's train tensor.
    Returns (step function, the chief's summary writer or None on other workers)."""
    summary_writer = tf1.summary.FileWriter(config.train_dir) if is_chief else None
    first_phase = None
    if parts.train.first_phase is not None:
        but = (f" (but {', '.join(s.split('/')[-1] for s in training_plan.frozen_scopes)})"
               if training_plan.frozen_scopes else "")
        first_phase = train_op_lib.FirstPhase(
            parts.new_layers_only_steps, parts.train.first_phase.train_tensor,
            # Each phase's summary op carries its own phase's gradient summaries only.
            _merge_summaries(parts.train.first_phase.summaries) if is_chief else None,
            f"{training_plan.second_phase_trains}{but} starts training, at learning rate "
            f"{config.learning_rate:g} after a {parts.warmup_steps}-step warmup (trainable variables: "
            f"{len(parts.train.first_phase.grads_and_vars)} -> {len(parts.train.grads_and_vars)})")
    tensors_to_log = {"learning_rate": parts.learning_rate, **parts.loss_terms}
    if parts.loss_scale_optimizer is not None:
        tensors_to_log.update(loss_scale=parts.loss_scale_optimizer.loss_scale,
                              skipped_steps=parts.loss_scale_optimizer.skipped_steps)
    train_step_fn = train_op_lib.make_train_step_fn(
        tensors_to_log=tensors_to_log,
        images_per_step=config.batch_size * parts.deploy_config.num_clones * config.accumulate_steps,
        summary_op=_merge_summaries(parts.train.summaries) if is_chief else None, summary_writer=summary_writer,
        save_summaries_secs=config.save_summaries_secs,
        max_train_seconds=None if config.max_train_minutes is None else 60.0 * config.max_train_minutes,
        first_phase=first_phase, after_step_hooks=after_step_hooks, steps_per_epoch=steps_per_epoch,
        last_step=last_step, micro_batches=config.accumulate_steps, micro_batch_weight=parts.micro_batch_weight,
        loss_names=tuple(parts.loss_terms),
    )
    return train_step_fn, summary_writer


def _merge_summaries(extra):
    summaries_to_merge = tf1.get_collection(tf1.GraphKeys.SUMMARIES) + list(extra)
    return tf1.summary.merge(summaries_to_merge) if summaries_to_merge else None
