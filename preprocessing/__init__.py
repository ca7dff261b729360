"""SSD training augmentation and evaluation preprocessing (graph ops for the CPU input pipeline)."""
__ssd_towers__ = True  # checked by package_guard: this is ssd-towers' 'preprocessing', not a namesake
