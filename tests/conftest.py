"""Test-wide setup: quiet TensorFlow, graph mode, two logical CPU devices, shared-data paths."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# A shell inside a Kubernetes job may carry a TF_CONFIG: the trainer would read it as the cluster of
# every test run; the tests that use one set their own.
os.environ.pop("TF_CONFIG", None)

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_compat  # noqa: E402,F401  (applies the tf_slim fixes once for every test)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
BCCD_DIR = SHARED / "data" / "BCCD"
VGG16_CKPT = SHARED / "weights" / "vgg_16_imagenet" / "vgg_16_imagenet_conv.ckpt"

tf.compat.v1.disable_eager_execution()

# Split the one CPU into two logical devices before the runtime starts, so that
# num_clones=2 builds two real towers in the tests.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


@pytest.fixture
def bccd_dir():
    if not (BCCD_DIR / "Annotations").is_dir():
        pytest.skip(f"shared BCCD dataset not found at {BCCD_DIR}")
    return BCCD_DIR


@pytest.fixture
def vgg16_checkpoint():
    if not pathlib.Path(str(VGG16_CKPT) + ".index").is_file():
        pytest.skip(f"shared VGG-16 checkpoint not found at {VGG16_CKPT}")
    return str(VGG16_CKPT)


# ----------------------------------------------------------------------------- data path fixtures


@pytest.fixture(scope="session")
def sample_dataset_dir(tmp_path_factory):
    """A converted built-in sample dataset (40 synthetic images, trainval/test) in a temporary folder."""
    from datasets import sample_data

    return sample_data.ensure_sample_dataset(cache_dir=str(tmp_path_factory.mktemp("sample_cache")), num_images=40)


def _read_split(dataset_dir, split_name, name=None):
    from datasets import dataset_factory

    spec = dataset_factory.get_dataset(name, split_name, str(dataset_dir))
    with tf.Graph().as_default():
        dataset = dataset_factory.build_dataset(spec, is_training=False)
        next_example = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
        examples = []
        with tf.compat.v1.Session() as session:
            while True:
                try:
                    examples.append(session.run(next_example))
                except tf.errors.OutOfRangeError:
                    return spec, examples


@pytest.fixture
def read_split():
    """read_split(dataset_dir, split_name) -> (DatasetSpec, [example dicts as numpy]) via the eval pipeline."""
    return _read_split

