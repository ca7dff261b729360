"""The trainer as a library: one configuration schema, the training graph, and the run.

* :mod:`training.config`: :class:`~training.config.TrainingConfig` (every option; the flags are
  generated from it) and :class:`~training.config.TrainingRecord` (``training_config.json``).
* :mod:`training.plan`: the dataset, the step to resume from, what trains when.
* :mod:`training.graph`: input pipeline, clone function, train op.
* :mod:`training.machines`: this machine or a cluster task, behind one interface.
* :mod:`training.trainer`: :func:`~training.trainer.train`, from a config to ``slim.learning.train``.

``train_ssd_network.py`` parses the flags into a config and calls :func:`training.trainer.train`.
"""
__ssd_towers__ = True  # checked by package_guard: this is ssd-towers' 'training', not a namesake
