"""ssd-towers: SSD object detection training on TensorFlow 2.x graph mode with TF-Slim towers."""

from setuptools import setup

# Top-level scripts are installed as modules so the console entry points below can
# import them; each entry point is the same program as `python <script>.py`.
SCRIPTS = {
    # console command: module
    "tf_convert_data": "tf_convert_data",
    "train_ssd_network": "train_ssd_network",
    "eval_ssd_network": "eval_ssd_network",
    "export_ssd_network": "export_ssd_network",
    "ssd_detect": "detect",
    "ssd_local_cluster": "launch_local_cluster",
}
TOOLS = {
    "ssd_convert_keras_vgg16": "checkpoints.convert_keras_vgg16",
    "ssd_check_vgg16_imagenet": "checkpoints.vgg16_imagenet_check",
    "ssd_convert_class_count": "checkpoints.convert_class_count",
    "ssd_inspect_checkpoint": "checkpoints.inspect_checkpoint",
    "ssd_anchor_coverage": "nets.anchor_coverage",
    "ssd_browse_data": "datasets.browse",
}

setup(
    name="ssd-towers",
    version="0.1.0",
    description="SSD object-detection trainer for TensorFlow 2.x graph mode (tf.compat.v1 + tf_slim), multi-GPU towers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["datasets", "nets", "preprocessing", "deployment", "checkpoints", "evaluation", "training"],
    py_modules=["tf_compat", "package_guard", "command_line", *SCRIPTS.values()],
    install_requires=[
        # tf_compat.py patches tf-slim 1.1.0 for TensorFlow 2.21 exactly; other
        # TensorFlow releases move the same internals elsewhere.
        "tensorflow>=2.21,<2.22",
        "tf-slim==1.1.0",
        "tensorboard>=2.21,<2.22",
        "numpy>=1.26,<3",
        "pillow>=10",
        "absl-py>=2.1",
        # COCO AP@[.5:.95] and the small/medium/large breakdown, computed by the reference code itself.
        "pycocotools>=2.0.7",
        # Streams COCO JSON (datasets/coco_json.py): json.load of COCO's polygons needs more than 4x the
        # file size (~450 MB for train2017) in Python objects; ijson's C backend keeps only the boxes.
        "ijson>=3.2",
        # Reads Keras' VGG-16 weights files (checkpoints/keras_vgg16.py); TensorFlow pulls it in too.
        "h5py>=3.10",
        # YOLO datasets name their classes and folders in data.yaml (datasets/yolo_text.py); read with
        # yaml.safe_load, which builds plain data only and refuses tags that would run code.
        "PyYAML>=6",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100"],
    },
    package_data={"checkpoints": ["*.json", "README.md"]},
    entry_points={
        "console_scripts": [f"{command}={module}:main" for command, module in {**SCRIPTS, **TOOLS}.items()],
    },
)
