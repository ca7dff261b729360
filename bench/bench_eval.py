"""Evaluation throughput (images/s over a dataset split) and SavedModel latency (batch 1 and 8) on this machine.

Uses a freshly initialised network (speed does not depend on the weights, except through
the number of boxes NMS sees, so the post-processing runs with the evaluation defaults).
Prints one JSON object per measurement. Run from the repository root:

    python bench/bench_eval.py                                         # SSD300 on the sample test split
    python bench/bench_eval.py --dataset_dir=data/voc07 --split=test  # a real split
    python bench/bench_eval.py --image_size 96 --max_num_images 8 --repeats 2 --batch_sizes=1   # smoke test
"""

import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import package_guard  # noqa: E402

package_guard.ensure_project_packages()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags, logging  # noqa: E402
from PIL import Image  # noqa: E402

import command_line  # noqa: E402
import eval_ssd_network  # noqa: E402
import export_ssd_network  # noqa: E402
from datasets import dataset_factory, sample_data  # noqa: E402
from evaluation import detectors, evaluator, ssd_eval  # noqa: E402
from nets import nets_factory  # noqa: E402
from tf_compat import slim, tf1  # noqa: E402


def machine():
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return (f"{platform.node()} {platform.machine()} cpus={os.cpu_count()} gpus={len(gpus)} "
            f"tf={tf.__version__}")


def save_initialized_checkpoint(model_name, num_classes, image_size, directory):
    network_fn = nets_factory.get_network_fn(model_name, num_classes, img_shape=(image_size, image_size))
    with tf.Graph().as_default():
        tf1.set_random_seed(0)
        network_fn(tf.zeros([1, image_size, image_size, 3]))
        saver = tf1.train.Saver(slim.get_model_variables())
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            return saver.save(session, os.path.join(directory, "model.ckpt"), global_step=0)


def jpeg_bytes(height, width, seed):
    pixels = (np.random.RandomState(seed).rand(height, width, 3) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def define_flags(flag_values):
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("model_name", "ssd_300_vgg", "Network.", **fv)
    flags.DEFINE_integer("image_size", 300, "Network input size.", **fv)
    flags.DEFINE_string("dataset_dir", None, "Default: the built-in sample dataset.", **fv)
    flags.DEFINE_string("split", "test", "Split to evaluate.", **fv)
    flags.DEFINE_integer("eval_batch_size", 8, "Images per forward pass of the evaluation.", **fv)
    flags.DEFINE_integer("max_num_images", None, "Evaluate only the first N images of the split.", **fv)
    flags.DEFINE_integer("repeats", 20, "Timed SavedModel calls per batch size.", **fv)
    flags.DEFINE_integer("input_height", 375, "Size of the JPEGs sent to the SavedModel.", **fv)
    flags.DEFINE_integer("input_width", 500, "Width of the JPEGs sent to the SavedModel.", **fv)
    command_line.define_integer_list("batch_sizes", [1, 8], "SavedModel batch sizes to time.", flag_values)
    return flag_values


def main(argv=None):
    args = command_line.parse_flags(define_flags(flags.FlagValues()), argv, __doc__)

    tf1.disable_eager_execution()
    logging.set_verbosity(logging.WARNING)
    where = machine()
    work_dir = tempfile.mkdtemp(prefix="bench_eval_")
    dataset_dir = args.dataset_dir or sample_data.ensure_sample_dataset()
    opts = eval_ssd_network.default_options(
        checkpoint_path=work_dir, dataset_dir=dataset_dir, dataset_split_name=args.split, model_name=args.model_name,
        image_size=str(args.image_size), batch_size=args.eval_batch_size, max_num_images=args.max_num_images,
        no_coco=True, progress_every_secs=1e9)
    spec = dataset_factory.get_dataset(None, args.split, dataset_dir)
    prefix = save_initialized_checkpoint(args.model_name, spec.num_classes, args.image_size, work_dir)
    source = ssd_eval.load_model_source(prefix)

    evaluation = evaluator.Evaluation(opts, source)
    evaluation.run(prefix)  # warm-up pass: graph optimisation, caches
    start = time.perf_counter()
    result, _, _ = evaluation.run(prefix)
    elapsed = time.perf_counter() - start
    config = {"model": args.model_name, "image_size": args.image_size, "dataset": spec.name, "split": args.split,
              "images": result.num_images, "batch_size": args.eval_batch_size,
              "includes": "restore+pipeline+net+NMS+matching"}
    print(json.dumps({"what": "eval_throughput", "config": config, "value": result.num_images / elapsed,
                      "unit": "images/s", "machine": where}), flush=True)

    export_dir = os.path.join(work_dir, "export")
    export_ssd_network.export(export_ssd_network.default_options(
        checkpoint_path=prefix, output_dir=export_dir, model_name=args.model_name, image_size=str(args.image_size),
        num_classes=spec.num_classes))
    with detectors.saved_model_detector(export_dir) as detector:
        for batch_size in args.batch_sizes:
            images = [jpeg_bytes(args.input_height, args.input_width, seed) for seed in range(batch_size)]
            for _ in range(2):
                detector.detect(images)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                detector.detect(images)
                times.append(time.perf_counter() - start)
            config = {"model": args.model_name, "image_size": args.image_size, "batch_size": batch_size,
                      "input": f"JPEG {args.input_width}x{args.input_height}", "repeats": args.repeats}
            print(json.dumps({"what": "saved_model_latency", "config": config, "value": statistics.median(times),
                              "unit": "s/batch (median)", "machine": where}), flush=True)
    tf.io.gfile.rmtree(work_dir)


if __name__ == "__main__":
    main()
