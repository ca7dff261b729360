"""training.config: the flags come from the schema, training_config.json goes through it, libraries import no script."""

import ast
import dataclasses
import json
import os

from absl import flags
import pytest

import command_line
from training.config import CONFIG_FILE, DatasetRecord, TrainingConfig, TrainingRecord, define_flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY_PACKAGES = ("datasets", "nets", "preprocessing", "deployment", "checkpoints", "evaluation", "training")
COMMAND_SCRIPTS = {"train_ssd_network", "eval_ssd_network", "export_ssd_network", "detect", "tf_convert_data",
                   "launch_local_cluster"}


def _flags():
    return define_flags(flags.FlagValues())


def test_every_option_is_a_flag_with_its_default_and_help():
    flag_values = _flags()
    fields = dataclasses.fields(TrainingConfig)
    assert sorted(flag_values) == sorted(field.name for field in fields)
    for field in fields:
        assert flag_values[field.name].default == field.default, field.name
        assert flag_values[field.name].help.endswith(field.metadata["help"])  # an enum's help starts <a|b>
    assert flag_values["optimizer"].parser.enum_values == ["sgd", "momentum", "rmsprop", "adam", "adamw", "adagrad",
                                                           "adadelta", "ftrl"]


def test_a_command_line_becomes_the_config_it_names():
    flag_values = _flags()
    command_line.parse_flags(flag_values, ["--batch_size=3", "--clone_on_cpu", "--learning_rate_boundaries=10,20",
                              "--learning_rate_values=0.1,0.01,0.001", "--image_size", "128,96",
                              "--optimizer=momentum"], program="train_ssd_network")
    config = TrainingConfig.from_flags(flag_values)
    assert config == TrainingConfig(batch_size=3, clone_on_cpu=True, learning_rate_boundaries=["10", "20"],
                                    learning_rate_values=["0.1", "0.01", "0.001"], image_size="128,96",
                                    optimizer="momentum")
    assert config.learning_rate_piecewise == ([10, 20], [0.1, 0.01, 0.001])
    assert config.image_shape == (128, 96)
    assert config.images_per_clone_step == 3
    with pytest.raises(SystemExit) as stopped:
        command_line.parse_flags(_flags(), ["--optimizer=lbfgs"], program="train_ssd_network")
    assert stopped.value.code == command_line.EXIT_USAGE


def test_the_record_round_trips_and_reads_what_older_runs_wrote(tmp_path):
    config = TrainingConfig(batch_size=4, image_size="96", moving_average_decay=0.999)
    record = TrainingRecord(config=config, network={"num_classes": 4, "img_shape": [96, 96]}, num_anchors=123,
                            deployment="DeploymentConfig(...)", data_seed=7,
                            dataset=DatasetRecord(dir="/data", split="trainval", num_samples=10, num_classes=4,
                                                  labels={"0": "none", "1": "cat"}),
                            frozen_scopes=("ssd_300_vgg/conv1",), new_layers_only_steps=40)
    path = record.write(str(tmp_path))
    assert path == os.path.join(str(tmp_path), CONFIG_FILE)
    assert TrainingRecord.read(str(tmp_path)) == record
    assert TrainingRecord.read(str(tmp_path)).labels == {0: "none", 1: "cat"}

    # A file of an older (or newer) trainer: options it does not know are ignored, missing ones default.
    document = json.loads(open(path).read())
    document["flags"].pop("seed")
    document["flags"]["an_option_of_another_version"] = 1
    document.pop("num_anchors")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / CONFIG_FILE).write_text(json.dumps(document))
    old = TrainingRecord.read(str(tmp_path / "old"))
    assert old.config.seed == 0 and old.config.batch_size == 4 and old.num_anchors is None
    assert old.new_layers_only_steps == 40 and old.frozen_scopes == ("ssd_300_vgg/conv1",)

    assert TrainingRecord.read(str(tmp_path / "none")) is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=r"bad/training_config.json is not valid JSON"):
        TrainingRecord.read(str(tmp_path / "bad"))


def test_no_library_module_imports_a_command_script():
    offenders = []
    for package in LIBRARY_PACKAGES:
        for directory, _, files in os.walk(os.path.join(REPO_ROOT, package)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(directory, name)
                tree = ast.parse(open(path, encoding="utf-8").read(), path)
                for node in ast.walk(tree):
                    imported = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                    offenders += [f"{os.path.relpath(path, REPO_ROOT)}: {module}" for module in imported
                                  if module.split(".")[0] in COMMAND_SCRIPTS]
    assert offenders == []
