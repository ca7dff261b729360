"""Multibox loss against a numpy implementation: per-image 3:1 mining, positives normalisation.

The loss reads explicit targets (nets.matching.Targets): which anchors are positives and which are
negative candidates comes from the weights, never from a threshold."""

import numpy as np
import pytest
import tensorflow as tf

from nets import matching, multibox_loss
from tf_compat import slim, tf1


# ----------------------------------------------------------------------------- numpy reference
def _log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _smooth_l1(x):
    return np.where(np.abs(x) < 1, 0.5 * x * x, np.abs(x) - 0.5)


def reference_loss(logits, locs, targets, negative_ratio=3.0, alpha=1.0, label_smoothing=0.0, normaliser=None):
    logits = logits.astype(np.float64)
    num_classes = logits.shape[-1]
    log_probs = _log_softmax(logits)
    pos_sum = neg_sum = loc_sum = 0.0
    total_pos = 0
    chosen_negatives = []
    gclasses, glocs = targets.classes, targets.boxes
    for b in range(logits.shape[0]):
        positives = np.flatnonzero(targets.positive_weights[b] > 0)
        candidates = np.flatnonzero(targets.negative_weights[b] > 0)
        count = min(int(np.floor(negative_ratio * len(positives))), len(candidates))
        background_loss = -log_probs[b, candidates, 0]
        order = np.argsort(-background_loss, kind="stable")
        negatives = candidates[order[:count]]
        chosen_negatives.append(set(negatives.tolist()))

        def cross_entropy(anchor, label):
            target = np.full(num_classes, label_smoothing / num_classes)
            target[label] += 1.0 - label_smoothing
            return -(target * log_probs[b, anchor]).sum()

        pos_sum += sum(cross_entropy(a, gclasses[b, a]) for a in positives)
        neg_sum += sum(cross_entropy(a, 0) for a in negatives)
        loc_sum += sum(_smooth_l1(locs[b, a] - glocs[b, a]).sum() for a in positives)
        total_pos += len(positives)
    n = max(total_pos, 1) if normaliser is None else normaliser
    return (pos_sum / n, neg_sum / n, alpha * loc_sum / n), chosen_negatives


def _random_targets(rng, batch, anchors, classes, positives_per_image, ignored_per_image=0):
    """(logits, locs, Targets): positives with random labels, ``ignored_per_image`` ignored anchors,
    every other anchor a negative candidate."""
    logits = rng.normal(0, 2, (batch, anchors, classes)).astype(np.float32)
    locs = rng.normal(0, 1.5, (batch, anchors, 4)).astype(np.float32)
    glocs = rng.normal(0, 1, (batch, anchors, 4)).astype(np.float32)
    gclasses = np.zeros((batch, anchors), np.int64)
    positive = np.zeros((batch, anchors), np.float32)
    negative = np.ones((batch, anchors), np.float32)
    ious = rng.uniform(0, 0.5, (batch, anchors)).astype(np.float32)
    for b, count in enumerate(positives_per_image):
        chosen = rng.choice(anchors, count + ignored_per_image, replace=False)
        gclasses[b, chosen[:count]] = rng.integers(1, classes, count)
        positive[b, chosen[:count]] = 1.0
        negative[b, chosen] = 0.0
    glocs = np.where(positive[..., None] > 0, glocs, 0.0).astype(np.float32)
    return logits, locs, matching.Targets(gclasses, glocs, positive, negative, ious)


def _constant_targets(targets):
    return matching.Targets(*(tf.constant(t) for t in targets))


def _run_loss(inputs, **kwargs):
    logits, locs, targets = inputs
    with tf.Graph().as_default():
        losses = multibox_loss.multibox_loss(tf.constant(logits), tf.constant(locs), _constant_targets(targets),
                                             **kwargs)
        with tf1.Session() as sess:
            return sess.run(losses)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("positives", [(5, 2, 9), (1,), (0, 4), (40, 3)])
def test_matches_numpy_reference(positives):
    rng = np.random.default_rng(sum(positives) + len(positives))
    inputs = _random_targets(rng, len(positives), 60, 4, positives)
    expected, _ = reference_loss(*inputs)
    np.testing.assert_allclose(_run_loss(inputs), expected, rtol=1e-5, atol=1e-6)


def test_label_smoothing_alpha_and_ratio_apply():
    rng = np.random.default_rng(5)
    inputs = _random_targets(rng, 2, 50, 5, (3, 6))
    kwargs = dict(negative_ratio=2.0, alpha=0.5, label_smoothing=0.1)
    expected, _ = reference_loss(*inputs, **kwargs)
    actual = _run_loss(inputs, **kwargs)
    np.testing.assert_allclose(actual, expected, rtol=1e-5)
    plain = _run_loss(inputs, negative_ratio=2.0, alpha=0.5)
    assert abs(actual[0] - plain[0]) > 1e-3  # smoothing really changes the loss


def test_hard_negatives_are_three_times_the_positives_per_image():
    rng = np.random.default_rng(2)
    logits, locs, targets = _random_targets(rng, 3, 80, 3, (4, 1, 30), ignored_per_image=10)
    with tf.Graph().as_default():
        logits_t = tf.constant(logits)
        background = -tf.nn.log_softmax(logits_t)[..., 0]
        candidates = tf.constant(targets.negative_weights) > 0
        wanted = tf.constant([12, 3, 90], tf.int32)
        count = tf.minimum(wanted, tf.reduce_sum(tf.cast(candidates, tf.int32), axis=1))
        mask = multibox_loss.hard_negative_mask(background, candidates, count)
        with tf1.Session() as sess:
            mask_np = sess.run(mask)
    _, chosen = reference_loss(logits, locs, targets)
    available = (targets.negative_weights > 0).sum(axis=1)
    assert mask_np.sum(axis=1).tolist() == [12, 3, min(90, available[2])]
    assert available[2] < 90  # the third image runs out of candidates
    for b in range(3):
        assert set(np.flatnonzero(mask_np[b]).tolist()) == chosen[b]
        assert not (mask_np[b] & (targets.negative_weights[b] == 0)).any()  # never a positive or an ignored anchor


def test_no_positives_gives_zero_and_finite_gradients():
    rng = np.random.default_rng(1)
    logits, locs, targets = _random_targets(rng, 2, 30, 3, (0, 0))
    with tf.Graph().as_default():
        logits_t, locs_t = tf.constant(logits), tf.constant(locs)
        losses = multibox_loss.multibox_loss(logits_t, locs_t, _constant_targets(targets))
        grads = tf.gradients(tf.add_n(list(losses)), [logits_t, locs_t])
        with tf1.Session() as sess:
            values, grad_values = sess.run([losses, grads])
    assert values == (0.0, 0.0, 0.0)
    assert all(np.isfinite(g).all() for g in grad_values)


def test_ignored_anchors_are_neither_positives_nor_negatives():
    rng = np.random.default_rng(9)
    inputs = _random_targets(rng, 2, 40, 3, (3, 2), ignored_per_image=25)
    expected, chosen = reference_loss(*inputs)
    np.testing.assert_allclose(_run_loss(inputs), expected, rtol=1e-5)
    # 3:1 from the 12 (13) candidates left after 25 ignored anchors; the ignored ones would have been mined.
    assert [len(c) for c in chosen] == [9, 6]
    logits, locs, targets = inputs
    all_candidates = targets._replace(negative_weights=1.0 - targets.positive_weights)
    assert abs(_run_loss((logits, locs, all_candidates))[1] - expected[1]) > 1e-3


def test_a_given_normaliser_replaces_the_positive_count():
    rng = np.random.default_rng(6)
    inputs = _random_targets(rng, 2, 50, 4, (3, 5))
    expected, _ = reference_loss(*inputs, normaliser=2.5)
    np.testing.assert_allclose(_run_loss(inputs, normaliser=2.5), expected, rtol=1e-5)
    own, _ = reference_loss(*inputs)
    np.testing.assert_allclose(np.array(expected) * 2.5, np.array(own) * 8, rtol=1e-6)


def test_step_normaliser_hand_worked():
    # Two towers with 3 and 5 positives: each divides by (3 + 5) / 2 = 4, and their average
    # (model_deploy's 1/2 scaling) divides the step's summed terms by 8, as one tower on both batches.
    # Without positives anywhere, max(0, 1) / 2.
    with tf.Graph().as_default(), tf1.Session() as sess:
        targets = [matching.Targets(None, None, tf.constant([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]]), None, None),
                   matching.Targets(None, None, tf.constant([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]), None, None)]
        counts = [multibox_loss.count_positives(t) for t in targets]
        assert sess.run(counts) == [3.0, 5.0]
        assert sess.run(multibox_loss.step_normaliser(counts)) == 4.0
        assert sess.run(multibox_loss.step_normaliser([tf.constant(0.0), tf.constant(0.0)])) == 0.5


def test_per_layer_lists_equal_flattened_and_names_are_stable():
    rng = np.random.default_rng(4)
    shapes = [(3, 3, 2), (2, 2, 3), (1, 1, 4)]
    anchors = sum(h * w * k for h, w, k in shapes)
    logits, locs, targets = _random_targets(rng, 2, anchors, 3, (4, 2))

    def split(array):
        parts, start = [], 0
        for h, w, k in shapes:
            size = h * w * k
            parts.append(tf.constant(array[:, start : start + size].reshape((2, h, w, k) + array.shape[2:])))
            start += size
        return parts

    with tf.Graph().as_default():
        listed = multibox_loss.multibox_loss(split(logits), split(locs), matching.Targets(*map(split, targets)))
        flat = multibox_loss.multibox_loss(logits, locs, _constant_targets(targets), scope="flat_losses")
        names = [t.op.name for t in tf1.get_collection(tf1.GraphKeys.LOSSES)]
        assert names[:3] == [
            "ssd_losses/cross_entropy_pos/value",
            "ssd_losses/cross_entropy_neg/value",
            "ssd_losses/localization/value",
        ]
        assert names[3:] == [n.replace("ssd_losses", "flat_losses") for n in names[:3]]
        assert len(slim.losses.get_losses()) == 6
        with tf1.Session() as sess:
            listed_np, flat_np = sess.run([listed, flat])
    np.testing.assert_allclose(listed_np, flat_np, rtol=1e-6)


def test_bad_label_smoothing_is_rejected():
    with tf.Graph().as_default(), pytest.raises(ValueError, match="label_smoothing"):
        multibox_loss.multibox_loss(tf.zeros([1, 2, 3]), tf.zeros([1, 2, 4]), matching.Targets(
            tf.zeros([1, 2], tf.int64), tf.zeros([1, 2, 4]), tf.zeros([1, 2]), tf.zeros([1, 2]), tf.zeros([1, 2])),
            label_smoothing=1.0)
