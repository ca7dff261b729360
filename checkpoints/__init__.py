"""Pretrained / fine-tuning checkpoint layout and weight converters."""
__ssd_towers__ = True  # checked by package_guard: this is ssd-towers' 'checkpoints', not a namesake
