"""Multi-tower deployment (model_deploy) and the training glue."""
__ssd_towers__ = True  # checked by package_guard: this is ssd-towers' 'deployment', not a namesake
