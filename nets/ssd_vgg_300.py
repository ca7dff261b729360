"""SSD300 on VGG-16 (``ssd_300_vgg``): 6 feature layers, 8732 anchors at 300x300.

Reference numbers: DESIGN.md section 5 (SSD-Tensorflow's and the paper's SSD300).
"""

from nets import ssd_net
from nets.ssd_vgg_common import ExtraBlock

NAME = "ssd_300_vgg"

ARCHITECTURE = ssd_net.Architecture(
    name=NAME,
    reference_img_shape=(300, 300),
    extra_blocks=(
        ExtraBlock("block8", bottleneck=256, channels=512, kernel=3, stride=2, pad=1),
        ExtraBlock("block9", bottleneck=128, channels=256, kernel=3, stride=2, pad=1),
        ExtraBlock("block10", bottleneck=128, channels=256, kernel=3, stride=1, pad=0),
        ExtraBlock("block11", bottleneck=128, channels=256, kernel=3, stride=1, pad=0),
    ),
    feat_layers=("block4", "block7", "block8", "block9", "block10", "block11"),
    anchor_sizes=((21.0, 45.0), (45.0, 99.0), (99.0, 153.0), (153.0, 207.0), (207.0, 261.0), (261.0, 315.0)),
    anchor_ratios=(
        (2, 0.5),
        (2, 0.5, 3, 1.0 / 3),
        (2, 0.5, 3, 1.0 / 3),
        (2, 0.5, 3, 1.0 / 3),
        (2, 0.5),
        (2, 0.5),
    ),
    reference_anchor_steps=(8, 16, 32, 64, 100, 300),
    normalizations=(20, -1, -1, -1, -1, -1),
)


def default_params(img_shape=None, num_classes=21):
    return ssd_net.default_params(ARCHITECTURE, img_shape, num_classes)


def SSDNet(params=None):  # noqa: N802  (reads like the class it builds, as in SSD-Tensorflow)
    return ssd_net.SSDNet(ARCHITECTURE, params or default_params())
