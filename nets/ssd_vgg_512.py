"""SSD512 on VGG-16 (``ssd_512_vgg``): 7 feature layers, 24564 anchors at 512x512.

Reference numbers: DESIGN.md section 5 (SSD-Tensorflow's and the paper's SSD512).
"""

from nets import ssd_net
from nets.ssd_vgg_common import ExtraBlock

NAME = "ssd_512_vgg"

ARCHITECTURE = ssd_net.Architecture(
    name=NAME,
    reference_img_shape=(512, 512),
    extra_blocks=(
        ExtraBlock("block8", bottleneck=256, channels=512, kernel=3, stride=2, pad=1),
        ExtraBlock("block9", bottleneck=128, channels=256, kernel=3, stride=2, pad=1),
        ExtraBlock("block10", bottleneck=128, channels=256, kernel=3, stride=2, pad=1),
        ExtraBlock("block11", bottleneck=128, channels=256, kernel=3, stride=2, pad=1),
        ExtraBlock("block12", bottleneck=128, channels=256, kernel=4, stride=1, pad=1),
    ),
    feat_layers=("block4", "block7", "block8", "block9", "block10", "block11", "block12"),
    anchor_sizes=(
        (20.48, 51.2),
        (51.2, 133.12),
        (133.12, 215.04),
        (215.04, 296.96),
        (296.96, 378.88),
        (378.88, 460.8),
        (460.8, 542.72),
    ),
    anchor_ratios=(
        (2, 0.5),
        (2, 0.5, 3, 1.0 / 3),
        (2, 0.5, 3, 1.0 / 3),
        (2, 0.5, 3, 1.0 / 3),
        (2, 0.5, 3, 1.0 / 3),
        (2, 0.5),
        (2, 0.5),
    ),
    reference_anchor_steps=(8, 16, 32, 64, 128, 256, 512),
    normalizations=(20, -1, -1, -1, -1, -1, -1),
)


def default_params(img_shape=None, num_classes=21):
    return ssd_net.default_params(ARCHITECTURE, img_shape, num_classes)


def SSDNet(params=None):  # noqa: N802  (reads like the class it builds, as in SSD-Tensorflow)
    return ssd_net.SSDNet(ARCHITECTURE, params or default_params())
