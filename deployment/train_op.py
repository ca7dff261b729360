"""The train op over model_deploy clones: averaged gradients, clipping, EMA and the NaN guard.

:func:`build_train_op` turns the clones of :func:`deployment.model_deploy.create_clones`
into the tensor ``slim.learning.train`` runs::

    per clone (its device):    loss_i / num_clones (+ regularization on clone 0) -> gradients
    optimizer device:          average gradients -> [clip by global norm] -> NaN/Inf guard
                               -> apply_gradients (ops sit with their variables)
                               -> [EMA of the variables, after the step]
    train tensor:              total loss, after the step and the first clone's update ops

With gradient accumulation (:mod:`deployment.gradient_accumulation`) the optimizer's apply_gradients
accumulates, and applies one update in K runs (it clips then, not here); the EMA follows those runs only.

The NaN/Inf guard checks every loss term of every clone and the global norm of the
averaged gradients before the variables change: a bad step never reaches the trained
variables or a checkpoint. (Update ops made by the model, such as batch-norm moving
statistics, are not gated: they may absorb the bad step, but training stops before any
later save.) It fails the step with an error naming the term and the global step;
:func:`make_train_step_fn` turns that error into :class:`NonFiniteLossError`, which stops
``slim.learning.train`` with that message.

With float16 loss scaling (an optimizer with ``skips_non_finite_gradients``, see
:mod:`deployment.mixed_precision`) non-finite gradients are an overflow the optimizer skips: the
guard then checks the unscaled loss terms only, and the optimizer's overflow guard stops training
when every step overflows for too long (:func:`describe_nan_guard_error` words both).
"""

import collections
import re
import time

from absl import logging
import numpy as np
import tensorflow as tf

from deployment import gradient_accumulation, mixed_precision, model_deploy
from deployment.scopes import in_scope, split_scopes
from tf_compat import slim, tf1

NAN_GUARD_MARKER = "NaN/Inf guard"

TrainOp = collections.namedtuple(
    "TrainOp",
    [
        "train_tensor",  # run by slim.learning.train: the total loss after the step
        "total_loss",  # sum of the clone losses (each / num_clones) + regularization
        "grads_and_vars",  # averaged (and clipped) gradients as applied
        "gradient_norm",  # global norm of the averaged gradients before clipping
        "loss_terms",  # {name: tensor} checked by the NaN guard: raw clone losses, regularization, gradient norm
        "moving_average",  # tf.train.ExponentialMovingAverage or None
        "summaries",  # summaries of this train tensor's own gradients, kept out of SUMMARIES when phased
        "first_phase",  # a TrainOp (first_phase None) training first_phase_variables only, or None
    ],
)


class NonFiniteLossError(RuntimeError):
    """Training stopped because a loss term (or the gradient norm) became NaN or Inf."""


def get_variables_to_train(trainable_scopes=None, frozen_scopes=None):
    """Trainable variables under ``trainable_scopes`` (comma-separated or list; all if empty), minus
    those under ``frozen_scopes``.

    The rest stay frozen (the "train the new layers first" recipe; the paper's frozen conv1/conv2).
    A scope matching no trainable variable is an error (a typo would otherwise freeze everything,
    or nothing).
    """
    trainable = tf1.trainable_variables()
    top_level = sorted({v.op.name.split("/")[0] for v in trainable})
    scopes = split_scopes(trainable_scopes)
    selected = []
    for scope in scopes:
        matched = [v for v in trainable if in_scope(v.op.name, scope)]
        if not matched:
            raise ValueError(f"--trainable_scopes: '{scope}' matches no trainable variable; "
                             f"top-level scopes present: {top_level}")
        selected.extend(v for v in matched if v not in selected)
    selected = selected if scopes else list(trainable)
    for scope in split_scopes(frozen_scopes):
        if not any(in_scope(v.op.name, scope) for v in trainable):
            raise ValueError(f"frozen scope '{scope}' matches no trainable variable; top-level scopes present: "
                             f"{top_level}")
        selected = [v for v in selected if not in_scope(v.op.name, scope)]
    if not selected:
        raise ValueError(f"no variable left to train (--trainable_scopes={trainable_scopes!r}, frozen: "
                         f"{split_scopes(frozen_scopes)})")
    return selected


def clip_gradients_by_global_norm(grads_and_vars, clip_norm):
    """Clips the gradients jointly to global norm ``clip_norm``; returns (grads_and_vars, norm before)."""
    grads = [g for g, _ in grads_and_vars]
    dense = [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads]
    norm = tf.linalg.global_norm(dense, name="clip_gradients/global_norm")
    if clip_norm is None or clip_norm <= 0:
        return grads_and_vars, norm
    clipped, _ = tf.clip_by_global_norm(grads, clip_norm, use_norm=norm, name="clip_by_global_norm")
    return list(zip(clipped, [v for _, v in grads_and_vars])), norm


def nan_guard(loss_terms, global_step):
    """An op failing when any of ``loss_terms`` ({name: tensor}) is NaN or Inf.

    One check over all terms, so the error lists every bad term (in ``loss_terms`` order)
    with its value and the global step; :func:`describe_nan_guard_error` parses it.
    """
    with tf1.name_scope("nan_guard"):
        names = tf.constant(list(loss_terms), name="loss_term_names")
        values = tf.stack(
            [tf.reduce_sum(tf.cast(value, tf.float32)) for value in loss_terms.values()], name="loss_term_values"
        )
        finite = tf.math.is_finite(values)
        bad = tf.logical_not(finite)
        bad_names = tf.strings.reduce_join(tf.boolean_mask(names, bad), separator=", ")
        check = tf1.debugging.Assert(
            tf.reduce_all(finite),
            [f"{NAN_GUARD_MARKER}: loss terms not finite at global step", global_step,
             "terms:", bad_names, "values:", tf.boolean_mask(values, bad)],
            summarize=max(len(loss_terms), 1),
            name="check_loss_terms",
        )
    return check


def _clone_loss_terms(clones, regularization_losses):
    terms = {}
    for clone in clones:
        for loss in tf1.get_collection(tf1.GraphKeys.LOSSES, clone.scope):
            terms[loss.op.name] = loss
    if regularization_losses:
        terms["regularization_loss"] = tf.add_n(regularization_losses, name="regularization_loss_for_guard")
    return terms


def build_train_op(
    config,
    clones,
    optimizer,
    global_step=None,
    variables_to_train=None,
    regularization_losses=None,
    clip_gradient_norm=0.0,
    moving_average_decay=None,
    variables_to_average=None,
    check_numerics=True,
    summarize_gradients=False,
    first_phase_variables=None,
    applied_updates=None,
):
    """Builds the train op for ``clones`` (see the module docstring).

    Args:
      config: the :class:`deployment.model_deploy.DeploymentConfig` of the clones.
      clones: from :func:`deployment.model_deploy.create_clones`.
      optimizer: a ``tf.compat.v1.train.Optimizer``.
      global_step: default: the graph's (created on the variables device if needed).
      variables_to_train: default: all trainable variables (see :func:`get_variables_to_train`).
      regularization_losses: default: the graph's ``REGULARIZATION_LOSSES``, added once.
      clip_gradient_norm: clip the averaged gradients to this global norm (<= 0: no clipping).
      moving_average_decay: keep an exponential moving average of ``variables_to_average``
        (default: the model variables), updated after each step; its shadow variables are
        global variables, so the Saver writes them (``<var>/ExponentialMovingAverage``).
      variables_to_average: see ``moving_average_decay``.
      check_numerics: add the NaN/Inf guard.
      summarize_gradients: histograms and norms of the gradients.
      first_phase_variables: also build ``TrainOp.first_phase``, a second train tensor over the
        same losses, optimizer (its slots exist for every variable from the start) and moving
        average that trains only these variables: run it for the first steps of a run (new layers
        first, then the whole network) and no backward pass reaches the other variables. The
        gradient summaries of each train tensor then stay out of the ``SUMMARIES`` collection, in
        its ``summaries`` field, so that a summary op merged for one phase never computes the
        other phase's gradients.
      applied_updates: when the optimizer does not apply an update with every run (gradient
        accumulation, :mod:`deployment.gradient_accumulation`), a variable it increments with each
        update it applies: the moving average then follows only the runs that applied one.

    Returns:
      :class:`TrainOp`.
    """
    if global_step is None:
        global_step = model_deploy.get_or_create_global_step(config)
    if regularization_losses is None:
        regularization_losses = tf1.get_collection(tf1.GraphKeys.REGULARIZATION_LOSSES)
    if variables_to_train is None:
        variables_to_train = tf1.trainable_variables()
    moving_average = None
    if moving_average_decay:
        if variables_to_average is None:
            variables_to_average = slim.get_model_variables()
        moving_average = tf1.train.ExponentialMovingAverage(moving_average_decay, num_updates=global_step)
    phased = bool(first_phase_variables)
    kwargs = dict(config=config, clones=clones, optimizer=optimizer, global_step=global_step,
                  regularization_losses=regularization_losses, clip_gradient_norm=clip_gradient_norm,
                  moving_average=moving_average, variables_to_average=variables_to_average,
                  check_numerics=check_numerics, summarize_gradients=summarize_gradients, keep_summaries_apart=phased,
                  applied_updates=applied_updates)
    # The whole-network train tensor first: its apply_gradients creates the optimizer slots of every
    # trained variable, which the first phase then shares.
    main = _build_phase(variables_to_train, **kwargs)
    first = None
    if phased:
        with tf1.name_scope("first_phase"):
            first = _build_phase(first_phase_variables, **kwargs)
    return main._replace(first_phase=first)


def _build_phase(variables_to_train, config, clones, optimizer, global_step, regularization_losses,
                 clip_gradient_norm, moving_average, variables_to_average, check_numerics, summarize_gradients,
                 keep_summaries_apart, applied_updates):
    """One train tensor over ``variables_to_train`` (see :func:`build_train_op`)."""
    summaries_before = set(tf1.get_collection(tf1.GraphKeys.SUMMARIES))
    first_clone = clones[0]
    update_ops = list(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS, first_clone.scope))
    optimizer_device = config.optimizer_device()

    total_loss, grads_and_vars = model_deploy.optimize_clones(
        clones,
        optimizer,
        regularization_losses=regularization_losses,
        averaging_device=optimizer_device,
        var_list=variables_to_train,
    )
    if not grads_and_vars:
        raise ValueError("no variable to train receives a gradient from the clone losses")
    # The same tag in both phases (no name scope added), so TensorBoard shows the switch as a step in one curve.
    tf1.add_to_collection(tf1.GraphKeys.SUMMARIES, tf.raw_ops.ScalarSummary(
        tags="trainable_variables", values=tf.constant(float(len(grads_and_vars))),
        name="trainable_variables_summary"))
    with tf1.device(optimizer_device):
        grads_and_vars, gradient_norm = clip_gradients_by_global_norm(grads_and_vars, clip_gradient_norm)
        tf1.summary.scalar("gradient_global_norm", gradient_norm)
        if summarize_gradients:
            model_deploy.add_gradient_summaries(grads_and_vars)
        guards = []
        loss_terms = {}
        if check_numerics:
            loss_terms = _clone_loss_terms(clones, regularization_losses)
            if getattr(optimizer, "skips_non_finite_gradients", False):
                # Loss scaling (deployment.mixed_precision): non-finite gradients are an overflow the optimizer
                # skips; a divergence shows as a non-finite unscaled loss, or as overflows without end.
                guards = [nan_guard(loss_terms, global_step), optimizer.overflow_guard(global_step)]
            else:
                # A finite loss can still give NaN gradients (e.g. sqrt at 0): check their norm too.
                loss_terms["gradient_global_norm"] = gradient_norm
                guards = [nan_guard(loss_terms, global_step)]
        # The guard gates the gradients, not apply_gradients: optimizers such as
        # SyncReplicasOptimizer build queue, token and readiness ops there that must not wait
        # for (and so re-run) the forward pass each time they are run on their own.
        updates_before = []
        if applied_updates is not None and moving_average is not None:
            updates_before = [gradient_accumulation.read_before_update(applied_updates)]
        grads_and_vars = gate_gradients(grads_and_vars, guards + updates_before)
        apply_op = optimizer.apply_gradients(grads_and_vars, global_step=global_step)
        step_ops = [apply_op]
        if moving_average is not None:
            # After the step, so the averages follow the updated variables.
            with tf.control_dependencies([apply_op]):
                if updates_before:
                    applied = gradient_accumulation.update_applied(applied_updates, updates_before[0], apply_op)
                    step_ops.append(tf1.cond(applied, lambda: tf.group(moving_average.apply(variables_to_average)),
                                             tf.no_op, name="moving_average_if_applied"))
                else:
                    step_ops.append(moving_average.apply(variables_to_average))
        update_op = tf.group(*(update_ops + step_ops), name="update_op")
        with tf.control_dependencies([update_op]):
            train_tensor = tf.identity(total_loss, name="train_op")
    own_summaries = []
    if keep_summaries_apart:
        collection = tf1.get_collection_ref(tf1.GraphKeys.SUMMARIES)
        own_summaries = [summary for summary in collection if summary not in summaries_before]
        collection[:] = [summary for summary in collection if summary in summaries_before]
    return TrainOp(train_tensor, total_loss, grads_and_vars, gradient_norm, loss_terms, moving_average,
                   own_summaries, None)


def gate_gradients(grads_and_vars, dependencies):
    """``grads_and_vars`` whose gradients are only available once ``dependencies`` have run."""
    if not dependencies:
        return grads_and_vars
    gated = []
    with tf.control_dependencies(dependencies):
        for grad, var in grads_and_vars:
            if isinstance(grad, tf.IndexedSlices):
                grad = tf.IndexedSlices(tf.identity(grad.values), grad.indices, grad.dense_shape)
            elif grad is not None:
                grad = tf.identity(grad)
            gated.append((grad, var))
    return gated


_GUARD_PATTERN = re.compile(
    re.escape(NAN_GUARD_MARKER) + r": loss terms not finite at global step\]\s*\[(-?\d+)\]"
    r"\s*\[terms:\]\s*\[([^\]]*)\]\s*\[values:\]\s*\[([^\]]*)\]"
)


_OVERFLOW_PATTERN = re.compile(
    re.escape(mixed_precision.OVERFLOW_GUARD_MARKER) + r": every step overflowed at global step\]\s*\[(-?\d+)\]"
    r"\s*\[steps in a row:\]\s*\[(\d+)\]\s*\[loss scale:\]\s*\[([^\]]*)\]"
)


def describe_nan_guard_error(error):
    """The guard's message from an error raised by a guarded step, or None if it is not the guard's."""
    overflow = _OVERFLOW_PATTERN.search(str(error))
    if overflow:
        step, in_a_row, scale = overflow.groups()
        return (
            f"Training stopped: the float16 gradients overflowed at every one of the last {in_a_row} steps before "
            f"global step {step}, down to a loss scale of {scale}: training diverged (not the occasional "
            "overflow step that loss scaling skips). Lower the learning rate, clip gradients "
            "(--clip_gradient_norm) or train with --precision=mixed_bf16 or fp32."
        )
    match = _GUARD_PATTERN.search(str(error))
    if not match:
        return None
    step, terms, values = match.groups()
    terms = ", ".join(f"'{term}'" for term in terms.split(", "))
    return (
        f"Training stopped: loss term {terms} became NaN or Inf at global step {step} (value {values}). "
        "The step was not applied; lower the learning rate, clip gradients (--clip_gradient_norm) "
        "or check the input data."
    )


FirstPhase = collections.namedtuple("FirstPhase", ["end_step", "train_tensor", "summary_op", "description"])
FirstPhase.__doc__ = """What :func:`make_train_step_fn` runs while the global step is below ``end_step``: another
train tensor (``TrainOp.first_phase.train_tensor``) and its summary op; ``description`` names the switch
in the log ("the VGG-16 base starts training")."""


# Steps whose durations the ETA averages: recent enough to follow a phase switch or a busier machine.
ETA_WINDOW_STEPS = 20


def format_duration(seconds):
    """``45s``, ``31m``, ``2h05m``: an ETA at the precision a log line needs."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{int(round(seconds / 60.0))}m"
    hours, minutes = divmod(int(round(seconds / 60.0)), 60)
    return f"{hours}h{minutes:02d}m"


def progress_text(global_step, steps_per_epoch=None, last_step=None, seconds_per_step=None,
                  seconds_to_time_limit=None):
    """The log line's progress: ``step 120/500 (epoch 2.31/9.6), ETA 31m``; the parts it can say (the step
    out of the last one when the run has one, the epoch when its length is known, the ETA when the run
    has an end). With a time limit (``seconds_to_time_limit`` left) that comes before the last step, or
    without a last step, the ETA is the time limit's: ``ETA 12m (time limit)``."""
    parts = []
    epoch = f"epoch {global_step / steps_per_epoch:.2f}" if steps_per_epoch else None
    step_eta = None
    if last_step:
        if epoch:
            epoch += f"/{last_step / steps_per_epoch:.3g}"
        parts.append(f"step {global_step}/{last_step}" + (f" ({epoch})" if epoch else ""))
        if seconds_per_step is not None:
            step_eta = max(last_step - global_step, 0) * seconds_per_step
    elif epoch:
        parts.append(epoch)
    if seconds_to_time_limit is not None and (step_eta is None or seconds_to_time_limit < step_eta):
        parts.append(f"ETA {format_duration(max(seconds_to_time_limit, 0.0))} (time limit)")
    elif step_eta is not None:
        parts.append(f"ETA {format_duration(step_eta)}")
    return ", ".join(parts)


def make_train_step_fn(tensors_to_log=None, images_per_step=None, log_every_n_steps=None, summary_op=None,
                       summary_writer=None, save_summaries_secs=60, max_train_seconds=None, first_phase=None,
                       after_step_hooks=(), steps_per_epoch=None, last_step=None, micro_batches=1,
                       micro_batch_weight=None, loss_names=()):
    """A ``train_step_fn`` for ``slim.learning.train`` with the NaN guard's stop and richer logs.

    Runs ``train_op`` (with ``tensors_to_log``, a {name: scalar} dict such as loss terms
    and the learning rate, in the same ``session.run``), then reads the global step, like
    ``slim.learning.train_step``. When the step should log (``slim.learning.train``'s
    ``log_every_n_steps``, or ``log_every_n_steps`` here), it logs one line: step, total
    loss, the logged tensors, images/s (with ``images_per_step`` = batch x clones per call) and
    sec/step, then the progress (:func:`progress_text`: epoch with ``steps_per_epoch``, the step out of
    ``last_step`` and the ETA from the mean time between the starts of the last ``ETA_WINDOW_STEPS``
    steps, hooks and saves included, the run's first step left out). A NaN/Inf
    guard failure raises :class:`NonFiniteLossError` with the term
    and step, which ends ``slim.learning.train`` without saving the bad step.

    With ``summary_op`` and ``summary_writer`` (give ``slim.learning.train`` the same writer
    and ``summary_op=None``), the summaries are computed in the same ``session.run`` as the
    step, on the first step and then every ``save_summaries_secs``: they show the batch the
    step trained on. Run on their own, as the Supervisor's summary thread does, they would
    pull an extra batch from the input pipeline (and an extra forward pass) each time.

    With ``max_train_seconds``, the step that ends that long after the run's first step started
    asks ``slim.learning.train`` to stop (it then saves a final checkpoint), and says so.

    With ``first_phase`` (a :class:`FirstPhase`), steps that start below its ``end_step`` run its
    train tensor and summary op instead of ``train_op`` and ``summary_op``; the switch is logged.

    ``after_step_hooks``: callables ``hook(session, global_step_value)`` run after each step (in
    order; e.g. validation), each returning None or the reason to stop training now (then
    ``slim.learning.train`` saves a final checkpoint). The reason the run stopped, if any of these
    rules stopped it, is the step function's ``stop_reason`` attribute (None otherwise). A hook with an
    ``at_end(session, global_step)`` method has it called after the step the run stops on, whatever
    stopped it (the last step, a hook, the time limit), before the final checkpoint is saved.

    With ``micro_batches`` K > 1 (gradient accumulation, :mod:`deployment.gradient_accumulation`), one
    call runs the train tensor K times, so that one call is still one global step (one applied update):
    ``slim.learning.train``'s number of steps, the log, the ETA, the epochs, the hooks, the time limit
    and the phase switch all count calls. The summaries are computed with the last micro-batch (they
    show its batch and losses). The logged loss and the tensors named in ``loss_names`` are the mean
    over the K micro-batches weighted by ``micro_batch_weight`` (fetched with each; None: equal
    weights), as the applied gradient is; the other logged tensors (the learning rate) are the first
    micro-batch's, read before the update. ``images_per_step`` then counts the K micro-batches.

    For the run's summary the step function also keeps ``first_global_step`` (the global step when
    the run's first step started), ``last_global_step`` (after its last step) and ``started_at``
    (``time.time()`` at the first step), each None before the first step.
    """
    names = list((tensors_to_log or {}).keys())
    tensors = [tensors_to_log[name] for name in names]
    weighted = micro_batches > 1 and micro_batch_weight is not None
    # The first step of a run is always logged: on a CPU a step can take a minute, and a user
    # should not wait log_every_n_steps of them to see that training runs.
    first_step_of_run = [True]
    last_summary_time = [None]
    run_start = [None]
    current_step = [None]
    # From one step's start to the next one's: what the ETA must count includes the after-step hooks
    # (validation), summaries and checkpoint saves, not only session.run.
    recent_step_seconds = collections.deque(maxlen=ETA_WINDOW_STEPS)
    previous_start = [None]

    def train_step_fn(session, train_op, global_step, train_step_kwargs):
        start = time.time()
        if run_start[0] is None:
            run_start[0] = start
            current_step[0] = int(session.run(global_step))
            train_step_fn.first_global_step, train_step_fn.started_at = current_step[0], start
        in_first_phase = first_phase is not None and current_step[0] < first_phase.end_step
        step_tensor = first_phase.train_tensor if in_first_phase else train_op
        step_summary = first_phase.summary_op if in_first_phase else summary_op
        with_summary = step_summary is not None and (
            last_summary_time[0] is None or start - last_summary_time[0] >= save_summaries_secs)
        micro_batch_values = []
        for micro_batch in range(micro_batches):
            summarize = with_summary and micro_batch == micro_batches - 1
            fetches = [step_tensor] + tensors + ([micro_batch_weight] if weighted else [])
            try:
                try:
                    fetched = session.run(fetches + ([step_summary] if summarize else []))
                except tf.errors.InvalidArgumentError as error:
                    if not summarize or describe_nan_guard_error(error) is not None:
                        raise
                    # A histogram of non-finite activations fails the whole run before the guard can
                    # name the bad loss term; the guard held the step back, so run it without summaries.
                    with_summary = summarize = False
                    fetched = session.run(fetches)
            except tf.errors.InvalidArgumentError as error:
                message = describe_nan_guard_error(error)
                if message is None:
                    raise
                logging.error(message)
                raise NonFiniteLossError(message) from None
            if summarize:
                summary, fetched = fetched[-1], fetched[:-1]
            micro_batch_values.append(fetched)
        elapsed = time.time() - start
        total_loss, logged = _combine_micro_batches(micro_batch_values, names, loss_names, weighted)
        # Read after the step: fetched with train_op, the step's value could be either side of its increment.
        np_global_step = int(session.run(global_step))
        current_step[0] = train_step_fn.last_global_step = np_global_step
        # The run's first step also warms up (a minute on a CPU): not a typical one.
        if previous_start[0] is not None and previous_start[0] != run_start[0]:
            recent_step_seconds.append(start - previous_start[0])
        previous_start[0] = start
        if in_first_phase and np_global_step >= first_phase.end_step:
            logging.info("Global step %d: %s", np_global_step, first_phase.description)
        if with_summary:
            summary_writer.add_summary(summary, np_global_step)
            last_summary_time[0] = start
        if log_every_n_steps:
            should_log = np_global_step % log_every_n_steps == 0
        elif "should_log" in train_step_kwargs:
            should_log = session.run(train_step_kwargs["should_log"])
        else:
            should_log = False
        if first_step_of_run[0]:
            should_log, first_step_of_run[0] = True, False
        if should_log:
            parts = [f"global step {np_global_step}: loss = {total_loss:.4f}"]
            parts += [f"{name} = {float(np.asarray(value)):.6g}" for name, value in zip(names, logged)]
            if images_per_step:
                parts.append(f"{images_per_step / max(elapsed, 1e-9):.1f} images/s")
            parts.append(f"{elapsed:.3f} sec/step")
            seconds_per_step = (sum(recent_step_seconds) / len(recent_step_seconds) if recent_step_seconds
                                else elapsed)
            to_time_limit = None if max_train_seconds is None else max_train_seconds - (time.time() - run_start[0])
            progress = progress_text(np_global_step, steps_per_epoch, last_step, seconds_per_step, to_time_limit)
            if progress:
                parts.append(progress)
            logging.info(", ".join(parts))
        should_stop = bool(session.run(train_step_kwargs["should_stop"])) if "should_stop" in train_step_kwargs else False
        reason = None
        for hook in after_step_hooks:
            reason = hook(session, np_global_step) or reason
        if reason is None and max_train_seconds is not None and time.time() - run_start[0] >= max_train_seconds:
            reason = f"the time limit of {max_train_seconds / 60.0:.1f} minutes is reached"
        if reason is not None and not should_stop:
            logging.info("Stopping after global step %d: %s", np_global_step, reason)
            train_step_fn.stop_reason = reason
            should_stop = True
        if should_stop:
            for hook in after_step_hooks:
                at_end = getattr(hook, "at_end", None)
                if at_end is not None:
                    at_end(session, np_global_step)
        return total_loss, should_stop

    train_step_fn.stop_reason = None
    train_step_fn.first_global_step = train_step_fn.last_global_step = train_step_fn.started_at = None
    return train_step_fn


def _combine_micro_batches(values, names, loss_names, weighted):
    """(total loss, logged values) of a step from each micro-batch's fetched ``[loss, *logged, (weight)]``:
    the loss and the ``loss_names`` as their weighted mean (equal weights without a weight, or when they
    are all 0), the other logged values as the first micro-batch's."""
    if len(values) == 1:
        return values[0][0], values[0][1:1 + len(names)]
    weights = np.array([float(fetched[-1]) for fetched in values]) if weighted else np.ones(len(values))
    if weights.sum() <= 0:
        weights = np.ones(len(values))
    weights = weights / weights.sum()

    def mean(index):
        return float(sum(weight * float(np.asarray(fetched[index])) for weight, fetched in zip(weights, values)))

    logged = [mean(1 + i) if name in loss_names else values[0][1 + i] for i, name in enumerate(names)]
    return mean(0), logged
