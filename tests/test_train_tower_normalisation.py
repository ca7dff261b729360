"""Towers that train like one big batch: 2 CPU towers x B images == 1 tower x 2B images, gradient by gradient.

The multibox loss divides by the positives; with ``--loss_normalization=step`` every tower divides by
the positives of the whole step over the number of towers, so the towers' averaged gradient is the
single-tower gradient on the concatenated batch. SSD300 at 64x64 (390 anchors), fixed images and
boxes with different box counts per image (the towers' positive counts differ), the trainer's own
clone inputs and clone function, model_deploy's gradient averaging.
"""

import numpy as np
import pytest
import tensorflow as tf

from deployment import devices, model_deploy
from nets import matching
from tf_compat import tf1
from training import graph as graph_lib, machines
from training.config import TrainingConfig

IMAGE_SIZE = 64
NUM_CLASSES = 4
RNG = np.random.default_rng(21)
IMAGES = RNG.uniform(-60, 60, (4, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
BOX_COUNTS = (1, 5, 2, 7)  # tower 0 gets 6 boxes, tower 1 gets 9


def _boxes():
    labels = np.zeros([4, max(BOX_COUNTS)], np.int64)
    boxes = np.zeros([4, max(BOX_COUNTS), 4], np.float32)
    for i, count in enumerate(BOX_COUNTS):
        centre = RNG.uniform(0.2, 0.8, (count, 2))
        size = RNG.uniform(0.1, 0.5, (count, 2))
        boxes[i, :count] = np.clip(np.concatenate([centre - size / 2, centre + size / 2], axis=1), 0, 1)
        labels[i, :count] = RNG.integers(1, NUM_CLASSES, count)
    return labels, boxes


LABELS, BOXES = _boxes()


class _FixedBatches:
    """Stands in for the trainer's iterator: each get_next() is the next slice of the fixed images."""

    def __init__(self, opts, net, num_batches):
        self._batches = []
        size = len(IMAGES) // num_batches
        for i in range(num_batches):
            part = slice(i * size, (i + 1) * size)
            batch = {"image": tf.constant(IMAGES[part]), "labels": tf.constant(LABELS[part]),
                     "boxes": tf.constant(BOXES[part])}
            if opts.encode_targets_in == "input":
                batch.update(matching.targets_to_dict(net.bboxes_encode(batch["labels"], batch["boxes"])))
            self._batches.append(batch)

    def get_next(self):
        return self._batches.pop(0)


def _gradients(num_clones, initial_values, **options):
    """({variable name: averaged gradient}, {variable name: initial value}) of one step's graph."""
    opts = TrainingConfig(
        image_size=str(IMAGE_SIZE), batch_size=len(IMAGES) // num_clones, num_clones=num_clones,
        clone_on_cpu=num_clones > 1, **options)
    with tf.Graph().as_default():
        tf1.set_random_seed(0)
        net = graph_lib.build_network(opts, NUM_CLASSES)
        config = machines.deployment_for(opts)
        with tf1.device(config.inputs_device()):
            iterator = _FixedBatches(opts, net, num_clones)
        clones = graph_lib.build_clones(opts, net, iterator, config)
        _, grads_and_vars = model_deploy.optimize_clones(
            clones, tf1.train.GradientDescentOptimizer(1.0), averaging_device=config.optimizer_device())
        names = [v.op.name for _, v in grads_and_vars]
        with tf1.Session(config=devices.session_config()) as session:
            session.run(tf1.global_variables_initializer())
            if initial_values is None:
                initial_values = dict(zip(names, session.run([v for _, v in grads_and_vars])))
            else:
                for _, var in grads_and_vars:
                    var.load(initial_values[var.op.name], session)
            grads = session.run([g for g, _ in grads_and_vars])
            clone_devices = {clone.device for clone in clones}
    assert len(clone_devices) == num_clones
    return dict(zip(names, grads)), initial_values


def _worst_relative_difference(grads, reference):
    """Max over variables of max |g - ref| / max |ref| (each variable relative to its own scale; a
    variable whose reference gradient is all zeros must have all zeros)."""
    worst = 0.0
    for name, expected in reference.items():
        difference = float(np.abs(grads[name] - expected).max())
        scale = float(np.abs(expected).max())
        worst = max(worst, difference / scale if scale > 0 else (0.0 if difference == 0 else np.inf))
    return worst


@pytest.mark.parametrize("encode_targets_in", ["input", "tower"])
def test_two_towers_give_the_single_tower_gradient_on_the_concatenated_batch(encode_targets_in):
    one_tower, initial = _gradients(1, None, encode_targets_in=encode_targets_in)
    two_towers, _ = _gradients(2, initial, encode_targets_in=encode_targets_in)
    assert set(two_towers) == set(one_tower) and len(one_tower) > 40  # every conv, head and L2 scale
    assert _worst_relative_difference(two_towers, one_tower) <= 1e-5


def test_each_tower_on_its_own_positives_differs_so_the_comparison_is_not_vacuous():
    one_tower, initial = _gradients(1, None)
    per_clone, _ = _gradients(2, initial, loss_normalization="clone")
    assert _worst_relative_difference(per_clone, one_tower) > 1e-2
