"""Per-feature-layer head outputs <-> one tensor over all anchors."""

import tensorflow as tf


def flatten_layers(tensors, trailing_dims):
    """A per-layer list [B, H, W, K, *trailing] (or one tensor [B, A, *trailing]) -> [B, A, *trailing].

    The trailing dimensions (0 or 1 of them) must be static.
    """
    if not isinstance(tensors, (list, tuple)):
        return tf.convert_to_tensor(tensors)
    flat = []
    for tensor in tensors:
        tensor = tf.convert_to_tensor(tensor)
        trailing = tensor.shape.as_list()[tensor.shape.rank - trailing_dims :]
        flat.append(tf.reshape(tensor, [tf.shape(tensor)[0], -1] + trailing))
    return tf.concat(flat, axis=1)
