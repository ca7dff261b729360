"""SSD512 on VGG-16 (``ssd_512_vgg``): 7 feature layers, 24564 anchors at 512x512.

Every extra block halves its map (padded 3x3 convolutions of stride 2) down to 2x2, and block12's
padded 4x4 convolution makes the last 1x1 map. At 512x512 the steps are exactly input / map size.
The numbers are the paper's and SSD-Tensorflow's: docs/design.md, "The network", tables them
beside SSD300's.
"""

from nets import ssd_net
from nets.ssd_vgg_common import ExtraBlock

NAME = "ssd_512_vgg"

# A padded 3x3 convolution of stride 2: halves the map (rounding up).
_HALVING = dict(kernel=3, stride=2, pad=1)

ARCHITECTURE = ssd_net.vgg16_architecture(
    NAME,
    img_size=512,
    extra_blocks=(
        ExtraBlock("block8", bottleneck=256, channels=512, **_HALVING),
        ExtraBlock("block9", bottleneck=128, channels=256, **_HALVING),
        ExtraBlock("block10", bottleneck=128, channels=256, **_HALVING),
        ExtraBlock("block11", bottleneck=128, channels=256, **_HALVING),
        ExtraBlock("block12", bottleneck=128, channels=256, kernel=4, stride=1, pad=1),
    ),
    anchor_sizes=(
        (20.48, 51.2),
        (51.2, 133.12),
        (133.12, 215.04),
        (215.04, 296.96),
        (296.96, 378.88),
        (378.88, 460.8),
        (460.8, 542.72),
    ),
    anchors_per_cell=(4, 6, 6, 6, 6, 4, 4),
    anchor_steps=(8, 16, 32, 64, 128, 256, 512),
)
