"""SSD300 training throughput on this machine's GPUs: images/s per GPU over precisions, layouts, XLA and towers.

The sweep: every combination of ``--batch_sizes`` (images per GPU per step) x ``--precisions`` (fp32,
mixed_bf16, mixed_fp16) x ``--data_formats`` (NHWC, NCHW) x ``--xla`` (off, on) x ``--towers`` (1, all: one
tower per visible GPU) x ``--inputs`` (real: the training input pipeline on BCCD TFRecords, repeated;
synthetic: random images and boxes encoded once and served from memory). Each configuration trains in a
process of its own (``training.graph.build_training_graph``, what the trainer runs), so that one that fails
(out of GPU memory at batch 64 in fp32, bfloat16 on a GPU without it) is reported as a JSON line with an
``error`` and the sweep goes on; the configurations are interleaved over ``--repeats`` rounds.

Printed as JSON lines: first the placement check (below); then one line per configuration (images/s per
GPU and in total, median and min over the rounds, step time, peak host memory, the GPUs, TensorFlow's
version, whether XLA compiled the towers, where the convolutions ran); last a summary with the best
configuration. Images/s per GPU = global images / s / towers. When the real input is much slower than the
synthetic one at the same configuration, the input pipeline limits that configuration.

The placement check (``--check_placement`` alone, and once before every sweep) builds the training graph
for N GPU towers (on a machine without GPUs too: model_deploy plans ``/device:GPU:i`` and soft placement
would run it on the CPU) and checks from the graph that every convolution of tower i (forward and
backward) is assigned to ``/device:GPU:i``, the variables and the optimizer's slots and the input pipeline
to the CPU, the gradient averaging and the updates to the optimizer device; with GPUs it also runs one
step and checks where the convolutions actually ran (the step's partition graphs, which is what
``log_device_placement`` prints). A misplaced op fails it (exit status 1, naming the ops).

Without a GPU the sweep stops with exit status 2; ``--cpu_smoke`` runs a reduced sweep on the CPU (tiny
images and batches, 2 steps, towers on logical CPU devices) that takes every code path a CPU can run,
so that this script is tested on machines without GPUs. NCHW convolutions have no CPU kernel in
TensorFlow: there those configurations are listed as skipped, with the reason.

    python bench/bench_gpu.py                          # the whole sweep on every visible GPU
    python bench/bench_gpu.py --batch_sizes=64 --precisions=mixed_fp16,mixed_bf16 --xla=on --towers=all
    python bench/bench_gpu.py --check_placement        # the placement check alone
    python bench/bench_gpu.py --cpu_smoke              # the reduced sweep on a CPU (about a minute)
"""

import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

import bench_common  # noqa: E402
import command_line  # noqa: E402

PRECISIONS = ("fp32", "mixed_bf16", "mixed_fp16")
DATA_FORMATS = ("NHWC", "NCHW")
XLA_CHOICES = ("off", "on")
INPUTS = ("real", "synthetic")

# --cpu_smoke: tiny images and batches, and a subset of the sweep that still takes every path a CPU can
# run: each precision, XLA off and on, both inputs, 1 and 2 towers (on logical CPU devices), and an NCHW
# configuration that must come out skipped.
SMOKE_IMAGE_SIZE = 64
SMOKE_BATCH_SIZE = 1
SMOKE_STEPS = 2
SMOKE_WARMUP = 0
SMOKE_TOWERS = 2
SMOKE_CONFIGURATIONS = (
    # (precision, data_format, xla, towers, inputs)
    ("fp32", "NHWC", False, 1, "real"),
    ("mixed_bf16", "NHWC", True, 1, "synthetic"),
    ("mixed_fp16", "NHWC", False, 2, "real"),
    ("fp32", "NCHW", False, 1, "synthetic"),
)
# The smoke mode's figures mean nothing, so its processes run two at a time and XLA compiles for the CPU
# without LLVM's optimisations (about a third less compile time); a real sweep runs one process at a time.
SMOKE_PARALLEL_PROCESSES = 2
SMOKE_XLA_FLAGS = "--xla_backend_optimization_level=0"
NCHW_ON_CPU = "NCHW convolutions have no CPU kernel in TensorFlow: measured on GPUs only"

VARIABLE_OP_TYPES = ("VarHandleOp", "VariableV2", "Variable")
ITERATOR_OP_TYPES = ("IteratorGetNext", "IteratorV2", "Iterator", "OneShotIterator", "AnonymousIteratorV3",
                     "MakeIterator")
# Ops that stand for an XLA cluster in an executed graph.
XLA_OP_TYPES = ("_XlaRun", "_XlaCompile", "XlaLaunch", "_XlaMerge")
SYNTHETIC_BOXES_PER_IMAGE = 12  # BCCD has ~13 cells per image
MAX_NAMED_OPS = 20  # misplaced ops named in a failed check's line


def is_convolution(op_type):
    """Convolutions forward and backward, the ops that must run on their tower's GPU: Conv2D,
    Conv2DBackpropInput/Filter, and what the runtime rewrites them into (_FusedConv2D, oneDNN's
    _MklNativeConv2D... on a CPU)."""
    return "Conv2D" in op_type


@dataclasses.dataclass(frozen=True)
class Configuration:
    """One point of the sweep. ``batch_size`` is per tower (per GPU), as the trainer's --batch_size."""

    batch_size: int
    precision: str
    data_format: str
    xla: bool
    towers: int
    inputs: str

    @property
    def name(self):
        return (f"b{self.batch_size}_{self.precision}_{self.data_format}_xla_{'on' if self.xla else 'off'}_"
                f"{self.towers}tower{'s' if self.towers > 1 else ''}_{self.inputs}")

    def as_dict(self):
        return {"name": self.name, **dataclasses.asdict(self)}

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        return cls(**json.loads(text))


# ----------------------------------------------------------------------------- the machine


def visible_gpus():
    """Names of the physical GPUs TensorFlow sees (does not start the runtime nor take GPU memory)."""
    from deployment import devices

    return devices.available_gpus()


def gpu_description():
    """The GPUs: TensorFlow's device details (name, compute capability) and, where nvidia-smi exists,
    its name, memory and driver; an empty list without GPUs."""
    import tensorflow as tf

    described = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability")
        described.append({"device": gpu.name, "name": details.get("device_name"),
                          "compute_capability": ".".join(map(str, capability)) if capability else None})
    if described and shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        try:
            lines = subprocess.run(query, capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()
        except (OSError, subprocess.SubprocessError):
            lines = []
        for entry, line in zip(described, lines):
            name, memory, driver = (part.strip() for part in line.split(",", 2))
            entry.update(nvidia_smi_name=name, memory=memory, driver=driver)
    return described


def machine_description():
    import tensorflow as tf

    build = tf.sysconfig.get_build_info()
    return {"host": bench_common.machine(), "tensorflow": tf.__version__, "cuda": build.get("cuda_version"),
            "cudnn": build.get("cudnn_version"), "gpus": gpu_description()}


# ----------------------------------------------------------------------------- the configurations


def parse_list(text, flag, allowed=None):
    values = [value.strip() for value in text.split(",") if value.strip()]
    if not values:
        raise command_line.UsageError(f"--{flag} names nothing")
    if allowed is not None:
        unknown = [value for value in values if value not in allowed]
        if unknown:
            raise command_line.UsageError(f"--{flag}: unknown {unknown}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(values))


def tower_counts(text, num_gpus):
    """--towers as tower counts: 'all' is every visible GPU; duplicates (all = 1 on one GPU) once."""
    counts = []
    for value in parse_list(text, "towers"):
        if value == "all":
            counts.append(num_gpus)
        elif value.isdigit() and int(value) >= 1:
            counts.append(int(value))
        else:
            raise command_line.UsageError(f"--towers: {value!r} is neither a positive count nor 'all'")
    return list(dict.fromkeys(counts))


def sweep_configurations(args, num_gpus):
    """[(Configuration, reason it is skipped or None)] in the order they are measured."""
    if args.cpu_smoke:
        planned = [Configuration(SMOKE_BATCH_SIZE, precision, data_format, xla, towers, inputs)
                   for precision, data_format, xla, towers, inputs in SMOKE_CONFIGURATIONS]
        return [(config, NCHW_ON_CPU if config.data_format == "NCHW" else None) for config in planned]
    batch_sizes = []
    for value in parse_list(args.batch_sizes, "batch_sizes"):
        if not value.isdigit() or int(value) < 1:
            raise command_line.UsageError(f"--batch_sizes: {value!r} is not a positive integer")
        batch_sizes.append(int(value))
    xla = [value == "on" for value in parse_list(args.xla, "xla", XLA_CHOICES)]
    product = itertools.product(
        batch_sizes, parse_list(args.precisions, "precisions", PRECISIONS),
        parse_list(args.data_formats, "data_formats", DATA_FORMATS), xla, tower_counts(args.towers, num_gpus),
        parse_list(args.inputs, "inputs", INPUTS))
    planned = []
    for values in product:
        config = Configuration(*values)
        reason = None
        if config.towers > num_gpus:
            reason = f"{config.towers} towers but {num_gpus} visible GPU(s)"
        planned.append((config, reason))
    return planned


def training_config(config, args, dataset_dir):
    """The trainer's options for ``config``: towers on the GPUs, or on logical CPU devices with --cpu_smoke."""
    from training.config import TrainingConfig

    threads = max(2, os.cpu_count() or 2)
    return TrainingConfig(
        dataset_dir=dataset_dir, image_size=str(args.image_size), batch_size=config.batch_size,
        num_clones=config.towers, clone_on_cpu=bool(args.cpu_smoke), precision=config.precision, xla=config.xla,
        data_format=config.data_format, num_readers=min(4, threads), num_preprocessing_threads=threads,
        summarize_activations=False, summarize_variables=False, num_summary_images=0,
    )


# ----------------------------------------------------------------------------- synthetic input


def synthetic_input_dataset(config, spec, net, data_seed, num_shards=1, shard_index=0):
    """Batches like :func:`training.graph.build_input_dataset`'s (same keys, shapes, dtypes and anchor
    matching), from random images and boxes matched once and then served from memory: no file read, no
    decoding, no augmentation, no matching per step. ``spec`` gives the classes; the shard arguments are
    accepted for the same signature (one replica here)."""
    import tensorflow as tf

    from nets import matching

    del num_shards, shard_index
    height, width = net.params.img_shape
    boxes_per_image = SYNTHETIC_BOXES_PER_IMAGE

    def random_example(index):
        seed = tf.stack([tf.cast(data_seed, tf.int64), index])
        seeds = tf.random.experimental.stateless_split(seed, 4)
        # Pixels as the preprocessing leaves them: the channel means subtracted.
        image = tf.random.stateless_uniform([height, width, 3], seeds[0], -120.0, 135.0)
        labels = tf.random.stateless_uniform([boxes_per_image], seeds[1], 1, spec.num_classes, tf.int64)
        top_left = tf.random.stateless_uniform([boxes_per_image, 2], seeds[2], 0.0, 0.7)
        size = tf.random.stateless_uniform([boxes_per_image, 2], seeds[3], 0.05, 0.3)
        boxes = tf.concat([top_left, top_left + size], axis=1)
        example = {"image": image, "labels": labels, "boxes": boxes}
        if config.encode_targets_in == "input":
            example.update(matching.targets_to_dict(net.bboxes_encode(
                labels, boxes, match_threshold=config.match_threshold,
                negative_threshold=config.negative_threshold)))
        return example

    dataset = tf.data.Dataset.range(config.batch_size).map(random_example)
    dataset = dataset.batch(config.batch_size, drop_remainder=True).cache().repeat()
    return dataset.prefetch(max(2, config.num_clones))


@contextlib.contextmanager
def input_pipeline(kind):
    """Within this context the training graph reads ``kind`` input: 'real' is the trainer's own pipeline;
    'synthetic' replaces ``training.graph.build_input_dataset`` (in this benchmark's child process only)."""
    from training import graph as graph_lib

    if kind == "real":
        yield
        return
    real = graph_lib.build_input_dataset
    graph_lib.build_input_dataset = synthetic_input_dataset
    try:
        yield
    finally:
        graph_lib.build_input_dataset = real


# ----------------------------------------------------------------------------- placement


def _device(name):
    import tensorflow as tf

    spec = tf.DeviceSpec.from_string(name or "")
    return spec.device_type, spec.device_index


def _same_device(actual, expected):
    """Whether ``actual`` (an op's device, maybe with a job and task) is the device ``expected`` names."""
    actual_type, actual_index = _device(actual)
    expected_type, expected_index = _device(expected)
    return (actual_type or "").upper() == expected_type.upper() and (actual_index or 0) == (expected_index or 0)


def _named(misplaced):
    shown = [f"{m['op']} ({m['type']}) on {m['device']}, expected {m['expected']}" for m in misplaced[:MAX_NAMED_OPS]]
    more = len(misplaced) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def tower_of(op_name, num_towers):
    """The tower an op of a training graph belongs to, from its name (``clone_<i>/...``; a single clone has no
    scope), or None when it belongs to none."""
    if num_towers == 1:
        return 0
    for part in op_name.split("/"):
        if part.startswith("clone_") and part[len("clone_"):].isdigit():
            return int(part[len("clone_"):])
    return None


def graph_placement(graph, tower_devices, host_device="/device:CPU:0", optimizer_device="/device:CPU:0"):
    """Checks where ``graph`` (a training graph with one clone per device of ``tower_devices``) assigns its
    ops; returns the check's result: counts of each kind of op checked, ``ok``, and the misplaced ops with
    their device and where they belong. Tower i's convolutions (forward and backward) belong on
    ``tower_devices[i]``; the variables (model, optimizer slots, global step) and the input pipeline on
    ``host_device``; the gradient averaging and the updates on ``optimizer_device``."""
    num_towers = len(tower_devices)
    expectations = []  # (kind, op, expected device)
    for op in graph.get_operations():
        if is_convolution(op.type):
            tower = tower_of(op.name, num_towers)
            expected = tower_devices[tower] if tower is not None else "a tower's device (no clone_<i> scope)"
            expectations.append(("convolutions", op, expected))
        elif op.type in VARIABLE_OP_TYPES:
            expectations.append(("variables", op, host_device))
        elif op.type in ITERATOR_OP_TYPES or op.type.endswith("Dataset") or op.type.endswith("DatasetV2"):
            expectations.append(("input pipeline", op, host_device))
        elif "average_clone_gradients/" in op.name:
            expectations.append(("gradient averaging", op, optimizer_device))
        elif op.type.startswith(("ResourceApply", "ApplyAdam", "ApplyMomentum", "ApplyGradientDescent")):
            expectations.append(("updates", op, optimizer_device))
    checked, misplaced = {}, []
    for kind, op, expected in expectations:
        checked[kind] = checked.get(kind, 0) + 1
        if not expected.startswith("/") or not _same_device(op.device, expected):
            misplaced.append({"op": op.name, "type": op.type, "device": op.device or "(none)", "expected": expected})
    slots = sum(1 for op in graph.get_operations() if op.type in VARIABLE_OP_TYPES and "/Adam" in op.name)
    missing = [kind for kind in ("convolutions", "variables", "input pipeline") if not checked.get(kind)]
    if num_towers > 1 and not checked.get("gradient averaging"):
        missing.append("gradient averaging")
    result = {"checked": checked, "optimizer_slots": slots, "ok": not misplaced and not missing,
              "misplaced": misplaced}
    if missing:
        result["error"] = "the graph has no " + ", no ".join(missing)
    elif misplaced:
        result["error"] = "misplaced ops: " + _named(misplaced)
    return result


def executed_devices(run_metadata):
    """{node name: (device, op type)} of the graphs a step executed (``RunOptions.output_partition_graphs``):
    where the runtime put each op, the same as ``log_device_placement`` prints."""
    placed = {}
    for partition in run_metadata.partition_graphs:
        for node in partition.node:
            placed[node.name] = (node.device, node.op)
    return placed


def executed_placement(run_metadata, tower_devices):
    """Checks where one executed step (its RunMetadata with the partition graphs) ran its convolutions:
    tower i's on ``tower_devices[i]``. An XLA cluster replaces the convolutions it compiled by its launch
    ops, named after the cluster and not the tower: then every tower's device must run XLA launches.
    Returns the check's result and whether XLA ran any cluster."""
    num_towers = len(tower_devices)
    placed = executed_devices(run_metadata)
    convolutions, misplaced, xla_devices = 0, [], []
    for name, (device, op_type) in placed.items():
        if is_convolution(op_type):
            convolutions += 1
            tower = tower_of(name, num_towers)
            if tower is None or not _same_device(device, tower_devices[tower]):
                misplaced.append({"op": name, "type": op_type, "device": device,
                                  "expected": tower_devices[tower] if tower is not None else "a tower's device"})
        elif op_type in XLA_OP_TYPES:
            xla_devices.append(device)
    result = {"executed_convolutions": convolutions, "executed_xla_ops": len(xla_devices), "misplaced": misplaced}
    without_xla = [expected for expected in tower_devices
                   if not any(_same_device(device, expected) for device in xla_devices)]
    if misplaced:
        result["error"] = "misplaced ops: " + _named(misplaced)
    elif convolutions == 0 and (not xla_devices or without_xla):
        result["error"] = ("no convolution ran, and no XLA cluster ran on " + ", ".join(without_xla or tower_devices))
    result["ok"] = "error" not in result
    return result, bool(xla_devices)


def run_with_partition_graphs(session, fetch):
    """Runs ``fetch`` once, returning the step's RunMetadata with the executed partition graphs."""
    from tf_compat import tf1

    options = tf1.RunOptions(output_partition_graphs=True)
    metadata = tf1.RunMetadata()
    session.run(fetch, options=options, run_metadata=metadata)
    return metadata


def check_placement(args, dataset_dir, num_towers):
    """The placement check of a training graph for ``num_towers`` GPU towers (see the module docstring);
    returns its JSON-able result with ``ok``."""
    import tensorflow as tf

    from datasets import dataset_factory
    from deployment import devices
    from tf_compat import tf1
    from training import graph as graph_lib, machines

    tf1.disable_eager_execution()
    gpus = visible_gpus()
    config = Configuration(args.placement_batch_size, "fp32", "NHWC", False, num_towers, "real")
    # Planned for GPUs even with --cpu_smoke: the graph's assignments do not depend on the machine.
    opts = dataclasses.replace(training_config(config, args, dataset_dir), clone_on_cpu=False)
    spec = dataset_factory.get_dataset(None, "trainval", dataset_dir)
    deploy_config = machines.deployment_for(opts)
    tower_devices = [f"/device:GPU:{i}" for i in range(num_towers)]
    result = {"what": "placement check", "towers": num_towers, "visible_gpus": len(gpus),
              "tower_devices": tower_devices}
    with tf.Graph().as_default() as graph:
        training = graph_lib.build_training_graph(opts, spec, deploy_config)
        result["graph"] = graph_placement(graph, tower_devices, optimizer_device=deploy_config.optimizer_device())
        if len(gpus) >= num_towers:
            with tf1.Session(config=devices.session_config(allow_soft_placement=True)) as session:
                session.run([tf1.global_variables_initializer(), tf1.local_variables_initializer()])
                metadata = run_with_partition_graphs(session, training.train.train_tensor)
            result["executed"], _ = executed_placement(metadata, tower_devices)
        else:
            result["executed"] = (f"not run: {len(gpus)} visible GPU(s) for {num_towers} towers (soft placement "
                                  "would put the towers on the CPU); checked from the graph only")
    checks = [result["graph"]] + ([result["executed"]] if isinstance(result["executed"], dict) else [])
    result["ok"] = all(check["ok"] for check in checks)
    if not result["ok"]:
        result["error"] = "; ".join(check["error"] for check in checks if not check["ok"])
    return result


# ----------------------------------------------------------------------------- one configuration


def run_one(config, args):
    """Trains ``config`` for --warmup + --steps steps in this process; returns its result dict."""
    import package_guard

    package_guard.ensure_project_packages()
    import tensorflow as tf

    from datasets import dataset_factory
    from deployment import devices
    from tf_compat import tf1
    from training import graph as graph_lib, machines

    tf1.disable_eager_execution()
    if args.cpu_smoke and config.towers > 1:
        devices.split_cpu_into_logical_devices(config.towers)
    opts = training_config(config, args, args.dataset_dir)
    spec = dataset_factory.get_dataset(None, "trainval", args.dataset_dir)
    machine = machines.LocalMachine(opts, devices.session_config(opts.gpu_memory_fraction, opts.allow_growth))
    deploy_config = machine.deploy_config
    with tf.Graph().as_default():
        with input_pipeline(config.inputs):
            training = graph_lib.build_training_graph(opts, spec, deploy_config)
        step = training.train.train_tensor
        with tf1.Session(config=machine.session_config) as session:
            session.run([tf1.global_variables_initializer(), tf1.local_variables_initializer()])
            # An untimed first step (it compiles the XLA clusters) that also says where the ops ran.
            start = time.perf_counter()
            metadata = run_with_partition_graphs(session, step)
            first_step_secs = time.perf_counter() - start
            tower_devices = [deploy_config.clone_device(i) for i in range(config.towers)]
            executed, xla_compiled = executed_placement(metadata, tower_devices)
            elapsed = bench_common.timed_steps(session, step, args.warmup, args.steps)
    images = config.batch_size * config.towers * args.steps
    return {
        "images_per_sec": images / elapsed,
        "step_secs": elapsed / args.steps,
        "first_step_secs": first_step_secs,
        "xla_compiled": xla_compiled,
        "placement": executed.get("error", "ok"),
        "tower_devices": tower_devices,
        "peak_rss_mib": bench_common.peak_rss_mib(),
    }


def child_command(args, dataset_dir, *extra):
    return [sys.executable, os.path.abspath(__file__), f"--dataset_dir={dataset_dir}",
            f"--image_size={args.image_size}", f"--steps={args.steps}", f"--warmup={args.warmup}",
            f"--placement_batch_size={args.placement_batch_size}",
            "--cpu_smoke" if args.cpu_smoke else "--nocpu_smoke", *extra]


def run_child(command, timeout, cpu_smoke=False):
    """Runs a child of this script; returns its last JSON line as a dict, or a dict with an ``error``: the
    child's own failure (out of memory...), a crash, a timeout."""
    environment = dict(os.environ)
    if cpu_smoke:
        environment.setdefault("XLA_FLAGS", SMOKE_XLA_FLAGS)
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout} s (--config_timeout)"}
    lines = [line for line in finished.stdout.splitlines() if line.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    errors = [line.strip() for line in finished.stderr.splitlines() if line.strip()]
    last = errors[-1] if errors else "no output"
    return {"error": f"exit status {finished.returncode}: {last}"}


def child_main(args):
    """--one: measures one configuration and prints one JSON line, its failure too (exit status 6)."""
    config = Configuration.from_json(args.one)
    try:
        result = run_one(config, args)
    except Exception as error:  # noqa: BLE001 - every failure of a configuration is a result of the sweep
        described = command_line.describe_failure(error)
        message = described[1] if described else f"{type(error).__name__}: {command_line.first_line(error)}"
        print(json.dumps({"error": message}), flush=True)
        return command_line.EXIT_TENSORFLOW
    print(json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------------------- the sweep


def summarise(config, runs, args, machine):
    """The JSON line of one configuration from its rounds' results."""
    line = {"what": "SSD training throughput per GPU", "config": config.as_dict(),
            "image_size": args.image_size, "steps": args.steps, "warmup": args.warmup, "repeats": len(runs),
            "mode": "cpu_smoke" if args.cpu_smoke else "gpu", "machine": machine}
    failed = [run["error"] for run in runs if "error" in run]
    if failed:
        line["error"] = failed[0]
        return line
    total = [run["images_per_sec"] for run in runs]
    per_gpu = [rate / config.towers for rate in total]
    line.update({
        "value": round(statistics.median(per_gpu), 3), "unit": "images/s per GPU (median)",
        "images_per_sec_per_gpu": {"median": round(statistics.median(per_gpu), 3), "min": round(min(per_gpu), 3)},
        "images_per_sec_total": {"median": round(statistics.median(total), 3), "min": round(min(total), 3)},
        "step_secs": round(statistics.median(run["step_secs"] for run in runs), 4),
        "first_step_secs": round(max(run["first_step_secs"] for run in runs), 2),
        "xla_compiled": all(run["xla_compiled"] for run in runs),
        "tower_devices": runs[0]["tower_devices"],
        # Where the step's convolutions ran (its partition graphs): "ok", or what was wrong.
        "placement": next((run["placement"] for run in runs if run["placement"] != "ok"), "ok"),
        "peak_rss_mib": round(max(run["peak_rss_mib"] for run in runs), 1),
    })
    return line


def summary_line(lines, machine):
    """The best configuration by median images/s per GPU, and for it real against synthetic input."""
    measured = [line for line in lines if "value" in line]
    summary = {"what": "SSD training throughput per GPU: summary", "measured": len(measured),
               "failed": sum(1 for line in lines if "error" in line),
               "skipped": sum(1 for line in lines if "skipped" in line), "machine": machine}
    if not measured:
        return summary
    best = max(measured, key=lambda line: line["value"])
    summary.update(best=best["config"], value=best["value"], unit=best["unit"])
    other_input = {**best["config"], "inputs": "synthetic" if best["config"]["inputs"] == "real" else "real"}
    other_input.pop("name")
    for line in measured:
        config = dict(line["config"])
        config.pop("name")
        if config == other_input:
            real, synthetic = (best, line) if best["config"]["inputs"] == "real" else (line, best)
            summary["real_over_synthetic"] = round(real["value"] / synthetic["value"], 3)
    return summary


class PlacementFailed(Exception):
    """The placement check failed: its result was printed, nothing more is measured."""


def check_placement_result(placement):
    placement.setdefault("what", "placement check")
    print(json.dumps(placement), flush=True)
    if not placement.get("ok"):
        raise PlacementFailed(placement.get("error"))


def sweep(args, num_gpus):
    """The placement check, then every configuration over --repeats rounds; prints the JSON lines. Raises
    :class:`PlacementFailed` when the placement check failed (on GPUs before anything is timed)."""
    configurations = sweep_configurations(args, num_gpus)
    machine = machine_description()
    processes = SMOKE_PARALLEL_PROCESSES if args.cpu_smoke else 1
    with tempfile.TemporaryDirectory() as work_dir, \
            concurrent.futures.ThreadPoolExecutor(processes) as pool:
        dataset_dir = bench_common.prepare_dataset(args.dataset_dir, work_dir)

        def start(*extra):
            return pool.submit(run_child, child_command(args, dataset_dir, *extra), args.config_timeout,
                               args.cpu_smoke)

        placement_towers = args.placement_towers or num_gpus or SMOKE_TOWERS
        placement = start("--check_placement", f"--placement_towers={placement_towers}")
        if processes == 1:  # nothing is timed before the placement is known to be right
            check_placement_result(placement.result())
        measured = [config for config, reason in configurations if reason is None]
        results = {config: [] for config in measured}
        for _ in range(args.repeats):
            # One round at a time, so that the rounds interleave the configurations.
            pending = {config: start(f"--one={config.to_json()}") for config in measured
                       if not any("error" in run for run in results[config])}  # out of memory once: every round
            for config, future in pending.items():
                results[config].append(future.result())
        if processes > 1:
            check_placement_result(placement.result())
    lines = []
    for config, reason in configurations:
        if reason is not None:
            line = {"what": "SSD training throughput per GPU", "config": config.as_dict(), "skipped": reason,
                    "machine": machine}
        else:
            line = summarise(config, results[config], args, machine)
        lines.append(line)
        print(json.dumps(line), flush=True)
    print(json.dumps(summary_line(lines, machine)), flush=True)


NO_GPU_MESSAGE = ("bench_gpu.py measures training on GPUs and TensorFlow sees none here; "
                  "run it with --cpu_smoke to check it on the CPU (a reduced sweep, no GPU figures)")


def define_flags(flag_values):
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("batch_sizes", "32,64", "Comma-separated images per GPU (per tower) per step.", **fv)
    flags.DEFINE_string("precisions", ",".join(PRECISIONS), "Comma-separated --precision values.", **fv)
    flags.DEFINE_string("data_formats", ",".join(DATA_FORMATS), "Comma-separated layouts: NHWC, NCHW.", **fv)
    flags.DEFINE_string("xla", "off,on", "Comma-separated: off, on (XLA compiles each tower).", **fv)
    flags.DEFINE_string("towers", "1,all", "Comma-separated tower counts; all: one per visible GPU.", **fv)
    flags.DEFINE_string("inputs", ",".join(INPUTS), "Comma-separated: real (BCCD TFRecords through the training "
                        "input pipeline, repeated), synthetic (random images and boxes from memory).", **fv)
    flags.DEFINE_integer("steps", 50, "Timed steps per run.", lower_bound=1, **fv)
    flags.DEFINE_integer("warmup", 10, "Steps after the first (compiling) one before the timing starts.",
                         lower_bound=0, **fv)
    flags.DEFINE_integer("repeats", 3, "Rounds over the configurations (median and min over them).",
                         lower_bound=1, **fv)
    flags.DEFINE_string("dataset_dir", None, "A converted dataset (default: ../shared/data/BCCD converted into a "
                        "temporary folder, else the built-in sample dataset).", **fv)
    flags.DEFINE_integer("image_size", 300, "Network input size (SSD300).", lower_bound=32, **fv)
    flags.DEFINE_bool("cpu_smoke", False, f"Reduced sweep on the CPU: {SMOKE_IMAGE_SIZE}x{SMOKE_IMAGE_SIZE} images, "
                      f"batch {SMOKE_BATCH_SIZE} per tower, {SMOKE_STEPS} steps, {len(SMOKE_CONFIGURATIONS)} "
                      "configurations, towers on logical CPU devices; no GPU figures.", **fv)
    flags.DEFINE_bool("check_placement", False, "Only the placement check (see the doc); exit status 1 when an "
                      "op is misplaced.", **fv)
    flags.DEFINE_integer("placement_towers", None, "Towers of the placement check's graph (default: one per "
                         f"visible GPU, {SMOKE_TOWERS} without any).", lower_bound=1, **fv)
    flags.DEFINE_integer("placement_batch_size", 2, "Images per tower of the placement check's graph.",
                         lower_bound=1, **fv)
    flags.DEFINE_integer("config_timeout", 3600, "Seconds one configuration's process may take.", lower_bound=1,
                         **fv)
    flags.DEFINE_string("one", None, "(internal) child process: measure this configuration (JSON)", **fv)
    return flag_values


def main(argv=None):
    args = command_line.parse_flags(define_flags(flags.FlagValues()), argv, __doc__)
    if args.cpu_smoke:
        # The reduced mode's sizes: fewer steps than these only if the command line asks for fewer.
        args.image_size = SMOKE_IMAGE_SIZE
        args.steps = min(args.steps, SMOKE_STEPS)
        args.warmup = min(args.warmup, SMOKE_WARMUP)
        args.repeats = 1
    if args.one:
        sys.exit(child_main(args))
    import package_guard

    package_guard.ensure_project_packages()
    num_gpus = len(visible_gpus())
    if args.check_placement:
        def work():
            with tempfile.TemporaryDirectory() as work_dir:
                dataset_dir = bench_common.prepare_dataset(args.dataset_dir, work_dir)
                result = check_placement(args, dataset_dir, args.placement_towers or num_gpus or SMOKE_TOWERS)
            print(json.dumps(result), flush=True)
            if not result["ok"]:
                print(f"ERROR: placement check failed: {result['error']}", file=sys.stderr, flush=True)
                return command_line.EXIT_STOPPED
            return 0

        sys.exit(command_line.run_command(work))
    if num_gpus == 0 and not args.cpu_smoke:
        print(f"ERROR: {NO_GPU_MESSAGE}", file=sys.stderr, flush=True)
        sys.exit(command_line.EXIT_USAGE)
    try:
        sweep(args, num_gpus)
    except command_line.UsageError as error:
        print(f"ERROR: {error}", file=sys.stderr, flush=True)
        sys.exit(command_line.EXIT_USAGE)
    except PlacementFailed as error:
        print(f"ERROR: placement check failed: {error}", file=sys.stderr, flush=True)
        sys.exit(command_line.EXIT_STOPPED)


if __name__ == "__main__":
    main()
