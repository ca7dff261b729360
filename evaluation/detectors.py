"""Detectors over encoded images: a checkpoint (graph built here) or an exported SavedModel.

Both run the same serving graph (:func:`evaluation.ssd_eval.build_serving_graph`) in a
``tf.compat.v1.Session`` and return the same numpy dict from :meth:`detect`: boxes [B, K, 4]
(ymin, xmin, ymax, xmax, original image pixels), classes [B, K], class_names [B, K] (str),
scores [B, K], num_detections [B], image_shape [B, 2].
"""

import json
import os

import numpy as np
import tensorflow as tf

from evaluation import ssd_eval
from tf_compat import tf1

SIGNATURE_NAME = "serving_default"
INPUT_NAME = "images"


def _as_numpy(values):
    out = dict(values)
    out["class_names"] = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(values["class_names"]) \
        if values["class_names"].size else values["class_names"].astype(object)
    return out


class _SessionDetector:
    def __init__(self, graph, session, input_tensor, outputs, labels, description):
        self.graph = graph
        self.session = session
        self.input_tensor = input_tensor
        self.outputs = outputs
        self.labels = labels
        self.description = description

    def detect(self, encoded_images):
        """Detections for a list of encoded image files (bytes)."""
        values = self.session.run(self.outputs, {self.input_tensor: np.array(list(encoded_images), dtype=object)})
        return _as_numpy(values)

    def close(self):
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def checkpoint_detector(checkpoint_path, post=ssd_eval.PostProcessing(), resize_mode="warp", model_name=None,
                        image_size=None, num_classes=None, labels=None, use_moving_averages=True,
                        session_config=None):
    """A detector that restores ``checkpoint_path`` (a training directory or a prefix); see
    :func:`evaluation.ssd_eval.build_inference_graph` for the arguments."""
    source = ssd_eval.load_model_source(checkpoint_path)
    graph = tf.Graph()
    with graph.as_default():
        inference = ssd_eval.build_inference_graph(
            source, model_name=model_name, image_size=image_size, num_classes=num_classes, labels=labels, post=post,
            resize_mode=resize_mode, use_moving_averages=use_moving_averages, input_name=INPUT_NAME)
    session = tf1.Session(graph=graph, config=session_config)
    inference.saver.restore(session, source.checkpoint_prefix)
    weights = "EMA" if inference.used_moving_averages else "raw"
    return _SessionDetector(graph, session, inference.images, inference.outputs, inference.labels,
                            f"checkpoint {source.checkpoint_prefix} ({weights} weights)")


def saved_model_detector(export_dir, session_config=None):
    """A detector over an exported SavedModel (its serving_default signature)."""
    if not tf1.saved_model.contains_saved_model(export_dir):
        raise FileNotFoundError(f"{export_dir}: no SavedModel here (saved_model.pb missing)")
    graph = tf.Graph()
    session = tf1.Session(graph=graph, config=session_config)
    with graph.as_default():
        meta_graph = tf1.saved_model.loader.load(session, [tf1.saved_model.tag_constants.SERVING], export_dir)
    if SIGNATURE_NAME not in meta_graph.signature_def:
        session.close()
        raise ValueError(f"{export_dir}: no '{SIGNATURE_NAME}' signature (has {sorted(meta_graph.signature_def)})")
    signature = meta_graph.signature_def[SIGNATURE_NAME]
    input_tensor = graph.get_tensor_by_name(signature.inputs[INPUT_NAME].name)
    outputs = {name: graph.get_tensor_by_name(info.name) for name, info in signature.outputs.items()}
    labels = None
    config_path = os.path.join(export_dir, "assets", "export_config.json")
    if tf.io.gfile.exists(config_path):
        with tf.io.gfile.GFile(config_path) as stream:
            labels = {int(k): v for k, v in json.loads(stream.read()).get("labels", {}).items()}
    return _SessionDetector(graph, session, input_tensor, outputs, labels, f"SavedModel {export_dir}")
