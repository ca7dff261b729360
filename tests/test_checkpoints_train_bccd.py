"""Issue 8's command, as written: BCCD from the shared ImageNet VGG-16 checkpoint restores 26 variables and trains.

    python train_ssd_network.py --train_dir=... --checkpoint_path=<vgg_16 checkpoint>
        --checkpoint_model_scope=vgg_16 --dataset_dir=<BCCD converted>

(no --ignore_missing_vars: conv6, conv7, the extra blocks and the heads are layers VGG-16 does
not have, so they start fresh), with a tiny input size and two steps. The inspection command
says the same beforehand.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from datasets import converter

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY = re.compile(r"Initialization: .*")


def run_command(args, cache_dir):
    env = dict(os.environ, SSD_TOWERS_CACHE=str(cache_dir), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=400)


@pytest.mark.slow
@pytest.mark.shared_data
def test_bccd_from_the_imagenet_vgg16_checkpoint_restores_26_variables_and_trains(
        bccd_dir, vgg16_checkpoint, tmp_path):
    dataset_dir = str(tmp_path / "bccd")
    converter.convert([str(bccd_dir)], dataset_dir, "bccd", converter.ConversionOptions(splits=("trainval",)),
                      quiet=True)
    train_dir = str(tmp_path / "fine_tuning")
    flags = [f"--train_dir={train_dir}", f"--checkpoint_path={vgg16_checkpoint}", "--checkpoint_model_scope=vgg_16",
             f"--dataset_dir={dataset_dir}", "--image_size=96", "--batch_size=2", "--max_number_of_steps=2",
             "--num_readers=1", "--num_preprocessing_threads=1"]

    inspected = run_command(["-m", "checkpoints.inspect_checkpoint", *flags], tmp_path / "cache")
    assert inspected.returncode == 0, inspected.stderr[-3000:]
    expected = inspected.stdout.strip().splitlines()[-1]
    # "initialised fresh" also counts the optimizer's slots, so it depends on --optimizer; the rest does not.
    assert expected.startswith(f"Initialization: restoring from {vgg16_checkpoint}: 26 restored, 0 skipped (shape "
                               "differs), 0 excluded, 45 missing from checkpoint, "), expected
    assert " initialised fresh; frozen (not trained): conv1, conv2 (the paper's recipe from ImageNet VGG-16 weights; " \
        "--freeze_conv1_conv2=false trains them); only SSD's new layers train (conv1..conv5 frozen) until global step " \
        "584 (the recipe from ImageNet VGG-16 weights" in expected, expected  # 4 epochs of 292 images at batch 2
    assert "  fresh    ssd_300_vgg/conv6/weights [3, 3, 512, 1024] (not in checkpoint as vgg_16/conv6/weights)" \
        in inspected.stdout

    trained = run_command(["train_ssd_network.py", *flags], tmp_path / "cache")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert SUMMARY.findall(trained.stderr)[0] == expected
    latest = tf.train.latest_checkpoint(train_dir)
    assert latest.endswith("model.ckpt-2")
    # Two steps into the new-layers-only phase the VGG-16 base is exactly the ImageNet one (restored,
    # not initialised, not trained), conv1/conv2 have no optimizer slot at all, and the new layers train.
    reader, imagenet = tf.train.load_checkpoint(latest), tf.train.load_checkpoint(vgg16_checkpoint)
    for layer in ("conv1/conv1_1", "conv2/conv2_2", "conv3/conv3_1", "conv5/conv5_3"):
        np.testing.assert_array_equal(reader.get_tensor(f"ssd_300_vgg/{layer}/weights"),
                                      imagenet.get_tensor(f"vgg_16/{layer}/weights"))
    assert not any(name.startswith(("ssd_300_vgg/conv1/", "ssd_300_vgg/conv2/")) and "Adam" in name
                   for name in reader.get_variable_to_shape_map())
    assert reader.get_tensor("ssd_300_vgg/block4_box/conv_cls/weights/Adam").any()
    assert np.isfinite(reader.get_tensor("ssd_300_vgg/block4_box/conv_cls/weights")).all()
