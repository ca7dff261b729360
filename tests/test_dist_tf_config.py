"""deployment/tf_config.py: the cluster from TF_CONFIG (Kubeflow's TFJob), its mapping, its errors, flags
against TF_CONFIG; a loopback cluster started through TF_CONFIG alone; docs/tfjob.yaml's structure."""

import json
import pathlib
import re

import pytest
import tensorflow as tf

import launch_local_cluster
import train_ssd_network
from deployment import cluster, tf_config
from launch_local_cluster import LocalCluster

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PS = ["ps-0:2222", "ps-1:2222"]
CHIEF = ["chief-0:2222"]
WORKERS = ["worker-0:2222", "worker-1:2222"]


def _tf_config(task_type, index=None, jobs=None, **more):
    task = {"type": task_type} if index is None else {"type": task_type, "index": index}
    return json.dumps({"cluster": jobs or {"chief": CHIEF, "worker": WORKERS, "ps": PS}, "task": task, **more})


def _settings(text, ps_hosts="", worker_hosts="", job_name="", task_index=0):
    return tf_config.cluster_settings(ps_hosts, worker_hosts, job_name, task_index, {"TF_CONFIG": text})


# ----------------------------------------------------------------------------- mapping


@pytest.mark.parametrize("task_type, index, job, trainer_index", [
    ("chief", 0, "worker", 0),
    ("worker", 0, "worker", 1),
    ("worker", 1, "worker", 2),
    ("ps", 1, "ps", 1),
])
def test_the_chief_is_worker_0_and_workers_follow_it(task_type, index, job, trainer_index, caplog):
    caplog.set_level("INFO")
    settings = _settings(_tf_config(task_type, index))
    assert settings == cluster.ClusterSettings(tuple(PS), tuple(CHIEF + WORKERS), job, trainer_index)
    assert settings.is_chief == (task_type == "chief")
    line = f"The cluster comes from TF_CONFIG: its task {task_type}:{index} is {settings.describe()}"
    assert line in caplog.text and "of 2 ps + 3 worker(s)" in line


def test_without_a_chief_worker_0_is_the_chief_as_with_the_flags():
    settings = _settings(_tf_config("worker", 0, {"worker": WORKERS, "ps": PS}))
    assert settings == cluster.settings_from_flags(",".join(PS), ",".join(WORKERS), "worker", 0)
    assert settings.is_chief


def test_master_is_the_chief_s_old_name_an_evaluator_is_left_out_and_a_chief_needs_no_index():
    jobs = {"master": CHIEF, "worker": WORKERS[:1], "ps": PS[:1], "evaluator": ["eval-0:2222"]}
    assert _settings(_tf_config("master", None, jobs)) == cluster.ClusterSettings(
        tuple(PS[:1]), tuple(CHIEF + WORKERS[:1]), "worker", 0)
    extra = json.dumps({"cluster": jobs, "task": {"type": "worker", "index": "0"}, "environment": "cloud",
                        "rpc_layer": "grpc", "job": {"args": ["--x"]}})  # what managed services add
    assert _settings(extra).task_index == 1


@pytest.mark.parametrize("text", [None, "", "  ", "{}", '{"cluster": {}}', '{"cluster": {}, "task": {}}'])
def test_no_tf_config_or_no_cluster_in_it_is_this_machine(text, caplog):
    caplog.set_level("INFO")
    environ = {} if text is None else {"TF_CONFIG": text}
    assert tf_config.cluster_settings("", "", "", 0, environ) is None
    assert ("describes no cluster: training on this machine alone" in caplog.text) == bool(text and text.strip())


def test_one_chief_or_worker_and_no_ps_trains_on_this_machine(caplog):
    """What a one-replica job of a managed service gets: not an error, one machine."""
    caplog.set_level("INFO")
    assert _settings(_tf_config("chief", 0, {"chief": CHIEF})) is None
    assert _settings(_tf_config("worker", 0, {"worker": WORKERS[:1]})) is None
    assert "TF_CONFIG describes one chief (task chief:0) and no ps: training on this machine alone" in caplog.text


@pytest.mark.parametrize("text, fragment", [
    ("{", "not valid JSON (Expecting property name enclosed in double quotes at line 1 column 2)"),
    ('["chief"]', "expected a JSON object with 'cluster' and 'task'"),
    ('{"cluster": ["a:1"]}', "'cluster' must be an object of job name -> list of host:port"),
    (json.dumps({"cluster": {"chief": CHIEF, "ps": PS}}), "no 'task': each process needs its own \"task\""),
    (json.dumps({"cluster": {"chief": CHIEF, "ps": PS}, "task": {"index": 0}}), "the task has no type"),
    (_tf_config("evaluator", 0), "eval_ssd_network.py --checkpoint_path=<the chief's --train_dir> "
                                 "--wait_for_checkpoints"),
    (_tf_config("trainer", 0), "task type 'trainer' is not one this trainer runs (ps, worker, chief, master)"),
    (_tf_config("worker", 2), "task worker:2 is out of range: cluster.worker lists 2 host(s), so the index must be "
                              "in [0, 1]"),
    (_tf_config("chief", 1), "task chief:1 is out of range: cluster.chief lists 1 host(s)"),
    (_tf_config("worker", -1), "task worker:-1 is out of range"),
    (_tf_config("worker", None), "task 'worker' has index None; expected an integer"),
    (_tf_config("worker", 1.5), "task 'worker' has index 1.5; expected an integer"),
    (_tf_config("ps", 0, {"ps": PS}), "the cluster has no chief and no worker (jobs: ps)"),
    (_tf_config("ps", 0, {"ps": PS, "evaluator": ["e:1"]}), "the cluster has no chief and no worker"),
    (_tf_config("chief", 0, {"chief": CHIEF + WORKERS[:1], "ps": PS}),
     "cluster.chief lists 2 hosts (chief-0:2222, worker-0:2222); a cluster has one chief (worker 0)"),
    (_tf_config("chief", 0, {"chief": CHIEF, "master": WORKERS[:1], "ps": PS}), "both a 'chief' and a 'master'"),
    (_tf_config("worker", 0, {"worker": WORKERS}), "the cluster has 2 chief/worker tasks and no ps"),
    (_tf_config("chief", 0, {"chief": CHIEF, "ps": CHIEF}), "chief-0:2222 is listed for two tasks"),
    (_tf_config("chief", 0, {"chief": CHIEF, "worker": CHIEF, "ps": PS}), "chief-0:2222 is listed for two tasks"),
    (_tf_config("chief", 0, {"chief": CHIEF, "ps": ["ps-0"]}), "TF_CONFIG's cluster.ps: 'ps-0' is not host:port"),
    (_tf_config("chief", 0, {"chief": CHIEF, "ps": PS + PS[:1]}), "TF_CONFIG's cluster.ps lists ps-0:2222 more "
                                                                  "than once"),
    (_tf_config("chief", 0, {"chief": CHIEF, "ps": "ps-0:2222"}), "cluster.ps must be a list of host:port"),
    (_tf_config("chief", 0, {"chief": CHIEF, "ps": PS, "workers": WORKERS}),
     "the cluster has job(s) 'workers'; this trainer runs ps, worker, chief, master tasks"),
    (_tf_config("chief", 0, rpc_layer="grpc+verbs"), "rpc_layer 'grpc+verbs' is not supported"),
])
def test_errors_are_one_line_naming_tf_config_and_the_fault(text, fragment):
    with pytest.raises(cluster.ClusterError) as info:
        _settings(text)
    message = str(info.value)
    assert "TF_CONFIG" in message and fragment in message and "\n" not in message, message


# ----------------------------------------------------------------------------- flags and TF_CONFIG together


def test_flags_that_describe_the_same_cluster_and_task_win_with_one_line(caplog):
    caplog.set_level("INFO")
    settings = _settings(_tf_config("worker", 1), ",".join(PS), ",".join(CHIEF + WORKERS), "worker", 2)
    assert settings == cluster.ClusterSettings(tuple(PS), tuple(CHIEF + WORKERS), "worker", 2)
    assert ("The cluster flags and TF_CONFIG (task worker:1) describe the same cluster and task: worker task 2 at "
            "worker-1:2222 of 2 ps + 3 worker(s), from the flags") in caplog.text


@pytest.mark.parametrize("flags, fragments", [
    # The chief is TF_CONFIG's first worker: flags listing it last describe another cluster.
    ((PS, WORKERS + CHIEF, "worker", 0),
     ["--worker_hosts=worker-0:2222,worker-1:2222,chief-0:2222 but TF_CONFIG's workers (its chief, then its "
      "workers) are chief-0:2222,worker-0:2222,worker-1:2222",
      "--job_name=worker --task_index=0 but TF_CONFIG's task worker:1 is worker task 2"]),
    ((PS[:1], CHIEF + WORKERS, "worker", 2), ["--ps_hosts=ps-0:2222 but TF_CONFIG's ps are ps-0:2222,ps-1:2222"]),
    ((PS, CHIEF + WORKERS, "ps", 1), ["--job_name=ps --task_index=1 but TF_CONFIG's task worker:1 is worker task 2"]),
    # Addresses are compared as written (no name resolution).
    ((PS, ["chief-0:2222", "worker-0:2222", "localhost:2222"], "worker", 2), ["--worker_hosts="]),
])
def test_flags_that_contradict_tf_config_are_an_error_naming_both_values(flags, fragments):
    ps, workers, job, index = flags
    with pytest.raises(cluster.ClusterError) as info:
        _settings(_tf_config("worker", 1), ",".join(ps), ",".join(workers), job, index)
    message = str(info.value)
    assert message.startswith("the cluster flags and TF_CONFIG disagree: ") and "\n" not in message
    assert message.endswith("(unset TF_CONFIG or drop the cluster flags)")
    assert all(fragment in message for fragment in fragments), message


def test_flags_against_a_one_machine_tf_config_disagree_and_a_malformed_one_is_not_ignored():
    with pytest.raises(cluster.ClusterError, match="--ps_hosts=ps-0:2222 but TF_CONFIG's ps are none"):
        _settings(_tf_config("chief", 0, {"chief": CHIEF}), PS[0], CHIEF[0], "worker", 0)
    with pytest.raises(cluster.ClusterError, match="TF_CONFIG: not valid JSON"):
        _settings("{", ",".join(PS), ",".join(CHIEF), "worker", 0)
    # A TF_CONFIG without a cluster describes nothing to contradict.
    assert _settings("{}", PS[0], CHIEF[0], "worker", 0) == cluster.ClusterSettings((PS[0],), (CHIEF[0],), "worker", 0)


def test_a_job_name_without_host_lists_must_name_tf_config_s_task():
    assert _settings(_tf_config("worker", 0), job_name="worker", task_index=1).task_index == 1
    with pytest.raises(cluster.ClusterError) as info:
        _settings(_tf_config("worker", 0), job_name="worker", task_index=0)
    assert str(info.value) == ("the flags and TF_CONFIG disagree: --job_name=worker --task_index=0 but TF_CONFIG's "
                               "task worker:0 is worker task 1 (drop --job_name and --task_index: TF_CONFIG gives "
                               "the task)")


def test_the_trainer_reports_a_bad_tf_config_in_one_line_with_status_2(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TF_CONFIG", _tf_config("evaluator", 0))
    with pytest.raises(SystemExit) as info:
        train_ssd_network.main([f"--train_dir={tmp_path / 'train'}"])
    assert info.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("TF_CONFIG: this process is the evaluator"), errors


# ----------------------------------------------------------------------------- the local launcher


def test_the_launcher_via_tf_config_gives_each_task_a_tfjob_s_tf_config_and_no_cluster_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", _tf_config("chief", 0))  # inherited: never passed on
    local = LocalCluster(1, 3, ["--train_dir=x"], log_dir=str(tmp_path), via_tf_config=True)
    expected_cluster = {"chief": local.worker_hosts[:1], "ps": local.ps_hosts, "worker": local.worker_hosts[1:]}
    tasks = [("worker", 0, {"type": "chief", "index": 0}), ("worker", 2, {"type": "worker", "index": 1}),
             ("ps", 0, {"type": "ps", "index": 0})]
    for job, index, task in tasks:
        text = local.task_env(job, index)["TF_CONFIG"]
        assert json.loads(text) == {"cluster": expected_cluster, "task": task}
        assert tf_config.parse(text).settings() == cluster.ClusterSettings(
            tuple(local.ps_hosts), tuple(local.worker_hosts), job, index)
        assert local.command(job, index)[2:] == ["--train_dir=x"]
    with_flags = LocalCluster(1, 1, log_dir=str(tmp_path))
    assert "TF_CONFIG" not in with_flags.task_env("worker", 0)
    assert with_flags.command("worker", 0)[2:] == [f"--ps_hosts={with_flags.ps_hosts[0]}",
                                                   f"--worker_hosts={with_flags.worker_hosts[0]}",
                                                   "--job_name=worker", "--task_index=0"]
    args, _ = launch_local_cluster.parse_args(["--via_tf_config", "--", "--train_dir=x"])
    assert args.via_tf_config


TINY = ["--image_size=96", "--batch_size=2", "--num_readers=1", "--num_preprocessing_threads=1",
        "--log_every_n_steps=1", "--summarize_activations=false", "--summarize_variables=false",
        "--num_summary_images=0", "--checkpoint_path=", "--save_summaries_secs=3600", "--validation_split=",
        "--dist_startup_timeout_secs=120"]
RUN_TIMEOUT_SECS = 240
STEP_LINE = re.compile(r"global step (\d+): loss = ([-+0-9.eE]+|nan|inf)")


@pytest.mark.slow
def test_a_chief_a_worker_and_a_ps_started_through_tf_config_alone_train_as_one_sync_cluster(tmp_path,
                                                                                           sample_dataset_dir):
    """Chief + worker + ps on 127.0.0.1, no cluster flags. Synchronous training with both replicas
    aggregated and no head-start tokens (cluster.SyncReplicasOptimizer): the first update waits for
    a gradient of each worker, so the chief's checkpoint at step 2 proves the two trained as one
    cluster on the ps's variables."""
    steps = 2
    train_dir = tmp_path / "train"
    args = TINY + [f"--dataset_dir={sample_dataset_dir}", f"--train_dir={train_dir}",
                   f"--max_number_of_steps={steps}", "--sync_replicas", "--save_interval_secs=3600"]
    with LocalCluster(1, 2, args, log_dir=str(tmp_path / "logs"), via_tf_config=True) as local:
        local.start_all()
        codes = local.wait_workers(timeout=RUN_TIMEOUT_SECS)
        logs = [local.read_log("worker", i) for i in range(2)] + [local.read_log("ps", 0)]
        commands = [local.command("worker", i) for i in range(2)]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert not any(arg.startswith(("--ps_hosts", "--worker_hosts", "--job_name", "--task_index"))
                   for command in commands for arg in command)
    chief, worker, ps = logs
    assert "The cluster comes from TF_CONFIG: its task chief:0 is worker task 0 at " in chief
    assert "(chief) of 1 ps + 2 worker(s)" in chief
    assert "The cluster comes from TF_CONFIG: its task worker:0 is worker task 1 at " in worker
    assert "The cluster comes from TF_CONFIG: its task ps:0 is ps task 0 at " in ps
    for log in (chief, worker):
        assert STEP_LINE.search(log), log[-3000:]
    checkpoint = tf.train.latest_checkpoint(str(train_dir))
    assert int(tf.train.load_checkpoint(checkpoint).get_tensor("global_step")) == steps


# ----------------------------------------------------------------------------- docs/tfjob.yaml

TFJOB = REPO_ROOT / "docs" / "tfjob.yaml"
CLUSTER_FLAG = re.compile(r"--(ps_hosts|worker_hosts|job_name|task_index)\b")


def _replica_specs(text):
    """{replica type: its lines} of a TFJob manifest's tfReplicaSpecs, comments left out (PyYAML is not a
    dependency: the structure is read from the indentation the manifest is written with)."""
    replicas, current = {}, None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"    (\w+):", line)
        if match:
            current = match.group(1)
            replicas[current] = []
        elif current and line.startswith("      "):
            replicas[current].append(line.split(" #")[0].rstrip())
        else:
            current = None
    return replicas


def test_the_tfjob_manifest_runs_2_ps_a_gpu_chief_and_a_gpu_worker_without_cluster_flags():
    text = TFJOB.read_text()
    assert "\t" not in text
    assert re.search(r"^apiVersion: kubeflow\.org/v1$", text, re.M) and re.search(r"^kind: TFJob$", text, re.M)
    replicas = _replica_specs(text)
    assert sorted(replicas) == ["Chief", "PS", "Worker"], replicas
    spec = {name: "\n".join(lines) for name, lines in replicas.items()}
    counts = {name: int(re.search(r"^      replicas: (\d+)$", body, re.M).group(1)) for name, body in spec.items()}
    assert counts == {"PS": 2, "Chief": 1, "Worker": 1}
    for name, body in spec.items():
        # The operator sets TF_CONFIG in the container named tensorflow, and names its port tfjob-port.
        assert "- name: tensorflow" in body and "name: tfjob-port" in body, name
        assert 'command: ["python", "/opt/ssd-towers/train_ssd_network.py"]' in body, name
        assert not CLUSTER_FLAG.search(body), name
        assert ("nvidia.com/gpu: 1" in body) == (name != "PS"), name
    # The workers share one list of trainer flags (a YAML anchor): the chief's.
    assert "args: &trainer_flags" in spec["Chief"] and "args: *trainer_flags" in spec["Worker"]
    chief_flags = re.findall(r"^ +- (--\w+)", spec["Chief"], re.M)
    assert {"--train_dir", "--dataset_dir", "--num_clones", "--sync_replicas", "--num_epochs"} <= set(chief_flags)


def test_the_tfjob_manifest_parses_as_yaml():
    import yaml  # a dependency since the YOLO reader (data.yaml)

    job = yaml.safe_load(TFJOB.read_text())
    replicas = job["spec"]["tfReplicaSpecs"]
    assert {name: r["replicas"] for name, r in replicas.items()} == {"PS": 2, "Chief": 1, "Worker": 1}
    containers = {name: r["template"]["spec"]["containers"][0] for name, r in replicas.items()}
    assert containers["Worker"]["args"] == containers["Chief"]["args"]
    assert not any(CLUSTER_FLAG.search(arg) for c in containers.values() for arg in c["args"])
