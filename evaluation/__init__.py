"""Detection metrics on the host (VOC07 11-point, VOC area, COCO via pycocotools) and their TensorBoard/JSON output."""
__ssd_towers__ = True  # checked by package_guard
