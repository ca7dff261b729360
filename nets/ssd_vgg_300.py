"""SSD300 on VGG-16 (``ssd_300_vgg``): 6 feature layers, 8732 anchors at 300x300.

block10 and block11 shrink the map from 5x5 to 3x3 to 1x1 with unpadded 3x3 convolutions. The
numbers are the paper's and SSD-Tensorflow's: docs/design.md, "The network", tables them beside
SSD512's.
"""

from nets import ssd_net
from nets.ssd_vgg_common import ExtraBlock

NAME = "ssd_300_vgg"

ARCHITECTURE = ssd_net.vgg16_architecture(
    NAME,
    img_size=300,
    extra_blocks=(
        ExtraBlock("block8", bottleneck=256, channels=512, kernel=3, stride=2, pad=1),
        ExtraBlock("block9", bottleneck=128, channels=256, kernel=3, stride=2, pad=1),
        ExtraBlock("block10", bottleneck=128, channels=256, kernel=3, stride=1, pad=0),
        ExtraBlock("block11", bottleneck=128, channels=256, kernel=3, stride=1, pad=0),
    ),
    anchor_sizes=((21.0, 45.0), (45.0, 99.0), (99.0, 153.0), (153.0, 207.0), (207.0, 261.0), (261.0, 315.0)),
    anchors_per_cell=(4, 6, 6, 6, 4, 4),
    anchor_steps=(8, 16, 32, 64, 100, 300),
)
