"""Session configuration and the logical CPU devices it must keep visible."""

import pytest
import tensorflow as tf

from deployment import devices
from tf_compat import tf1


def _session_devices(config):
    with tf.Graph().as_default():
        with tf1.Session(config=config) as session:
            return sorted(d.name.rsplit("/", 1)[-1] for d in session.list_devices() if "CPU" in d.name)


def test_explicit_config_proto_hides_logical_cpus_and_session_config_restores_them():
    assert devices.logical_cpu_devices() == ["/device:CPU:0", "/device:CPU:1"]
    # The pitfall: a plain ConfigProto builds its own device set with one CPU.
    assert _session_devices(tf1.ConfigProto(allow_soft_placement=True)) == ["device:CPU:0"]
    assert _session_devices(None) == ["device:CPU:0", "device:CPU:1"]
    assert _session_devices(devices.session_config()) == ["device:CPU:0", "device:CPU:1"]


def test_session_config_fields():
    config = devices.session_config(gpu_memory_fraction=0.5, allow_growth=True)
    assert config.allow_soft_placement
    assert config.gpu_options.per_process_gpu_memory_fraction == pytest.approx(0.5)
    assert config.gpu_options.allow_growth
    assert config.device_count["CPU"] == 2
    default = devices.session_config()
    assert default.gpu_options.per_process_gpu_memory_fraction == pytest.approx(0.8)
    assert not default.gpu_options.allow_growth
    with pytest.raises(ValueError, match="gpu_memory_fraction"):
        devices.session_config(gpu_memory_fraction=1.5)


def test_clone_on_second_logical_cpu_runs_with_session_config():
    with tf.Graph().as_default():
        with tf.device("/device:CPU:1"):
            value = tf.constant(2.0) * 3.0
        config = devices.session_config(allow_soft_placement=False)
        with tf1.Session(config=config) as session:
            assert session.run(value) == 6.0


def test_split_after_runtime_start_only_accepts_the_current_count():
    devices.split_cpu_into_logical_devices(2)  # what conftest set: a no-op
    with pytest.raises(RuntimeError, match="already started"):
        devices.split_cpu_into_logical_devices(3)
    with pytest.raises(ValueError):
        devices.split_cpu_into_logical_devices(0)

