"""SSD networks on VGG-16 and the box machinery: anchors, matching, coding, loss, post-processing."""
__ssd_towers__ = True  # checked by package_guard: this is ssd-towers' 'nets', not a namesake
