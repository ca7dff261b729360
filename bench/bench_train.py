"""Training throughput of SSD300 on this CPU: model_deploy towers against a plain single-tower step.

Configurations, each measured in its own process (so the CPU split into logical devices and
the peak memory belong to that configuration alone), interleaved over ``--repeats`` rounds:

- ``plain``: input pipeline -> SSD net -> multibox loss -> ``optimizer.minimize``, no model_deploy;
- ``towers_1``: ``training.graph.build_training_graph`` with 1 clone (what the trainer runs);
- ``towers_2``: the same with 2 clones on two logical CPU devices (``--clone_on_cpu``), batch per clone
  halved so the global batch is the same;
- ``towers_1_encode_in_tower``: 1 clone, anchor matching in the tower instead of the input pipeline;
- ``towers_1_frozen_conv1_conv2``: 1 clone with conv1/conv2 frozen (the paper's recipe from ImageNet
  weights: no backward pass through them);
- ``towers_1_frozen_vgg``: 1 clone with the whole VGG-16 base (conv1..conv5) frozen: only SSD's own
  layers train.

Any ``towers_*`` configuration takes suffixes for the scale options: ``_bf16`` / ``_fp16``
(``--precision=mixed_bf16`` / ``mixed_fp16``) and ``_xla`` (``--xla``), e.g.
``towers_1_frozen_conv1_conv2_bf16_xla``.

``--baseline_repo`` measures configurations written ``baseline:<name>`` with that checkout's own
``bench/bench_train.py`` (e.g. a ``git worktree`` of the commit before a change), in the same rounds as
the others: a change and its baseline side by side, on the same data and the same machine load.

Prints one JSON object per configuration (images/s min and median over rounds, peak RSS) and the
ratios of medians against ``plain`` and against each baseline configuration. Data: BCCD converted to
TFRecords in a temporary folder (or ``--dataset_dir``), else the built-in sample dataset.

    python bench/bench_train.py [--batch_size 4 --steps 10 --warmup 3 --repeats 3 --image_size 300]
    git worktree add /tmp/before <commit> && python bench/bench_train.py --baseline_repo /tmp/before \
        --configs baseline:towers_1_frozen_conv1_conv2,towers_1_frozen_conv1_conv2_bf16
"""

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

import bench_common  # noqa: E402
import command_line  # noqa: E402

CONFIGS = ("plain", "towers_1", "towers_2", "towers_1_encode_in_tower", "towers_1_frozen_conv1_conv2",
           "towers_1_frozen_vgg")
FROZEN = {"towers_1_frozen_conv1_conv2": ("conv1", "conv2"),
          "towers_1_frozen_vgg": ("conv1", "conv2", "conv3", "conv4", "conv5")}
# Suffixes of a towers_* configuration: TrainingConfig options.
SUFFIX_OPTIONS = {"_bf16": {"precision": "mixed_bf16"}, "_fp16": {"precision": "mixed_fp16"}, "_xla": {"xla": True}}
BASELINE = "baseline:"


def split_config(config):
    """'towers_1_frozen_vgg_bf16_xla' -> ('towers_1_frozen_vgg', {'precision': 'mixed_bf16', 'xla': True})."""
    options = {}
    while True:
        for suffix, suffix_options in SUFFIX_OPTIONS.items():
            if config.endswith(suffix) and config != "plain":
                config = config[: -len(suffix)]
                options.update({k: v for k, v in suffix_options.items() if k not in options})
                break
        else:
            return config, options


def build_plain_step(opts, spec):
    """One tower without model_deploy: the reference the towers must not be slower than."""
    import tensorflow as tf

    from nets import matching, nets_factory
    from tf_compat import tf1
    from training import graph as graph_lib

    net = graph_lib.build_network(opts, spec.num_classes)
    global_step = tf1.train.get_or_create_global_step()
    with tf1.device("/cpu:0"):
        dataset = graph_lib.build_input_dataset(opts, spec, net, opts.seed)
        batch = tf1.data.make_one_shot_iterator(dataset).get_next()
        network_fn = nets_factory.network_fn_of(net, weight_decay=opts.weight_decay, is_training=True)
        _, localisations, logits, _ = network_fn(batch["image"])
        net.losses(logits, localisations, matching.targets_from_dict(batch))
        total_loss = tf1.losses.get_total_loss()
        optimizer = tf1.train.AdamOptimizer(opts.learning_rate)
        train_op = optimizer.minimize(total_loss, global_step=global_step)
        with tf.control_dependencies([train_op]):
            return tf.identity(total_loss)


def run_one(config, args):
    """Measures one configuration in this process; returns its result dict."""
    import package_guard

    package_guard.ensure_project_packages()
    import tensorflow as tf

    from datasets import dataset_factory
    from deployment import devices
    from tf_compat import tf1
    from training import graph as graph_lib, machines
    from training.config import TrainingConfig

    tf1.disable_eager_execution()
    name = config
    config, scale_options = split_config(config)
    num_clones = 2 if config == "towers_2" else 1
    if num_clones > 1:
        devices.split_cpu_into_logical_devices(num_clones)
    opts = TrainingConfig(
        image_size=str(args.image_size), batch_size=args.batch_size // num_clones, num_clones=num_clones,
        clone_on_cpu=num_clones > 1, num_readers=2, num_preprocessing_threads=2,
        encode_targets_in="tower" if config == "towers_1_encode_in_tower" else "input",
        summarize_activations=False, summarize_variables=False, num_summary_images=0, **scale_options,
    )
    spec = dataset_factory.get_dataset(None, "trainval", args.dataset_dir)
    with tf.Graph().as_default():
        if config == "plain":
            step = build_plain_step(opts, spec)
        else:
            frozen = [f"ssd_300_vgg/{block}" for block in FROZEN.get(config, ())]
            step = graph_lib.build_training_graph(opts, spec, machines.deployment_for(opts),
                                                  frozen_scopes=frozen).train.train_tensor
        with tf1.Session(config=devices.session_config()) as session:
            session.run([tf1.global_variables_initializer(), tf1.local_variables_initializer()])
            elapsed = bench_common.timed_steps(session, step, args.warmup, args.steps)
    return {
        "config": name,
        "images_per_sec": args.batch_size * args.steps / elapsed,
        "peak_rss_mib": bench_common.peak_rss_mib(),
    }


def define_flags(flag_values):
    fv = {"flag_values": flag_values}
    flags.DEFINE_integer("batch_size", 4, "global batch (split across clones)", **fv)
    flags.DEFINE_integer("image_size", 300, "Network input size.", **fv)
    flags.DEFINE_integer("steps", 10, "Timed steps per run.", **fv)
    flags.DEFINE_integer("warmup", 3, "Steps before the timing starts.", **fv)
    flags.DEFINE_integer("repeats", 3, "Rounds over the configurations.", **fv)
    flags.DEFINE_string("configs", ",".join(CONFIGS), "comma-separated configurations to measure", **fv)
    flags.DEFINE_string("dataset_dir", None, "a converted dataset (default: BCCD, else the sample dataset)", **fv)
    flags.DEFINE_string("one", None, "(internal) child process: measure this configuration", **fv)
    flags.DEFINE_string("baseline_repo", None, "A checkout of another commit: configurations written "
                        "'baseline:<name>' are measured with its bench/bench_train.py.", **fv)
    return flag_values


def unknown_configs(configs, baseline_repo):
    unknown = []
    for config in configs:
        if config.startswith(BASELINE):
            if not baseline_repo:
                unknown.append(f"{config} (needs --baseline_repo)")
            continue
        base, _ = split_config(config)
        if base not in CONFIGS or (base == "plain" and base != config):
            unknown.append(config)
    return unknown


def main(argv=None):
    args = command_line.parse_flags(define_flags(flags.FlagValues()), argv, __doc__)

    if args.one:
        print(json.dumps(run_one(args.one, args)), flush=True)
        return

    configs = [c for c in args.configs.split(",") if c]
    unknown = unknown_configs(configs, args.baseline_repo)
    if unknown:
        raise SystemExit(f"unknown configs {unknown}; choose from {CONFIGS} (towers_* with the suffixes "
                         f"{', '.join(SUFFIX_OPTIONS)}), or baseline:<name> with --baseline_repo")
    with tempfile.TemporaryDirectory() as work_dir:
        dataset_dir = bench_common.prepare_dataset(args.dataset_dir, work_dir)
        results = {config: [] for config in configs}
        for _ in range(args.repeats):
            for config in configs:
                script, one, cwd = __file__, config, None
                if config.startswith(BASELINE):
                    script = os.path.join(args.baseline_repo, "bench", "bench_train.py")
                    one, cwd = config[len(BASELINE):], args.baseline_repo
                command = [sys.executable, script, f"--one={one}", f"--dataset_dir={dataset_dir}",
                           f"--batch_size={args.batch_size}", f"--image_size={args.image_size}",
                           f"--steps={args.steps}", f"--warmup={args.warmup}"]
                out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=cwd).stdout
                results[config].append(json.loads(out.strip().splitlines()[-1]))
    medians = {}
    for config, runs in results.items():
        rates = [run["images_per_sec"] for run in runs]
        medians[config] = statistics.median(rates)
        print(json.dumps({
            "what": "SSD training throughput", "config": {
                "name": config, "network": "ssd_300_vgg", "image_size": args.image_size,
                "global_batch": args.batch_size, "steps": args.steps, "repeats": args.repeats,
                "data": os.path.basename(dataset_dir.rstrip("/"))},
            "value": round(medians[config], 3), "unit": "images/s (median)", "min": round(min(rates), 3),
            "max": round(max(rates), 3),
            "peak_rss_mib": round(max(run["peak_rss_mib"] for run in runs), 1), "machine": bench_common.machine(),
        }), flush=True)
    if "plain" in medians:
        for config, median in medians.items():
            if config != "plain":
                print(json.dumps({"what": "throughput ratio vs plain single-tower step", "config": {"name": config},
                                  "value": round(median / medians["plain"], 3), "unit": "x",
                                  "machine": bench_common.machine()}), flush=True)
    for baseline in (config for config in medians if config.startswith(BASELINE)):
        for config, median in medians.items():
            if not config.startswith(BASELINE):
                print(json.dumps({"what": f"throughput ratio vs {baseline}", "config": {"name": config},
                                  "value": round(median / medians[baseline], 3), "unit": "x",
                                  "machine": bench_common.machine()}), flush=True)


if __name__ == "__main__":
    main()
