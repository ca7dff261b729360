"""The training graph: input pipeline, the clone function, the train op (built in the default graph).

Placement follows :mod:`deployment.model_deploy`: the input pipeline (read, parse, augment,
[encode targets], batch) and every variable on the CPU (or the ps tasks); each clone dequeues its
own batch and builds the network (:func:`nets.nets_factory.network_fn_of`) and the multibox loss on
its device; the clone gradients are averaged on the optimizer device and applied there
(:func:`deployment.train_op.build_train_op`), with ``--accumulate_steps`` once every K runs, the weighted
mean of the K micro-batches' (:mod:`deployment.gradient_accumulation`).

Every function takes a :class:`training.config.TrainingConfig` and plain values, so each part can be
built and tested alone; :func:`build_training_graph` puts them together.
"""

import contextlib
import dataclasses

import tensorflow as tf

from datasets import dataset_factory
from deployment import cluster, gradient_accumulation, learning_rate as lr_lib, mixed_precision, model_deploy
from deployment import optimizers, summaries
from deployment import train_op as train_op_lib
from nets import matching, multibox_loss, nets_factory, ssd_vgg_common
from preprocessing import preprocessing_factory, seeds, visualization
from preprocessing.ssd_vgg_preprocessing import TrainAugmentation
from tf_compat import slim, tf1


def build_network(config, num_classes):
    """The :class:`nets.ssd_net.SSDNet` the options name, for ``num_classes`` (background included)."""
    overrides = {"img_shape": config.image_shape} if config.image_shape else {}
    return nets_factory.get_network(config.model_name, num_classes=num_classes, **overrides)


def train_augmentation(config):
    if config.augmentation == "none":
        return TrainAugmentation.none()
    return TrainAugmentation(expand=config.zoom_out_max_ratio > 1.0,
                             expand_max_ratio=max(config.zoom_out_max_ratio, 1.0))


def build_input_dataset(config, spec, net, data_seed, num_shards=1, shard_index=0):
    """Batches for the towers: dicts of image [B,H,W,3] float32, labels [B,N], boxes [B,N,4]
    (padded with label 0 / empty boxes) and, with targets encoded in the input pipeline, the
    :class:`nets.matching.Targets` fields under ``matching.TARGET_KEYS``. Replica ``shard_index``
    of ``num_shards`` keeps every ``num_shards``-th batch (:func:`deployment.cluster.shard_batches`)."""
    preprocess = preprocessing_factory.get_preprocessing(config.model_name, is_training=True)
    augmentation = train_augmentation(config)
    out_shape = net.params.img_shape
    encode_in_input = config.encode_targets_in == "input"

    def prepare(index, example):
        image, labels, boxes, _ = preprocess(
            example["image"], example["labels"], example["boxes"], example["difficult"], out_shape,
            seed=seeds.example_seed(data_seed, index), options=augmentation,
        )
        prepared = {"image": image, "labels": labels, "boxes": boxes}
        if encode_in_input:
            prepared.update(matching.targets_to_dict(net.bboxes_encode(
                labels, boxes, match_threshold=config.match_threshold, negative_threshold=config.negative_threshold)))
        return prepared

    dataset = dataset_factory.build_dataset(
        spec, is_training=True, seed=data_seed, num_readers=config.num_readers,
        num_parallel_calls=config.num_preprocessing_threads, shuffle_buffer_size=config.shuffle_buffer_size,
    )
    dataset = cluster.shard_batches(dataset.enumerate(), config.batch_size, num_shards, shard_index)
    dataset = dataset.map(prepare, num_parallel_calls=config.num_preprocessing_threads, deterministic=True)
    dataset = dataset.padded_batch(config.batch_size, drop_remainder=True)
    return dataset.prefetch(max(2, config.num_clones))


@dataclasses.dataclass(frozen=True)
class CloneInputs:
    """What one tower trains on."""

    batch: dict  # image, labels, boxes (and the encoded targets' fields when matched in the input pipeline)
    targets: matching.Targets
    normaliser: tf.Tensor | None  # of its multibox loss; None: its own positives


def dequeue_clone_inputs(config, net, iterator, deploy_config):
    """One :class:`CloneInputs` per clone: each clone's batch (dequeued on the inputs device), its
    targets (from the batch, or matched on the clone's device with ``--encode_targets_in=tower``)
    and, with ``--loss_normalization=step``, the normaliser shared by all clones: the positives of
    every clone's batch, summed on the optimizer device (so N towers x B images train exactly as
    one tower on the N*B images)."""
    num_clones = deploy_config.num_clones
    with tf1.device(deploy_config.inputs_device()), tf.name_scope("clone_inputs"):
        batches = [iterator.get_next() for _ in range(num_clones)]
    targets = []
    for index, batch in enumerate(batches):
        if config.encode_targets_in == "input":
            targets.append(matching.targets_from_dict(batch))
        else:
            with tf1.device(deploy_config.clone_device(index)), tf.name_scope(f"clone_targets_{index}"):
                targets.append(net.bboxes_encode(batch["labels"], batch["boxes"],
                                                 match_threshold=config.match_threshold,
                                                 negative_threshold=config.negative_threshold))
    normaliser = None
    if config.loss_normalization == "step":
        with tf1.device(deploy_config.optimizer_device()):
            normaliser = multibox_loss.step_normaliser([multibox_loss.count_positives(t) for t in targets])
    return [CloneInputs(batch, target, normaliser) for batch, target in zip(batches, targets)]


def make_clone_fn(config, net, clone_inputs):
    """The model_fn for ``model_deploy.create_clones``: SSD net and multibox loss on the next
    clone's inputs (the i-th call trains on ``clone_inputs[i]``, as each call of a TF-Slim clone
    function dequeues its own batch). Each call returns the clone's end points, plus its batch
    under ``_batch``."""
    pending = list(clone_inputs)
    network_fn = nets_factory.network_fn_of(
        net, weight_decay=config.weight_decay, is_training=True, data_format=config.data_format,
        dropout_keep_prob=config.dropout_keep_prob, dropout_seed=config.seed)

    compute_dtype = mixed_precision.compute_dtype(config.precision)

    def clone_fn():
        if not pending:
            raise ValueError(f"clone_fn called more often than the {len(clone_inputs)} clone inputs prepared")
        inputs = pending.pop(0)
        with tower_compilation(config.xla), mixed_precision.tower_precision(config.precision):
            images = tf.cast(inputs.batch["image"], compute_dtype)
            _, localisations, logits, end_points = network_fn(images)
            # The softmax, the hard-negative ranking and the losses in float32 whatever the towers compute in.
            logits, localisations = mixed_precision.to_float32(logits), mixed_precision.to_float32(localisations)
            net.losses(logits, localisations, inputs.targets, negative_ratio=config.negative_ratio,
                       alpha=config.loss_alpha, label_smoothing=config.label_smoothing, normaliser=inputs.normaliser)
        end_points = dict(end_points)
        end_points["_batch"] = inputs.batch
        return end_points

    return clone_fn


def tower_compilation(xla):
    """With ``xla``, the ops built inside (a tower's forward pass and loss, and through TensorFlow's gradient
    code their backward pass) form XLA clusters compiled as a whole (``--xla``); otherwise nothing."""
    if not xla:
        return contextlib.nullcontext()
    return tf.xla.experimental.jit_scope(compile_ops=True, separate_compiled_gradients=False)


def build_clones(config, net, iterator, deploy_config):
    """The towers (``model_deploy.create_clones``) on batches from ``iterator``; returns the clones."""
    clone_inputs = dequeue_clone_inputs(config, net, iterator, deploy_config)
    return model_deploy.create_clones(deploy_config, make_clone_fn(config, net, clone_inputs))


def micro_batch_weight(config, clone_inputs, deploy_config):
    """What one micro-batch's gradient weighs in an accumulated update (--accumulate_steps): with
    ``--loss_normalization=step`` the positives of all clones' batches, which the loss was divided by
    (so that the weighted mean is the gradient of the accumulated batch as one, see
    :mod:`deployment.gradient_accumulation`); None (equal weights) with 'clone'."""
    if config.loss_normalization != "step":
        return None
    with tf1.device(deploy_config.optimizer_device()), tf.name_scope("micro_batch_weight"):
        return tf.add_n([multibox_loss.count_positives(inputs.targets) for inputs in clone_inputs],
                        name="step_positives")


def replicas_per_step(config, deploy_config):
    """Replica batches one global step trains on: all aggregated ones in sync mode, one when async."""
    if deploy_config.num_ps_tasks > 0 and config.sync_replicas:
        return config.replicas_to_aggregate or deploy_config.num_replicas
    return 1


def batches_per_step(config, deploy_config):
    """Batches of each clone one global step trains on: the aggregated replicas' (sync mode) times the
    accumulated micro-batches (--accumulate_steps). One global step trains on
    ``batch_size x num_clones x batches_per_step`` images."""
    return replicas_per_step(config, deploy_config) * config.accumulate_steps


def loss_terms_of(clone):
    """A clone's multibox loss terms for the log line, named without the clone and loss scopes
    (``cross_entropy_pos/value``, ...)."""
    terms = {}
    for loss in tf1.losses.get_losses(scope=clone.scope):
        name = loss.op.name[len(clone.scope):] if clone.scope else loss.op.name
        terms[name.strip("/").split("/", 1)[-1]] = loss
    return terms


def build_optimizer(config, learning_rate):
    return optimizers.configure_optimizer(
        config.optimizer, learning_rate, momentum=config.momentum, rmsprop_decay=config.rmsprop_decay,
        rmsprop_momentum=config.momentum, rmsprop_epsilon=config.rmsprop_epsilon, adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2, adam_epsilon=config.opt_epsilon, adamw_weight_decay=config.adamw_weight_decay,
        adagrad_initial_accumulator_value=config.adagrad_initial_accumulator_value,
        adadelta_rho=config.adadelta_rho, ftrl_learning_rate_power=config.ftrl_learning_rate_power,
        ftrl_initial_accumulator_value=config.ftrl_initial_accumulator_value, ftrl_l1=config.ftrl_l1,
        ftrl_l2=config.ftrl_l2,
    )


def schedule_steps(config, num_samples, deploy_config):
    """(warmup steps, piecewise boundaries in steps or None): the schedule's options given in steps, or in
    epochs (--warmup_epochs, --learning_rate_boundaries_epochs) converted by ``lr_lib.epochs_to_steps``."""
    images = (num_samples, config.batch_size, deploy_config.num_clones, batches_per_step(config, deploy_config))
    warmup_steps = config.warmup_steps if config.warmup_epochs is None else lr_lib.epochs_to_steps(
        config.warmup_epochs, *images)
    boundaries, _ = config.learning_rate_piecewise
    if config.learning_rate_boundaries_epochs:
        boundaries = [lr_lib.epochs_to_steps(float(epochs), *images)
                      for epochs in config.learning_rate_boundaries_epochs]
    return warmup_steps, boundaries


def build_learning_rate(config, global_step, num_samples, deploy_config, new_layers_only_steps=0):
    """The learning-rate tensor: the schedule, or with ``new_layers_only_steps`` the two phases
    (--new_layers_learning_rate, then --learning_rate warmed up again)."""
    _, values = config.learning_rate_piecewise
    warmup_steps, boundaries = schedule_steps(config, num_samples, deploy_config)

    def schedule(rate, warmup_steps):
        return lr_lib.configure_learning_rate(
            global_step, learning_rate=rate, decay_type=config.learning_rate_decay_type,
            decay_rate=config.learning_rate_decay_factor, end_learning_rate=config.end_learning_rate,
            boundaries=boundaries, values=values, warmup_steps=warmup_steps, num_samples_per_epoch=num_samples,
            num_epochs_per_decay=config.num_epochs_per_decay, batch_size=config.batch_size,
            num_clones=deploy_config.num_clones, num_replicas=batches_per_step(config, deploy_config),
        )

    if not new_layers_only_steps:
        return schedule(config.learning_rate, warmup_steps)
    return lr_lib.two_phase_learning_rate(
        global_step, new_layers_only_steps, schedule(config.new_layers_learning_rate, warmup_steps),
        schedule(config.learning_rate, 0), warmup_steps)


@dataclasses.dataclass
class TrainingGraph:
    """The parts of the training graph the trainer, the tools and the tests use."""

    net: object  # nets.ssd_net.SSDNet
    deploy_config: model_deploy.DeploymentConfig
    global_step: tf.Variable
    clones: list  # model_deploy.Clone
    train: train_op_lib.TrainOp
    learning_rate: tf.Tensor
    optimizer: object
    iterator: object
    loss_terms: dict  # name -> loss tensor of the first clone, for the log line
    sync_optimizer: object  # cluster.SyncReplicasOptimizer, or None
    new_layers_only_steps: int
    warmup_steps: int = 0  # of the learning rate (and again at the phase switch), in global steps
    loss_scale_optimizer: object = None  # mixed_precision.DynamicLossScaleOptimizer with --precision=mixed_fp16
    # --accumulate_steps > 1: the weight of a micro-batch's gradient and loss (None: equal weights).
    micro_batch_weight: tf.Tensor | None = None


def build_training_graph(config, spec, deploy_config, data_seed=None, frozen_scopes=(), new_layers_only_steps=0,
                         first_phase_scopes=None):
    """Builds the whole training graph in the default graph; returns its :class:`TrainingGraph`.

    Variables under ``frozen_scopes`` (see :func:`training.plan.resolve_training_plan`) are not
    trained. With ``new_layers_only_steps`` the graph has a second train tensor
    (``train.first_phase``) for the steps before it, which trains SSD's new layers only (or, with
    ``first_phase_scopes``, those scopes only; the other train tensor then trains the whole network,
    not only --trainable_scopes), at ``--new_layers_learning_rate``."""
    data_seed = config.seed if data_seed is None else data_seed
    tf1.set_random_seed(config.seed)
    net = build_network(config, spec.num_classes)
    global_step = model_deploy.get_or_create_global_step(deploy_config)

    with tf1.device(deploy_config.inputs_device()), tf.name_scope("input"):
        dataset = build_input_dataset(config, spec, net, data_seed, deploy_config.num_replicas,
                                      deploy_config.replica_id)
        iterator = tf1.data.make_one_shot_iterator(dataset)

    clone_inputs = dequeue_clone_inputs(config, net, iterator, deploy_config)
    clones = model_deploy.create_clones(deploy_config, make_clone_fn(config, net, clone_inputs))
    first_clone = clones[0]

    sync = deploy_config.num_ps_tasks > 0 and config.sync_replicas
    if new_layers_only_steps and sync:
        raise ValueError("--new_layers_only_epochs and --unfreeze_at_step/--unfreeze_at_epoch cannot be combined "
                         "with --sync_replicas (SyncReplicasOptimizer applies one train op); pass "
                         "--new_layers_only_epochs=0, or train the two phases as two runs")
    with tf1.device(deploy_config.optimizer_device()):
        learning_rate = build_learning_rate(config, global_step, spec.num_samples, deploy_config,
                                            new_layers_only_steps)
        optimizer = build_optimizer(config, learning_rate)
        sync_optimizer = None
        if sync:
            sync_optimizer = optimizer = cluster.SyncReplicasOptimizer(
                optimizer, replicas_to_aggregate=replicas_per_step(config, deploy_config),
                total_num_replicas=deploy_config.num_replicas)
        accumulating, weight, clip_gradient_norm = None, None, config.clip_gradient_norm
        if config.accumulate_steps > 1:
            # Clipping moves into the accumulation: the applied gradient (the big batch's) is clipped, not each
            # micro-batch's.
            weight = micro_batch_weight(config, clone_inputs, deploy_config)
            accumulating = optimizer = gradient_accumulation.GradientAccumulationOptimizer(
                optimizer, config.accumulate_steps, micro_batch_weight=weight,
                clip_gradient_norm=config.clip_gradient_norm)
            clip_gradient_norm = 0.0
        # Outermost, so that each micro-batch's backward pass is scaled and an overflowing one is dropped.
        loss_scale_optimizer = None
        if mixed_precision.needs_loss_scaling(config.precision):
            loss_scale_optimizer = optimizer = mixed_precision.DynamicLossScaleOptimizer(optimizer)
    applied_updates = None  # the moving average follows applied updates only
    if accumulating is not None:
        applied_updates = accumulating.applied_updates
    elif loss_scale_optimizer is not None:
        applied_updates = loss_scale_optimizer.applied_updates

    first_phase_variables = None
    trainable_scopes = config.trainable_scopes
    if new_layers_only_steps and first_phase_scopes:
        first_phase_variables = train_op_lib.get_variables_to_train(first_phase_scopes, frozen_scopes)
        trainable_scopes = None  # after the switch: the whole network
    elif new_layers_only_steps:
        first_phase_variables = train_op_lib.get_variables_to_train(
            config.trainable_scopes, list(frozen_scopes) + ssd_vgg_common.vgg16_base_scopes(net.name))
    train = train_op_lib.build_train_op(
        deploy_config, clones, optimizer, global_step=global_step,
        variables_to_train=train_op_lib.get_variables_to_train(trainable_scopes, frozen_scopes),
        clip_gradient_norm=clip_gradient_norm, moving_average_decay=config.moving_average_decay,
        first_phase_variables=first_phase_variables,
        applied_updates=applied_updates,
    )

    summaries.add_loss_summaries(train.total_loss, clones)
    summaries.add_learning_rate_summary(learning_rate)
    if loss_scale_optimizer is not None:
        summaries.add_loss_scale_summaries(loss_scale_optimizer)
    end_points = {k: v for k, v in first_clone.outputs.items() if not k.startswith("_")}
    if config.summarize_activations:
        summaries.add_activation_summaries(end_points)
    if config.summarize_variables:
        summaries.add_variable_summaries(slim.get_model_variables())
    batch = first_clone.outputs["_batch"]
    if config.num_summary_images > 0:
        with tf1.device(deploy_config.inputs_device()):
            visualization.ground_truth_image_summary(
                batch["image"], batch["boxes"], batch["labels"], spec.labels_to_names,
                max_images=config.num_summary_images, name="training_images")

    return TrainingGraph(
        net=net, deploy_config=deploy_config, global_step=global_step, clones=clones, train=train,
        learning_rate=learning_rate, optimizer=optimizer, iterator=iterator, loss_terms=loss_terms_of(first_clone),
        sync_optimizer=sync_optimizer, new_layers_only_steps=new_layers_only_steps,
        warmup_steps=schedule_steps(config, spec.num_samples, deploy_config)[0], micro_batch_weight=weight,
        loss_scale_optimizer=loss_scale_optimizer,
    )
