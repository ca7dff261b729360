"""Multibox loss against a numpy implementation: per-image 3:1 mining, positives normalisation."""

import numpy as np
import pytest
import tensorflow as tf

from nets import multibox_loss
from tf_compat import slim, tf1


# ----------------------------------------------------------------------------- numpy reference
def _log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _smooth_l1(x):
    return np.where(np.abs(x) < 1, 0.5 * x * x, np.abs(x) - 0.5)


def reference_loss(logits, locs, gclasses, glocs, gscores, match_threshold=0.5, negative_ratio=3.0, alpha=1.0,
                   label_smoothing=0.0):
    logits = logits.astype(np.float64)
    num_classes = logits.shape[-1]
    log_probs = _log_softmax(logits)
    pos_sum = neg_sum = loc_sum = 0.0
    total_pos = 0
    chosen_negatives = []
    for b in range(logits.shape[0]):
        positives = np.flatnonzero(gclasses[b] > 0)
        candidates = np.flatnonzero((gclasses[b] == 0) & (gscores[b] < match_threshold))
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
    n = max(total_pos, 1)
    return (pos_sum / n, neg_sum / n, alpha * loc_sum / n), chosen_negatives


def _random_targets(rng, batch, anchors, classes, positives_per_image):
    logits = rng.normal(0, 2, (batch, anchors, classes)).astype(np.float32)
    locs = rng.normal(0, 1.5, (batch, anchors, 4)).astype(np.float32)
    glocs = rng.normal(0, 1, (batch, anchors, 4)).astype(np.float32)
    gclasses = np.zeros((batch, anchors), np.int64)
    gscores = rng.uniform(0, 0.5, (batch, anchors)).astype(np.float32)
    for b, count in enumerate(positives_per_image):
        chosen = rng.choice(anchors, count, replace=False)
        gclasses[b, chosen] = rng.integers(1, classes, count)
        gscores[b, chosen] = rng.uniform(0.5, 1.0, count)
    return logits, locs, gclasses, glocs, gscores


def _run_loss(inputs, **kwargs):
    with tf.Graph().as_default():
        losses = multibox_loss.multibox_loss(*[tf.constant(x) for x in inputs], **kwargs)
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
    logits, locs, gclasses, glocs, gscores = _random_targets(rng, 3, 80, 3, (4, 1, 30))
    gclasses[0, :10] = np.where(gclasses[0, :10] > 0, gclasses[0, :10], -1)  # some ignored anchors
    with tf.Graph().as_default():
        logits_t = tf.constant(logits)
        background = -tf.nn.log_softmax(logits_t)[..., 0]
        candidates = tf.equal(tf.constant(gclasses), 0) & (tf.constant(gscores) < 0.5)
        wanted = tf.constant([12, 3, 90], tf.int32)
        count = tf.minimum(wanted, tf.reduce_sum(tf.cast(candidates, tf.int32), axis=1))
        mask = multibox_loss.hard_negative_mask(background, candidates, count)
        with tf1.Session() as sess:
            mask_np = sess.run(mask)
    _, chosen = reference_loss(logits, locs, gclasses, glocs, gscores)
    available = ((gclasses == 0) & (gscores < 0.5)).sum(axis=1)
    assert mask_np.sum(axis=1).tolist() == [12, 3, min(90, available[2])]
    assert available[2] < 90  # the third image runs out of candidates
    for b in range(3):
        assert set(np.flatnonzero(mask_np[b]).tolist()) == chosen[b]
        assert not (mask_np[b] & (gclasses[b] != 0)).any()


def test_no_positives_gives_zero_and_finite_gradients():
    rng = np.random.default_rng(1)
    logits, locs, gclasses, glocs, gscores = _random_targets(rng, 2, 30, 3, (0, 0))
    with tf.Graph().as_default():
        logits_t, locs_t = tf.constant(logits), tf.constant(locs)
        losses = multibox_loss.multibox_loss(logits_t, locs_t, gclasses, glocs, gscores)
        grads = tf.gradients(tf.add_n(list(losses)), [logits_t, locs_t])
        with tf1.Session() as sess:
            values, grad_values = sess.run([losses, grads])
    assert values == (0.0, 0.0, 0.0)
    assert all(np.isfinite(g).all() for g in grad_values)


def test_gscores_threshold_excludes_negatives_like_caffe_neg_overlap():
    rng = np.random.default_rng(9)
    inputs = list(_random_targets(rng, 2, 40, 3, (3, 2)))
    inputs[4] = np.where(inputs[2] > 0, inputs[4], rng.uniform(0.0, 0.5, inputs[4].shape)).astype(np.float32)
    expected, _ = reference_loss(*inputs, match_threshold=0.2)
    np.testing.assert_allclose(_run_loss(inputs, match_threshold=0.2), expected, rtol=1e-5)


def test_per_layer_lists_equal_flattened_and_names_are_stable():
    rng = np.random.default_rng(4)
    shapes = [(3, 3, 2), (2, 2, 3), (1, 1, 4)]
    anchors = sum(h * w * k for h, w, k in shapes)
    logits, locs, gclasses, glocs, gscores = _random_targets(rng, 2, anchors, 3, (4, 2))

    def split(array):
        parts, start = [], 0
        for h, w, k in shapes:
            size = h * w * k
            parts.append(tf.constant(array[:, start : start + size].reshape((2, h, w, k) + array.shape[2:])))
            start += size
        return parts

    with tf.Graph().as_default():
        listed = multibox_loss.multibox_loss(split(logits), split(locs), split(gclasses), split(glocs), split(gscores))
        flat = multibox_loss.multibox_loss(logits, locs, gclasses, glocs, gscores, scope="flat_losses")
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
        multibox_loss.multibox_loss(tf.zeros([1, 2, 3]), tf.zeros([1, 2, 4]), tf.zeros([1, 2], tf.int64),
                                    tf.zeros([1, 2, 4]), tf.zeros([1, 2]), label_smoothing=1.0)
