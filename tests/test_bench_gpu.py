"""bench/bench_gpu.py on a machine without GPUs: the reduced CPU sweep end to end, the placement check on a
graph planned for two GPU towers (and that it catches towers on the CPU and a convolution forced there),
the check of where an executed step ran its convolutions, and the message without a GPU."""

import importlib
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

import command_line
from datasets import dataset_factory
from deployment import devices, model_deploy
from tf_compat import tf1
from training import graph as graph_lib, machines
from training.config import TrainingConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO_ROOT, "bench", "bench_gpu.py")


@pytest.fixture(scope="module")
def bench_gpu():
    path = os.path.join(REPO_ROOT, "bench")
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module("bench_gpu")


def _lines(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_cpu_smoke_sweep_measures_every_path_a_cpu_can_run(tmp_path, bench_gpu):
    environment = {**os.environ, "PYTHONPATH": REPO_ROOT, "TMPDIR": str(tmp_path)}
    finished = subprocess.run([sys.executable, BENCH, "--cpu_smoke"], capture_output=True, text=True,
                              env=environment, timeout=600, cwd=REPO_ROOT)
    assert finished.returncode == 0, finished.stderr[-3000:]
    lines = _lines(finished.stdout)
    placement, *configurations, summary = lines

    assert placement["what"] == "placement check" and placement["ok"], placement
    assert placement["tower_devices"] == ["/device:GPU:0", "/device:GPU:1"]
    assert placement["graph"]["checked"]["convolutions"] > 0 and placement["graph"]["optimizer_slots"] > 0

    expected = {(precision, data_format, xla, towers, inputs)
                for precision, data_format, xla, towers, inputs in bench_gpu.SMOKE_CONFIGURATIONS}
    seen = {(c["config"]["precision"], c["config"]["data_format"], c["config"]["xla"], c["config"]["towers"],
             c["config"]["inputs"]) for c in configurations}
    assert seen == expected and len(configurations) == len(expected)
    for line in configurations:
        config = line["config"]
        if config["data_format"] == "NCHW":
            assert "CPU" in line["skipped"] and "value" not in line
            continue
        assert "error" not in line, line
        assert line["value"] > 0 and line["images_per_sec_per_gpu"]["min"] > 0
        assert line["images_per_sec_total"]["median"] == pytest.approx(line["value"] * config["towers"], rel=0.01)
        assert line["xla_compiled"] == config["xla"]
        assert line["placement"] == "ok"
        assert line["tower_devices"] == [f"/device:CPU:{i}" for i in range(config["towers"])]
        assert line["mode"] == "cpu_smoke" and line["peak_rss_mib"] > 0 and line["machine"]["tensorflow"]
    # Each code path that runs on a CPU was taken.
    run = [line["config"] for line in configurations if "value" in line]
    assert {c["precision"] for c in run} == {"fp32", "mixed_bf16", "mixed_fp16"}
    assert {c["xla"] for c in run} == {False, True} and {c["inputs"] for c in run} == {"real", "synthetic"}
    assert {c["towers"] for c in run} == {1, 2}
    assert summary["measured"] == len(run) and summary["skipped"] == 1 and summary["failed"] == 0
    assert summary["best"] in run


# ----------------------------------------------------------------------------- the placement check


def _training_graph(sample_dataset_dir, deploy_config, bench_gpu, inputs="real", **options):
    config = TrainingConfig(image_size="64", batch_size=1, num_clones=deploy_config.num_clones, num_readers=1,
                            num_preprocessing_threads=1, summarize_variables=False, num_summary_images=0, **options)
    spec = dataset_factory.get_dataset(None, "trainval", sample_dataset_dir)
    graph = tf.Graph()
    with graph.as_default(), bench_gpu.input_pipeline(inputs):
        graph_lib.build_training_graph(config, spec, deploy_config)
    return graph


@pytest.mark.slow
def test_placement_check_passes_on_a_graph_planned_for_two_gpus_and_catches_towers_on_the_cpu(
        sample_dataset_dir, bench_gpu):
    gpus = ["/device:GPU:0", "/device:GPU:1"]
    # What only a GPU runs, built here: NCHW, float16 with loss scaling, XLA, the synthetic input.
    planned = _training_graph(sample_dataset_dir, machines.deployment_for(TrainingConfig(num_clones=2)), bench_gpu,
                              inputs="synthetic", data_format="NCHW", precision="mixed_fp16", xla=True)
    result = bench_gpu.graph_placement(planned, gpus)
    assert result["ok"], result.get("error")
    # (Loss scaling applies the updates in a cond's branch function, where the check does not look.)
    assert set(result["checked"]) >= {"convolutions", "variables", "input pipeline", "gradient averaging"}
    assert result["optimizer_slots"] > 0
    # Forward and backward convolutions of both towers, in float16 and NCHW, were checked.
    convolutions = [op for op in planned.get_operations() if bench_gpu.is_convolution(op.type)]
    assert {op.type for op in convolutions} >= {"Conv2D", "Conv2DBackpropFilter", "Conv2DBackpropInput"}
    assert all(op.get_attr("data_format") == b"NCHW" and op.get_attr("T") == tf.float16 for op in convolutions)
    assert {bench_gpu.tower_of(op.name, 2) for op in convolutions} == {0, 1}

    on_cpu = _training_graph(sample_dataset_dir, model_deploy.DeploymentConfig(num_clones=2, clone_on_cpu=True),
                             bench_gpu)
    wrong = bench_gpu.graph_placement(on_cpu, gpus)
    assert not wrong["ok"]
    assert {m["type"] for m in wrong["misplaced"]} >= {"Conv2D", "Conv2DBackpropFilter"}
    assert all(m["device"] == "/device:CPU:0" for m in wrong["misplaced"])
    assert "misplaced ops: clone_" in wrong["error"] and "expected /device:GPU:" in wrong["error"]


def _toy_towers(devices_of_convolutions):
    """Two clones of one 3x3 convolution on a shared variable, each on the device given, and an input."""
    graph = tf.Graph()
    with graph.as_default():
        with tf1.device("/device:CPU:0"):
            images = tf1.data.make_one_shot_iterator(
                tf.data.Dataset.from_tensors(tf.ones([1, 8, 8, 3])).repeat()).get_next()
            kernel = tf1.get_variable("kernel", [3, 3, 3, 4])
        outputs = []
        for index, device in enumerate(devices_of_convolutions):
            with tf1.device(device), tf.name_scope(f"clone_{index}"):
                outputs.append(tf.reduce_sum(tf.nn.conv2d(images, kernel, 1, "SAME")))
        with tf1.device("/device:CPU:0"), tf.name_scope("average_clone_gradients"):
            total = tf.add_n(outputs)
    return graph, total


def test_a_convolution_forced_to_the_cpu_is_named(bench_gpu):
    graph, _ = _toy_towers(["/device:GPU:0", "/device:GPU:1"])
    assert bench_gpu.graph_placement(graph, ["/device:GPU:0", "/device:GPU:1"])["ok"]
    graph, _ = _toy_towers(["/device:GPU:0", "/device:CPU:0"])
    result = bench_gpu.graph_placement(graph, ["/device:GPU:0", "/device:GPU:1"])
    assert not result["ok"]
    assert result["error"] == "misplaced ops: clone_1/Conv2D (Conv2D) on /device:CPU:0, expected /device:GPU:1"


def test_the_executed_step_says_where_each_towers_convolution_ran(bench_gpu):
    # The test process has two logical CPU devices (conftest): towers on CPU:0 and CPU:1 stand for GPUs.
    graph, total = _toy_towers(["/device:CPU:0", "/device:CPU:1"])
    with graph.as_default(), tf1.Session(config=devices.session_config()) as session:
        session.run(tf1.global_variables_initializer())
        metadata = bench_gpu.run_with_partition_graphs(session, total)
    result, xla_compiled = bench_gpu.executed_placement(metadata, ["/device:CPU:0", "/device:CPU:1"])
    assert result["ok"] and result["executed_convolutions"] == 2 and not xla_compiled
    swapped, _ = bench_gpu.executed_placement(metadata, ["/device:CPU:1", "/device:CPU:0"])
    assert not swapped["ok"] and len(swapped["misplaced"]) == 2
    assert "clone_0/Conv2D" in swapped["error"] and "expected /device:CPU:1" in swapped["error"]


# ----------------------------------------------------------------------------- no GPU


def test_without_a_gpu_the_sweep_says_it_needs_one_and_how_to_check_it_on_the_cpu(bench_gpu, capsys):
    assert not tf.config.list_physical_devices("GPU")
    with pytest.raises(SystemExit) as stopped:
        bench_gpu.main([])
    assert stopped.value.code == command_line.EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    (message,) = captured.err.strip().splitlines()
    assert message.startswith("ERROR: bench_gpu.py measures training on GPUs") and "--cpu_smoke" in message


def test_sweep_flags_are_checked_and_towers_all_means_every_gpu(bench_gpu):
    args = command_line.parse_flags(bench_gpu.define_flags(bench_gpu.flags.FlagValues()),
                                    ["--batch_sizes=32,64", "--precisions=fp32", "--data_formats=NCHW",
                                     "--xla=on", "--towers=1,all", "--inputs=real,synthetic"])
    planned = bench_gpu.sweep_configurations(args, num_gpus=4)
    assert len(planned) == 2 * 2 * 2 and all(reason is None for _, reason in planned)
    assert {config.towers for config, _ in planned} == {1, 4}
    one_gpu = bench_gpu.sweep_configurations(args, num_gpus=1)
    assert len(one_gpu) == 2 * 2  # all = 1: measured once
    args.towers = "8"
    assert all(reason == "8 towers but 4 visible GPU(s)" for _, reason in bench_gpu.sweep_configurations(args, 4))
    args.precisions = "fp8"
    with pytest.raises(command_line.UsageError, match="--precisions: unknown"):
        bench_gpu.sweep_configurations(args, 4)


# ----------------------------------------------------------------------------- failures stay lines of the sweep


def test_a_configuration_out_of_gpu_memory_is_a_line_with_an_error_and_the_sweep_goes_on(bench_gpu, capsys,
                                                                                         monkeypatch):
    def out_of_memory(config, args):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[64,64,300,300]")

    monkeypatch.setattr(bench_gpu, "run_one", out_of_memory)
    config = bench_gpu.Configuration(64, "fp32", "NCHW", False, 1, "real")
    args = command_line.parse_flags(bench_gpu.define_flags(bench_gpu.flags.FlagValues()),
                                    [f"--one={config.to_json()}"])
    assert bench_gpu.child_main(args) == command_line.EXIT_TENSORFLOW
    (child_line,) = _lines(capsys.readouterr().out)
    assert child_line["error"].startswith("out of memory: OOM when allocating tensor")

    line = bench_gpu.summarise(config, [child_line], args, machine={})
    assert line["error"] == child_line["error"] and "value" not in line
    real = bench_gpu.Configuration(32, "mixed_fp16", "NHWC", True, 1, "real").as_dict()
    synthetic = bench_gpu.Configuration(32, "mixed_fp16", "NHWC", True, 1, "synthetic").as_dict()
    measured = [{"config": real, "value": 600.0, "unit": "images/s per GPU (median)"},
                {"config": synthetic, "value": 800.0, "unit": "images/s per GPU (median)"}]
    summary = bench_gpu.summary_line([line, *measured], machine={})
    assert summary["failed"] == 1 and summary["measured"] == 2 and summary["best"] == synthetic
    assert summary["real_over_synthetic"] == 0.75  # the input pipeline limits this configuration

    crashed = bench_gpu.run_child([sys.executable, "-c", "import sys; sys.exit('Segmentation fault')"], timeout=60)
    assert crashed == {"error": "exit status 1: Segmentation fault"}


def test_a_failed_placement_check_exits_1_naming_the_ops(bench_gpu, capsys, monkeypatch):
    failed = {"what": "placement check", "ok": False,
              "error": "misplaced ops: clone_1/Conv2D (Conv2D) on /device:CPU:0, expected /device:GPU:1"}
    monkeypatch.setattr(bench_gpu, "check_placement", lambda args, dataset_dir, num_towers: failed)
    monkeypatch.setattr(bench_gpu.bench_common, "prepare_dataset", lambda dataset_dir, work_dir: "unused")
    with pytest.raises(SystemExit) as stopped:
        bench_gpu.main(["--check_placement"])
    assert stopped.value.code == 1
    captured = capsys.readouterr()
    assert _lines(captured.out) == [failed]
    assert "ERROR: placement check failed: misplaced ops: clone_1/Conv2D (Conv2D) on /device:CPU:0" in captured.err
