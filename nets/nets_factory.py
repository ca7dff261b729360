"""Network name -> SSDNet with its default parameters (overridable), arg scope and anchors."""

from nets import ssd_net, ssd_vgg_300, ssd_vgg_512

_ARCHITECTURES = {
    ssd_vgg_300.NAME: ssd_vgg_300.ARCHITECTURE,
    ssd_vgg_512.NAME: ssd_vgg_512.ARCHITECTURE,
}


def list_networks():
    return sorted(_ARCHITECTURES)


def get_network(name, **overrides):
    """An :class:`nets.ssd_net.SSDNet` for ``name`` (see :func:`list_networks`).

    ``overrides`` are :class:`nets.ssd_net.SSDParams` fields. ``img_shape`` and
    ``num_classes`` rebuild the defaults for that input size (feature shapes, steps and anchor
    sizes follow); other fields replace the resulting values as given.
    """
    if name not in _ARCHITECTURES:
        raise ValueError(f"unknown network {name!r}; known: {', '.join(list_networks())}")
    unknown = set(overrides) - ssd_net.PARAM_NAMES
    if unknown:
        raise ValueError(f"unknown SSD parameters {sorted(unknown)}; known: {sorted(ssd_net.PARAM_NAMES)}")
    architecture = _ARCHITECTURES[name]
    params = ssd_net.default_params(
        architecture, overrides.pop("img_shape", None), overrides.pop("num_classes", 21)
    )
    return ssd_net.SSDNet(architecture, params._replace(**overrides))


def parse_image_size(text):
    """'S', 'H,W' or 'HxW' -> (H, W); None/'' -> None."""
    if text is None or text == "":
        return None
    if isinstance(text, (tuple, list)):
        parts = [int(v) for v in text]
    else:
        parts = [int(p) for p in str(text).replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise ValueError(f"image size must be 'S' or 'H,W' with positive sizes, got {text!r}")
    return tuple(parts)
