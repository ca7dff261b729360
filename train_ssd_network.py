#!/usr/bin/env python
"""Trains an SSD network on a converted dataset, one tower per GPU, with slim.learning.train.

    python train_ssd_network.py --train_dir=ckpt/fine_tuning --checkpoint_path=ckpt/pre_trained \
        [--dataset_dir=data/voc07] [--num_clones=2] ...
    tensorboard --logdir=ckpt/fine_tuning

Without ``--dataset_dir`` it trains on the built-in synthetic sample dataset (generated once
into a cache directory). Start-up precedence (logged in one line): a checkpoint already in
``--train_dir`` resumes; else ``--checkpoint_path`` is restored (class heads of another class
count are skipped); else training starts from scratch with a warning.

A task of a multi-machine cluster gets ``--ps_hosts``, ``--worker_hosts``, ``--job_name`` and
``--task_index``; without them it reads the cluster from the ``TF_CONFIG`` environment variable
that Kubernetes (Kubeflow's TFJob, docs/tfjob.yaml) and managed training services set.

This command parses its flags (generated from :class:`training.config.TrainingConfig`) and calls
:func:`training.trainer.train`; the README's layout section follows one training step from here.
"""

import sys

import package_guard

package_guard.ensure_project_packages()

import command_line  # noqa: E402

from absl import flags  # noqa: E402

from datasets import dataset_factory  # noqa: E402
from deployment import cluster, train_op as train_op_lib  # noqa: E402
from training import trainer  # noqa: E402
from training.config import TrainingConfig, define_flags  # noqa: E402

FLAGS = define_flags(flags.FlagValues())

# Failures of training with their own exit status, before the common mapping (command_line.run_command).
_FAILURES = (
    (train_op_lib.NonFiniteLossError, command_line.EXIT_STOPPED, None),
    ((dataset_factory.DatasetError, cluster.ClusterError), command_line.EXIT_USAGE, None),
    (cluster.LOST_CLUSTER_ERRORS, cluster.LOST_CLUSTER_EXIT_CODE,
     lambda error: cluster.lost_cluster_message(f"{type(error).__name__}: {command_line.first_line(error)}")),
)


def main(argv=None):
    def work(options):
        return trainer.train(TrainingConfig.from_dict(vars(options)))

    sys.exit(command_line.run_graph_command(FLAGS, argv, __doc__, work, _FAILURES))


if __name__ == "__main__":
    main()
