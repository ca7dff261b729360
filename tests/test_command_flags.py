"""Every command reads absl flags through command_line.parse_flags, each on its own FlagValues.

parse_flags itself (unknown flag, bad value, missing required flag, --help, stray arguments, two
commands with the same flag names in one process), then one quick check per command: ``--help``
exits 0 and lists a flag, a bad flag exits 2 with one ERROR line naming it. Nothing here builds a
graph or touches a file: the command line is rejected (or the help printed) before any work.
"""

import importlib
import logging
import os
import sys

import pytest
from absl import flags

import command_line

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flag_values():
    values = flags.FlagValues()
    flags.DEFINE_string("checkpoint_path", None, "A checkpoint prefix or its directory.", required=True,
                        flag_values=values)
    flags.DEFINE_integer("batch_size", 8, "Images per forward pass.", flag_values=values)
    flags.DEFINE_float("min_score", 0.5, "Smallest score kept.", flag_values=values)
    flags.DEFINE_bool("keep_best", False, "Keep the best checkpoint.", flag_values=values)
    flags.DEFINE_enum("resize_mode", "warp", ["warp", "pad"], "How images are resized.", flag_values=values)
    flags.DEFINE_multi_string("dataset_dir", [], "A dataset; repeat for several.", flag_values=values)
    return values


def _usage_error(capsys, flag_values, argv, **options):
    """The one ERROR line a bad command line prints; asserts exit status 2 and nothing else on stderr."""
    with pytest.raises(SystemExit) as stopped:
        command_line.parse_flags(flag_values, argv, "A test command.", **options)
    assert stopped.value.code == command_line.EXIT_USAGE == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), captured.err
    assert captured.out == ""
    return lines[0]


# ----------------------------------------------------------------------------- parse_flags


def test_values_come_back_as_a_namespace_in_both_spellings():
    options = command_line.parse_flags(
        _flag_values(), ["--checkpoint_path", "ckpt/a", "--batch_size=4", "--keep_best", "--resize_mode=pad",
                         "--dataset_dir=a", "--dataset_dir", "b", "--min_score", "0.25"])
    assert (options.checkpoint_path, options.batch_size, options.keep_best, options.resize_mode) == (
        "ckpt/a", 4, True, "pad")
    assert options.dataset_dir == ["a", "b"] and options.min_score == 0.25
    assert command_line.parse_flags(_flag_values(), ["--checkpoint_path=x", "--nokeep_best"]).keep_best is False


def test_a_second_parse_forgets_the_first():
    values = _flag_values()
    command_line.parse_flags(values, ["--checkpoint_path=x", "--batch_size=3", "--dataset_dir=a"])
    options = command_line.parse_flags(values, ["--checkpoint_path=y"])
    assert (options.checkpoint_path, options.batch_size, options.dataset_dir) == ("y", 8, [])


def test_unknown_flag_is_one_line_naming_it_with_a_suggestion(capsys):
    line = _usage_error(capsys, _flag_values(), ["--checkpoint_path=x", "--batch_sise=4"])
    assert "unknown flag --batch_sise" in line and "did you mean --batch_size?" in line


def test_a_value_that_does_not_parse_names_the_flag(capsys):
    line = _usage_error(capsys, _flag_values(), ["--checkpoint_path=x", "--batch_size=four"])
    assert line.startswith("ERROR: --batch_size=four: ") and "four" in line
    line = _usage_error(capsys, _flag_values(), ["--checkpoint_path=x", "--resize_mode=squash"])
    assert "--resize_mode=squash" in line and "warp|pad" in line
    assert "--keep_best" in _usage_error(capsys, _flag_values(), ["--checkpoint_path=x", "--keep_best=maybe"])
    assert "--batch_size" in _usage_error(capsys, _flag_values(), ["--checkpoint_path=x", "--batch_size"])


def test_missing_required_flags_are_all_named(capsys):
    assert _usage_error(capsys, _flag_values(), ["--batch_size=2"]) == (
        "ERROR: the following flags are required: --checkpoint_path")
    values = _flag_values()
    flags.DEFINE_string("output_dir", None, "Where results go.", flag_values=values)
    flags.mark_flag_as_required("output_dir", flag_values=values)
    assert _usage_error(capsys, values, []) == (
        "ERROR: the following flags are required: --checkpoint_path, --output_dir")


def test_a_validator_s_message_names_its_flag(capsys):
    values = _flag_values()
    flags.register_validator("batch_size", lambda size: size != 13, message="13 is unlucky", flag_values=values)
    assert _usage_error(capsys, values, ["--checkpoint_path=x", "--batch_size=13"]) == (
        "ERROR: --batch_size=13: 13 is unlucky")


def test_stray_positional_arguments_are_rejected(capsys):
    line = _usage_error(capsys, _flag_values(), ["--checkpoint_path=x", "images/a.jpg"])
    assert "unrecognized arguments: images/a.jpg" in line
    assert "stray" in _usage_error(capsys, _flag_values(), ["--checkpoint_path=x", "--", "stray"])


def test_positional_arguments_when_the_command_takes_them(capsys):
    inputs = command_line.Positional("inputs", "Image files.", at_least=1)
    options = command_line.parse_flags(_flag_values(), ["a.jpg", "--checkpoint_path=x", "b/"], positional=inputs)
    assert options.inputs == ["a.jpg", "b/"] and options.checkpoint_path == "x"
    assert command_line.parse_flags(_flag_values(), ["--checkpoint_path=x", "--", "--not-a-flag"],
                                    positional=inputs).inputs == ["--not-a-flag"]
    assert _usage_error(capsys, _flag_values(), ["--checkpoint_path=x"], positional=inputs) == (
        "ERROR: the following arguments are required: inputs")


@pytest.mark.parametrize("help_flag", ["--help", "-h", "--helpfull"])
def test_help_prints_the_doc_and_every_flag_then_exits_0(capsys, help_flag):
    with pytest.raises(SystemExit) as stopped:
        command_line.parse_flags(_flag_values(), ["--bogus", help_flag], "Frobs the widgets.\n\nAt length.",
                                 program="frob.py")
    assert stopped.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: frob.py [flags]") and "Frobs the widgets." in printed
    assert "--batch_size: Images per forward pass." in printed and "(default: '8')" in printed
    assert "--[no]keep_best: Keep the best checkpoint." in printed
    assert "--checkpoint_path: A checkpoint prefix or its directory.\n    (required)" in printed


def test_two_commands_with_the_same_flag_names_live_in_one_process():
    first, second = _flag_values(), _flag_values()
    for values in (first, second):
        flags.DEFINE_string("flags_test_only", "x", "A name no command uses.", flag_values=values)
    a = command_line.parse_flags(first, ["--checkpoint_path=a", "--batch_size=1", "--flags_test_only=a"])
    b = command_line.parse_flags(second, ["--checkpoint_path=b"])
    assert (a.checkpoint_path, a.batch_size, b.checkpoint_path, b.batch_size) == ("a", 1, "b", 8)
    assert first["batch_size"].value == 1 and second["batch_size"].value == 8
    assert "flags_test_only" not in flags.FLAGS  # nothing lands on absl's global FlagValues


def test_a_second_parse_of_one_flag_values_logs_nothing(caplog):
    values = _flag_values()
    command_line.parse_flags(values, ["--checkpoint_path=a"])
    with caplog.at_level(logging.DEBUG):
        command_line.parse_flags(values, ["--checkpoint_path=b"])
    assert caplog.records == []


def test_absl_logging_s_own_flags_count_as_parsed():
    command_line.parse_flags(_flag_values(), ["--checkpoint_path=x"])
    assert flags.FLAGS.is_parsed()  # else absl logging prints "Logging before flag parsing" and ignores its flags


def test_integer_lists_and_defaults_for_tests(capsys):
    values = flags.FlagValues()
    command_line.define_integer_list("batch_sizes", [1, 8], "Batch sizes.", values)
    assert command_line.parse_flags(values, []).batch_sizes == [1, 8]
    assert command_line.parse_flags(values, ["--batch_sizes=2,4"]).batch_sizes == [2, 4]
    assert "--batch_sizes=2,x" in _usage_error(capsys, values, ["--batch_sizes=2,x"])
    defaults = command_line.flag_defaults(_flag_values(), {"batch_size": 2})
    assert (defaults.batch_size, defaults.checkpoint_path, defaults.resize_mode) == (2, None, "warp")
    with pytest.raises(ValueError, match=r"unknown widget options \['batchsize'\]"):
        command_line.flag_defaults(_flag_values(), {"batchsize": 2}, "widget options")


# ----------------------------------------------------------------------------- every command


def _bench(name):
    path = os.path.join(REPO_ROOT, "bench")
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(name)


COMMANDS = {
    # module: (import, a flag its help shows, the arguments that satisfy its required flags)
    "eval_ssd_network": (lambda: importlib.import_module("eval_ssd_network"), "--keep_best", ["--checkpoint_path=x"]),
    "export_ssd_network": (lambda: importlib.import_module("export_ssd_network"), "--overwrite",
                           ["--checkpoint_path=x", "--output_dir=y"]),
    "detect": (lambda: importlib.import_module("detect"), "--saved_model",
               ["a.jpg", "--saved_model=m", "--output_dir=o"]),
    "tf_convert_data": (lambda: importlib.import_module("tf_convert_data"), "--unknown_class",
                        ["--dataset_dir=d", "--output_dir=o"]),
    "launch_local_cluster": (lambda: importlib.import_module("launch_local_cluster"), "--num_workers", []),
    "vgg16_imagenet_check": (lambda: importlib.import_module("checkpoints.vgg16_imagenet_check"), "--record",
                             ["--checkpoint_path=x"]),
    "convert_class_count": (lambda: importlib.import_module("checkpoints.convert_class_count"),
                            "--reinitialize_heads", ["--checkpoint_path=x", "--output=y", "--num_classes=4"]),
    "convert_keras_vgg16": (lambda: importlib.import_module("checkpoints.convert_keras_vgg16"), "--keras_weights",
                            ["--keras_weights=x"]),
    "shard_check": (lambda: importlib.import_module("datasets.shard_check"), "--dataset_dir", ["--dataset_dir=x"]),
    "browse": (lambda: importlib.import_module("datasets.browse"), "--augmented",
               ["--dataset_dir=x", "--split=s", "--output_dir=o"]),
    "anchor_coverage": (lambda: importlib.import_module("nets.anchor_coverage"), "--match_threshold",
                        ["--dataset_dir=x"]),
    "bench_convert": (lambda: _bench("bench_convert"), "--workers", []),
    "bench_convert_coco": (lambda: _bench("bench_convert_coco"), "--polygon_points", []),
    "bench_distributed": (lambda: _bench("bench_distributed"), "--modes", []),
    "bench_eval": (lambda: _bench("bench_eval"), "--batch_sizes", []),
    "bench_forward": (lambda: _bench("bench_forward"), "--img_size", []),
    "bench_gpu": (lambda: _bench("bench_gpu"), "--cpu_smoke", []),
    "bench_input_pipeline": (lambda: _bench("bench_input_pipeline"), "--parallel_calls", []),
    "bench_quality": (lambda: _bench("bench_quality"), "--evaluate_only", ["--work_dir=w"]),
    "bench_target_encoding": (lambda: _bench("bench_target_encoding"), "--boxes", []),
    "bench_train": (lambda: _bench("bench_train"), "--configs", []),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help_and_names_a_bad_flag(command, capsys):
    load, shown_flag, required = COMMANDS[command]
    module = load()
    with pytest.raises(SystemExit) as stopped:
        module.main([*required, "--help"])
    assert stopped.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: ")
    assert f"\n  {shown_flag}:" in printed or f"\n  --[no]{shown_flag[2:]}:" in printed, printed
    with pytest.raises(SystemExit) as stopped:
        module.main([*required, "--no_such_flag=1"])
    assert stopped.value.code == command_line.EXIT_USAGE
    errors = capsys.readouterr().err.splitlines()
    assert errors == ["ERROR: unknown flag --no_such_flag; --help lists the flags"]


@pytest.mark.parametrize("command, argv, named", [
    ("eval_ssd_network", ["--checkpoint_path=x", "--batch_size=eight"], "--batch_size=eight"),
    ("eval_ssd_network", [], "--checkpoint_path"),
    ("export_ssd_network", ["--checkpoint_path=x"], "--output_dir"),
    ("detect", ["a.jpg", "--output_dir=o"], "--saved_model --checkpoint_path"),
    ("detect", ["a.jpg", "--output_dir=o", "--saved_model=m", "--checkpoint_path=c"], "--checkpoint_path: not allowed"),
    ("detect", ["--output_dir=o", "--saved_model=m"], "inputs"),
    ("tf_convert_data", ["--dataset_dir=d", "--output_dir=o", "--splits=,"], "--splits: give at least one split name"),
    ("tf_convert_data", ["--dataset_dir=d", "--output_dir=o", "--unknown_class=keep"], "--unknown_class=keep"),
    ("launch_local_cluster", ["stray", "--", "--train_dir=t"], "stray"),
    ("convert_class_count", ["--checkpoint_path=x", "--output=y", "--num_classes=4", "--model_name=nope"],
     "--model_name=nope"),
])
def test_commands_name_what_is_wrong(command, argv, named, capsys):
    module = COMMANDS[command][0]()
    with pytest.raises(SystemExit) as stopped:
        module.main(argv)
    assert stopped.value.code == command_line.EXIT_USAGE
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1 and errors[0].startswith("ERROR: ") and named in errors[0], errors


def test_launcher_passes_everything_after_the_double_dash_to_the_trainer():
    import launch_local_cluster

    args, trainer_args = launch_local_cluster.parse_args(["--num_workers=3", "--", "--train_dir=t", "--help"])
    assert (args.num_ps, args.num_workers, trainer_args) == (1, 3, ["--train_dir=t", "--help"])
