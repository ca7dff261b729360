"""Name -> preprocessing function, as in TF-Slim's ``preprocessing_factory``.

Both SSD VGG networks share one pipeline; the caller supplies ``out_shape`` from the
network's parameters (300x300 or 512x512).

    fn = get_preprocessing('ssd_300_vgg', is_training=True)
    image, labels, boxes, difficult = fn(image, labels, boxes, difficult, out_shape, seed, options)
    fn = get_preprocessing('ssd_300_vgg', is_training=False)
    image, labels, boxes, difficult, info = fn(image, labels, boxes, difficult, out_shape, resize_mode='warp')
"""

from preprocessing import ssd_vgg_preprocessing

PREPROCESSING_BY_NETWORK = {
    "ssd_300_vgg": ssd_vgg_preprocessing,
    "ssd_512_vgg": ssd_vgg_preprocessing,
}


def get_preprocessing(name, is_training):
    """The training (``preprocess_for_train``) or evaluation (``preprocess_for_eval``) function of ``name``."""
    if name not in PREPROCESSING_BY_NETWORK:
        raise ValueError(
            f"no preprocessing for network {name!r}; known: {', '.join(sorted(PREPROCESSING_BY_NETWORK))}"
        )
    module = PREPROCESSING_BY_NETWORK[name]
    return module.preprocess_for_train if is_training else module.preprocess_for_eval
