"""deployment_checks.check_deployment: each check and its message, with plain arguments (no runtime, no GPU)."""

import logging

import pytest
import tensorflow as tf

from deployment.deployment_checks import check_deployment
from deployment.model_deploy import DeploymentConfig
from tf_compat import tf1

TWO_GPUS = ["/physical_device:GPU:0", "/physical_device:GPU:1"]
CLUSTER = {"ps": ["ps0:2222", "ps1:2222"], "worker": ["w0:2222", "w1:2222"]}


def test_more_clones_than_gpus_lists_the_gpus_and_the_flags_to_change():
    with pytest.raises(ValueError) as error:
        check_deployment(DeploymentConfig(num_clones=3), TWO_GPUS)
    assert str(error.value) == (
        "num_clones=3 but this machine has 2 GPU(s): ['/physical_device:GPU:0', '/physical_device:GPU:1']. "
        "Lower --num_clones to at most 2, or set --clone_on_cpu to run the clones on the CPU.")


def test_several_clones_without_any_gpu():
    with pytest.raises(ValueError, match=r"num_clones=2 but this machine has 0 GPU\(s\): none\. "
                                         r"Lower --num_clones to at most 1, or set --clone_on_cpu"):
        check_deployment(DeploymentConfig(num_clones=2), [])


def test_enough_gpus_or_clones_on_cpu_pass():
    assert check_deployment(DeploymentConfig(num_clones=2), TWO_GPUS) is None
    assert check_deployment(DeploymentConfig(num_clones=1), TWO_GPUS) is None
    assert check_deployment(DeploymentConfig(num_clones=4, clone_on_cpu=True), []) is None


def test_a_single_clone_without_gpu_runs_on_the_cpu(caplog):
    with caplog.at_level(logging.INFO):
        assert check_deployment(DeploymentConfig(), []) is None
        assert check_deployment(DeploymentConfig(), [], session_config=tf1.ConfigProto(allow_soft_placement=True)) is None
    assert "runs on the CPU through soft placement" in caplog.text


def test_a_single_clone_without_gpu_needs_soft_placement():
    with pytest.raises(ValueError, match="no GPU and the session config does not allow soft placement: "
                                         "set allow_soft_placement=True, or set --clone_on_cpu"):
        check_deployment(DeploymentConfig(), [], session_config=tf1.ConfigProto())


def test_cpu_device_per_clone_needs_as_many_logical_cpus():
    config = DeploymentConfig(num_clones=3, clone_on_cpu=True, cpu_device_per_clone=True)
    with pytest.raises(ValueError, match=r"runtime has 2 logical CPU device\(s\).*split_cpu_into_logical_devices\(3\)"):
        check_deployment(config, [], logical_cpus=["/device:CPU:0", "/device:CPU:1"])
    check_deployment(config, [], logical_cpus=["/device:CPU:0", "/device:CPU:1", "/device:CPU:2"])
    check_deployment(config, [])  # not told: not checked
    # Every clone on CPU:0 needs no split.
    check_deployment(DeploymentConfig(num_clones=3, clone_on_cpu=True), [], logical_cpus=["/device:CPU:0"])


def test_ps_tasks_without_a_cluster():
    with pytest.raises(ValueError, match=r"num_ps_tasks=1 needs a cluster: pass cluster_spec=tf.train.ClusterSpec\("
                                         r"\{'ps': \[...\], 'worker': \[...\]\}\) \(--ps_hosts/--worker_hosts\)"):
        check_deployment(DeploymentConfig(num_ps_tasks=1, clone_on_cpu=True), [])


def test_a_cluster_with_too_few_ps_tasks():
    with pytest.raises(ValueError, match=r"num_ps_tasks=3 but the cluster's 'ps' job has 2 task\(s\); "
                                         r"cluster jobs: \{'ps': 2, 'worker': 2\}"):
        check_deployment(DeploymentConfig(num_ps_tasks=3, clone_on_cpu=True), [], CLUSTER)


def test_a_cluster_with_too_few_workers():
    config = DeploymentConfig(num_ps_tasks=2, num_replicas=3, replica_id=2, clone_on_cpu=True)
    with pytest.raises(ValueError, match=r"num_replicas=3 \(replica_id=2\) but the cluster's 'worker' job has 2 task\(s\)"):
        check_deployment(config, [], tf.train.ClusterSpec(CLUSTER))


def test_a_cluster_with_a_ps_job_but_no_ps_tasks():
    with pytest.raises(ValueError, match="the cluster has a 'ps' job but num_ps_tasks=0: set num_ps_tasks to use it"):
        check_deployment(DeploymentConfig(clone_on_cpu=True), [], CLUSTER)


def test_a_matching_cluster_passes_as_a_spec_or_a_dict():
    config = DeploymentConfig(num_ps_tasks=2, num_replicas=2, replica_id=1, clone_on_cpu=True)
    assert check_deployment(config, [], CLUSTER) is None
    assert check_deployment(config, [], tf.train.ClusterSpec(CLUSTER)) is None
    # A cluster of workers only, without ps tasks: nothing to check.
    assert check_deployment(DeploymentConfig(clone_on_cpu=True), [], {"worker": ["w0:2222"]}) is None


def test_the_cluster_is_checked_with_the_configs_job_names():
    config = DeploymentConfig(num_ps_tasks=1, ps_job_name="params", worker_job_name="trainer", clone_on_cpu=True)
    check_deployment(config, [], {"params": ["p:1"], "trainer": ["t:1"]})
    with pytest.raises(ValueError, match=r"the cluster's 'params' job has 0 task\(s\)"):
        check_deployment(config, [], CLUSTER)
    with pytest.raises(ValueError, match=r"pass cluster_spec=tf.train.ClusterSpec\(\{'params': \[...\], 'trainer'"):
        check_deployment(config, [])


def test_a_cluster_of_the_wrong_type():
    with pytest.raises(TypeError):
        check_deployment(DeploymentConfig(num_ps_tasks=1, clone_on_cpu=True), [], ["ps0:2222"])


@pytest.mark.parametrize("kwargs, message", [
    ({"num_clones": 0}, "num_clones must be >= 1, got 0"),
    ({"replica_id": -1}, "replica_id must be >= 0, got -1"),
    ({"num_ps_tasks": -1}, "num_ps_tasks must be >= 0, got -1"),
])
def test_counts_tf_slims_constructor_accepts(kwargs, message):
    config = DeploymentConfig(clone_on_cpu=True, **kwargs)  # TF-Slim's constructor lets these through
    with pytest.raises(ValueError, match=message):
        check_deployment(config, TWO_GPUS)


def test_gpu_check_is_per_worker_with_ps_tasks():
    config = DeploymentConfig(num_clones=2, num_ps_tasks=2, num_replicas=2, replica_id=1)
    check_deployment(config, TWO_GPUS, CLUSTER)
    with pytest.raises(ValueError, match=r"num_clones=2 but this machine has 1 GPU\(s\)"):
        check_deployment(config, TWO_GPUS[:1], CLUSTER)
