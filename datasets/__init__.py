"""Dataset conversion (VOC / labelImg to TFRecords), the TFRecord schema and the tf.data reader."""
__ssd_towers__ = True  # checked by package_guard: this is ssd-towers' 'datasets', not a namesake
