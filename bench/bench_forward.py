"""SSD300 forward pass throughput (images/s, from the median batch time) on CPU, NHWC, inference mode.

Prints one JSON object per batch size. Run from the repository root:

    python bench/bench_forward.py                                    # batch 1 and 8, 300x300
    python bench/bench_forward.py --batch_sizes 1 --repeats 1 --img_size 64   # smoke test
"""

import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

import command_line  # noqa: E402
from nets import nets_factory  # noqa: E402
from tf_compat import tf1  # noqa: E402


def define_flags(flag_values):
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("network", "ssd_300_vgg", "Network.", **fv)
    command_line.define_integer_list("batch_sizes", [1, 8], "Batch sizes to time, comma-separated.", flag_values)
    flags.DEFINE_integer("repeats", 10, "Timed runs per batch size.", **fv)
    flags.DEFINE_integer("img_size", 300, "Network input size.", **fv)
    return flag_values


def main(argv=None):
    args = command_line.parse_flags(define_flags(flags.FlagValues()), argv, __doc__)
    tf1.disable_eager_execution()
    network_fn = nets_factory.get_network_fn(args.network, 21, img_shape=(args.img_size, args.img_size))
    cpu = platform.processor() or platform.machine()
    machine = f"{platform.node()} {cpu} cpus={os.cpu_count()} tf={tf.__version__}"
    with tf.Graph().as_default():
        tf1.set_random_seed(0)
        images = tf1.placeholder(tf.float32, [None, args.img_size, args.img_size, 3])
        predictions, localisations, _, _ = network_fn(images)
        fetches = predictions + localisations
        config = tf1.ConfigProto(device_count={"GPU": 0})
        with tf1.Session(config=config) as sess:
            sess.run(tf1.global_variables_initializer())
            rng = np.random.default_rng(0)
            for batch in args.batch_sizes:
                feed = {images: rng.uniform(-1, 1, (batch, args.img_size, args.img_size, 3)).astype(np.float32)}
                sess.run(fetches, feed)  # warm-up
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    sess.run(fetches, feed)
                    times.append(time.perf_counter() - start)
                median = float(np.median(times))  # robust to other work on a shared machine
                print(json.dumps({"what": "ssd_forward_images_per_second",
                                  "config": {"network": args.network, "img_size": args.img_size, "batch": batch,
                                             "data_format": "NHWC", "device": "CPU", "repeats": args.repeats},
                                  "value": batch / median, "unit": "images/s", "machine": machine}),
                      flush=True)


if __name__ == "__main__":
    main()
