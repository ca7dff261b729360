"""What devices this process has, and the TF session configuration that sees them.

A ``tf.compat.v1.Session`` created WITHOUT a config uses the runtime context's device
set, so it sees logical CPU devices created with
``tf.config.set_logical_device_configuration``. A session created WITH an explicit
``ConfigProto`` builds its own device set from ``ConfigProto.device_count`` instead and
sees a single CPU (checked in ``tests/test_deploy_devices.py``). :func:`session_config`
therefore copies the context's logical CPU count into ``device_count['CPU']``, so CPU
clones on ``/device:CPU:i`` find their devices whether or not a config is passed.
"""

from absl import logging
import tensorflow as tf

from tf_compat import tf1

DEFAULT_GPU_MEMORY_FRACTION = 0.8


def available_gpus():
    """Names of the physical GPUs TensorFlow can use (does not start the runtime)."""
    return [device.name for device in tf.config.list_physical_devices("GPU")]


CPUINFO = "/proc/cpuinfo"
# CPU flags (Linux /proc/cpuinfo) of the instructions that compute bfloat16 natively: AVX-512 BF16 and AMX.
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_computes_bfloat16(cpuinfo_path=CPUINFO):
    """Whether this CPU has bfloat16 arithmetic (one of ``BFLOAT16_CPU_FLAGS``); False where it cannot tell."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in BFLOAT16_CPU_FLAGS)
    except OSError:
        return False
    return False


def logical_cpu_devices():
    """Names of the logical CPU devices of the runtime context (starts the runtime)."""
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def split_cpu_into_logical_devices(num_devices):
    """Splits the first physical CPU into ``num_devices`` logical devices.

    Lets ``clone_on_cpu`` deployments place each clone on its own ``/device:CPU:i``
    (tests and CPU benchmarks). Must run before anything starts the TensorFlow runtime
    (creating a session, listing logical devices); a later call that asks for the count
    already in place is a no-op, any other raises ``RuntimeError``.
    """
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == num_devices:
        return
    if num_devices == 1 and current is None:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
        )
    except RuntimeError as error:
        raise RuntimeError(
            f"cannot split the CPU into {num_devices} logical devices: the TensorFlow runtime has "
            f"already started with {len(logical_cpu_devices())}; split it before building any "
            f"graph or session ({error})"
        ) from error
    logging.info("Split the CPU into %d logical devices", num_devices)


def session_config(
    gpu_memory_fraction=DEFAULT_GPU_MEMORY_FRACTION,
    allow_growth=False,
    allow_soft_placement=True,
    log_device_placement=False,
    num_cpu_devices=None,
):
    """The ``ConfigProto`` for training and evaluation sessions.

    Args:
      gpu_memory_fraction: ``per_process_gpu_memory_fraction`` (0, 1].
      allow_growth: let the GPU allocator grow on demand instead of reserving up front.
      allow_soft_placement: fall back to a supported device for ops without a kernel
        on the requested one.
      log_device_placement: log where every op runs.
      num_cpu_devices: CPU devices the session creates; ``None`` copies the runtime
        context's logical CPU count (see the module docstring).
    """
    if not 0.0 < gpu_memory_fraction <= 1.0:
        raise ValueError(f"gpu_memory_fraction must be in (0, 1], got {gpu_memory_fraction}")
    if num_cpu_devices is None:
        num_cpu_devices = len(logical_cpu_devices())
    gpu_options = tf1.GPUOptions(
        per_process_gpu_memory_fraction=gpu_memory_fraction, allow_growth=bool(allow_growth)
    )
    config = tf1.ConfigProto(
        allow_soft_placement=allow_soft_placement,
        log_device_placement=log_device_placement,
        gpu_options=gpu_options,
    )
    if num_cpu_devices > 1:
        config.device_count["CPU"] = num_cpu_devices
    return config
