"""SSD multibox loss as in the paper: per-image 3:1 hard negatives, normalised by the positives.

    L = (L_conf_pos + L_conf_neg + alpha * L_loc) / N,   N = positives in the batch (>= 1)

It reads explicit targets (:class:`nets.matching.Targets`):

- Positives: anchors with ``positive_weights > 0`` (classification and localisation).
- Negative candidates: anchors with ``negative_weights > 0``; ignored anchors have both weights 0.
- Hard negatives: per image, the ``floor(negative_ratio * positives_in_image)`` candidates with
  the highest background cross-entropy (fewer when there are fewer candidates; none for an image
  without positives, as in Caffe's MultiBoxLoss). Ties go to the lower anchor index.
- Localisation: smooth L1 over the four offsets of positives.
- ``label_smoothing`` eps replaces the one-hot class targets by ``(1 - eps) * onehot + eps / C``
  for positives and negatives alike.
- ``normaliser``: N, by default the positives of this batch. Towers pass the positives of the
  whole step divided by the number of towers (:func:`step_normaliser`), so that the average of
  the towers' gradients is the gradient of one tower on all their images.

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


def count_positives(targets):
    """Positive anchors in a batch of targets, a float32 scalar."""
    return tf.reduce_sum(flatten_layers(targets.positive_weights, 0))


def step_normaliser(positive_counts):
    """The loss normaliser of each of ``len(positive_counts)`` towers that train one step together:
    ``max(sum of their positives, 1) / towers``, which makes every tower's loss share the
    denominator of one tower trained on all the step's images."""
    with tf.name_scope("step_normaliser"):
        total = tf.add_n([tf.cast(count, tf.float32) for count in positive_counts])
        return tf.maximum(total, 1.0) / float(len(positive_counts))


def multibox_loss(
    logits,
    localisations,
    targets,
    negative_ratio=3.0,
    alpha=1.0,
    label_smoothing=0.0,
    normaliser=None,
    scope=None,
    loss_collection=tf1.GraphKeys.LOSSES,
):
    """The three loss terms (a :class:`MultiboxLosses`), also added to ``loss_collection`` (None: to no
    collection, for a loss that is measured, not trained, such as a validation's).

    ``logits`` [B, A, C] or per-layer [B, H, W, K, C]; ``localisations`` [B, A, 4] or per-layer
    [B, H, W, K, 4]; ``targets`` a :class:`nets.matching.Targets` of [B, A] (``boxes`` [B, A, 4])
    tensors or per-layer lists of them. ``normaliser``: a scalar (see the module docstring);
    default ``max(positives in this batch, 1)``.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
    if negative_ratio < 0.0:
        raise ValueError(f"negative_ratio must be >= 0, got {negative_ratio}")
    with tf.name_scope(scope or "ssd_losses"):
        logits = flatten_layers(logits, 1)
        localisations = flatten_layers(localisations, 1)
        num_classes = logits.shape[-1]
        if num_classes is None:
            raise ValueError("multibox_loss needs a static number of classes in the logits' last dimension")
        dtype = logits.dtype
        class_targets = tf.cast(flatten_layers(targets.classes, 0), tf.int64)
        box_targets = tf.cast(flatten_layers(targets.boxes, 1), dtype)
        pos_weights = tf.cast(flatten_layers(targets.positive_weights, 0), dtype)
        candidates = flatten_layers(targets.negative_weights, 0) > 0

        positives_per_image = tf.reduce_sum(pos_weights, axis=1)
        wanted = tf.cast(tf.floor(negative_ratio * tf.cast(positives_per_image, tf.float32)), tf.int32)
        num_negatives = tf.minimum(wanted, tf.reduce_sum(tf.cast(candidates, tf.int32), axis=1))

        cross_entropy = _cross_entropy(logits, class_targets, num_classes, label_smoothing)
        background_loss = tf.stop_gradient(
            _cross_entropy(logits, tf.zeros_like(class_targets), num_classes, 0.0)
        )
        negatives = hard_negative_mask(background_loss, candidates, num_negatives)

        if normaliser is None:
            normaliser = tf.maximum(tf.reduce_sum(positives_per_image), 1.0)
        normaliser = tf.cast(normaliser, dtype)
        neg_weights = tf.cast(negatives, dtype)
        with tf.name_scope("cross_entropy_pos"):
            loss_pos = tf.math.divide(tf.reduce_sum(cross_entropy * pos_weights), normaliser, name="value")
            tf1.losses.add_loss(loss_pos, loss_collection=loss_collection)
        with tf.name_scope("cross_entropy_neg"):
            loss_neg = tf.math.divide(tf.reduce_sum(cross_entropy * neg_weights), normaliser, name="value")
            tf1.losses.add_loss(loss_neg, loss_collection=loss_collection)
        with tf.name_scope("localization"):
            per_anchor = tf.reduce_sum(smooth_l1(localisations - box_targets), axis=-1)
            loss_loc = tf.math.divide(alpha * tf.reduce_sum(per_anchor * pos_weights), normaliser, name="value")
            tf1.losses.add_loss(loss_loc, loss_collection=loss_collection)
        return MultiboxLosses(loss_pos, loss_neg, loss_loc)
