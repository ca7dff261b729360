"""SSD multibox loss as in the paper: per-image 3:1 hard negatives, normalised by the positives.

    L = (L_conf_pos + L_conf_neg + alpha * L_loc) / N,   N = positives in the batch (>= 1)

- Positives: anchors with ``gclasses > 0`` (the matcher decided, forced best-anchor matches
  included).
- Negative candidates: ``gclasses == 0`` and ``gscores < match_threshold`` (Caffe's
  ``neg_overlap``; with the default matcher and the same threshold this is every unmatched
  anchor). ``gclasses == -1`` (ignore band) is never used.
- Hard negatives: per image, the ``floor(negative_ratio * positives_in_image)`` candidates with
  the highest background cross-entropy (fewer when there are fewer candidates; none for an image
  without positives, as in Caffe's MultiBoxLoss). Ties go to the lower anchor index.
- Localisation: smooth L1 over the four offsets of positives.
- ``label_smoothing`` eps replaces the one-hot class targets by ``(1 - eps) * onehot + eps / C``
  for positives and negatives alike.

The three terms are added to ``tf.compat.v1.losses`` (the collection ``slim.losses`` reads) as
tensors named ``<scope>/cross_entropy_pos/value``, ``<scope>/cross_entropy_neg/value`` and
``<scope>/localization/value``.
"""

import collections

import tensorflow as tf

from nets.layer_outputs import flatten_layers
from tf_compat import tf1

MultiboxLosses = collections.namedtuple("MultiboxLosses", ["cross_entropy_pos", "cross_entropy_neg", "localization"])


def smooth_l1(x):
    """Huber loss with delta 1, elementwise."""
    absx = tf.abs(x)
    return tf.where(absx < 1.0, 0.5 * tf.square(x), absx - 0.5)


def hard_negative_mask(background_loss, candidates, num_negatives):
    """Per row, the ``num_negatives[b]`` candidates with the highest loss (stable: lower index first).

    background_loss [B, A], candidates [B, A] bool, num_negatives [B] int32 (<= candidates per row).
    """
    ranked = tf.where(candidates, background_loss, tf.fill(tf.shape(background_loss), -float("inf")))
    order = tf.argsort(ranked, axis=1, direction="DESCENDING", stable=True)
    rank = tf.argsort(order, axis=1, stable=True)
    return candidates & (rank < num_negatives[:, tf.newaxis])


def _cross_entropy(logits, labels, num_classes, label_smoothing):
    if label_smoothing > 0.0:
        targets = tf.one_hot(labels, num_classes, dtype=logits.dtype)
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
        return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def multibox_loss(
    logits,
    localisations,
    gclasses,
    glocalisations,
    gscores,
    match_threshold=0.5,
    negative_ratio=3.0,
    alpha=1.0,
    label_smoothing=0.0,
    scope=None,
):
    """The three loss terms (a :class:`MultiboxLosses`), also added to the LOSSES collection.

    ``logits`` [B, A, C] or per-layer [B, H, W, K, C]; ``localisations`` / ``glocalisations``
    [B, A, 4] or per-layer [B, H, W, K, 4]; ``gclasses`` / ``gscores`` [B, A] or per-layer
    [B, H, W, K].
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
    with tf.name_scope(scope or "ssd_losses"):
        logits = flatten_layers(logits, 1)
        localisations = flatten_layers(localisations, 1)
        gclasses = tf.cast(flatten_layers(gclasses, 0), tf.int64)
        glocalisations = flatten_layers(glocalisations, 1)
        gscores = flatten_layers(gscores, 0)
        num_classes = logits.shape[-1]
        if num_classes is None:
            raise ValueError("multibox_loss needs a static number of classes in the logits' last dimension")
        dtype = logits.dtype

        positives = gclasses > 0
        candidates = tf.equal(gclasses, 0) & (gscores < match_threshold)
        positives_per_image = tf.reduce_sum(tf.cast(positives, tf.int32), axis=1)
        wanted = tf.cast(tf.floor(negative_ratio * tf.cast(positives_per_image, tf.float32)), tf.int32)
        num_negatives = tf.minimum(wanted, tf.reduce_sum(tf.cast(candidates, tf.int32), axis=1))

        class_targets = tf.maximum(gclasses, 0)
        cross_entropy = _cross_entropy(logits, class_targets, num_classes, label_smoothing)
        background_loss = tf.stop_gradient(
            _cross_entropy(logits, tf.zeros_like(class_targets), num_classes, 0.0)
        )
        negatives = hard_negative_mask(background_loss, candidates, num_negatives)

        normaliser = tf.maximum(tf.cast(tf.reduce_sum(positives_per_image), dtype), 1.0)
        pos_weights = tf.cast(positives, dtype)
        neg_weights = tf.cast(negatives, dtype)
        with tf.name_scope("cross_entropy_pos"):
            loss_pos = tf.math.divide(tf.reduce_sum(cross_entropy * pos_weights), normaliser, name="value")
            tf1.losses.add_loss(loss_pos)
        with tf.name_scope("cross_entropy_neg"):
            loss_neg = tf.math.divide(tf.reduce_sum(cross_entropy * neg_weights), normaliser, name="value")
            tf1.losses.add_loss(loss_neg)
        with tf.name_scope("localization"):
            per_anchor = tf.reduce_sum(smooth_l1(localisations - glocalisations), axis=-1)
            loss_loc = tf.math.divide(alpha * tf.reduce_sum(per_anchor * pos_weights), normaliser, name="value")
            tf1.losses.add_loss(loss_loc)
        return MultiboxLosses(loss_pos, loss_neg, loss_loc)
