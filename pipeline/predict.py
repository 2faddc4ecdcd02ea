"""predict: classify images with a registered model, a .keras or a .tflite file.

    python -m pipeline.predict --model models:/oralscan-classifier@champion IMAGE... [--gradcam DIR]

Prints one line per image, tab-separated: the path, the most probable class, the clinical decision
(`refer` or `no refer`: the summed probability of the positive classes against the threshold the
model shipped with, export's operating point; `no operating point` for models without one) and
every class probability; or the reason the image could not be read (the other images are still
classified; the exit status is 1 if any failed).
`--gradcam DIR` writes a Grad-CAM overlay per image: where the model looked (Keras models only).
"""
from __future__ import annotations

import argparse
import json
import sys
import weakref
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.console import quiet
from pipeline.images import load_rgb, model_input
from pipeline.inference import Classifier, classify, load_classifier
from pipeline.metrics import threshold_text
from pipeline.tracking import tracking_uri


def strongest_member(model, x: np.ndarray):
    """(the model Grad-CAM explains, its input): of an ensemble (pipeline/ensemble.py), its strongest member
    `member_0` and the image as member_0 sees it (through `resize_0`, if any); any other model and x as they are."""
    from pipeline.keras_io import ensemble_members

    members = ensemble_members(model)
    if not members:
        return model, x
    if "resize_0" in {layer.name for layer in model.layers}:
        x = np.asarray(model.get_layer("resize_0")(x[None].astype("float32")))[0]
    return members[0], x


_CAMS = weakref.WeakKeyDictionary()  # model -> its compiled Grad-CAM (built once: ~10x faster than eager)


def _cam_function(model):
    """One compiled pass of a model: the Grad-CAM map of a class (-1: the most probable) and the probabilities."""
    import keras
    import tensorflow as tf

    if model not in _CAMS:
        probe = keras.Model(model.inputs, [model.get_layer("pool").input, model.output])  # the base's last map

        @tf.function(reduce_retracing=True)
        def cam_of(x, class_index):
            with tf.GradientTape() as tape:
                fmap, probs = probe(x, training=False)
                index = tf.where(class_index < 0, tf.argmax(probs[0], output_type=tf.int32), class_index)
                score = tf.gather(probs[0], index)
            grads = tape.gradient(score, fmap)[0]
            weights = tf.reduce_mean(grads, axis=(0, 1))
            return tf.nn.relu(tf.reduce_sum(fmap[0] * weights, axis=-1)), probs[0]

        _CAMS[model] = cam_of
    return _CAMS[model]


def _run_cam(model, x: np.ndarray, class_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(map, the model's probabilities); an ensemble: its strongest member's map for the ensemble's class."""
    import tensorflow as tf

    member, x_member = strongest_member(model, x)
    probs = None
    if member is not model:
        probs = np.asarray(model(x[None].astype("float32"), training=False))[0]
        class_index = int(probs.argmax()) if class_index < 0 else class_index
    cam, member_probs = _cam_function(member)(tf.constant(x_member[None], tf.float32), tf.constant(class_index, tf.int32))
    cam = cam.numpy()
    return (cam / cam.max() if cam.max() > 0 else cam), (member_probs.numpy() if probs is None else probs)


def gradcam(model, x: np.ndarray, class_index: int) -> np.ndarray:
    """Grad-CAM heat map (0..1, the size of the last feature map) for one preprocessed-free image."""
    return _run_cam(model, x, class_index)[0]


def explain(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, Grad-CAM map of the most probable class) of one image, from one forward and backward pass."""
    cam, probs = _run_cam(model, x, -1)
    return probs, cam


def blend(image: Image.Image, cam: np.ndarray) -> Image.Image:
    """The class-activation map in colour over an RGB image (any size: the map is stretched to it)."""
    import matplotlib

    heat = Image.fromarray(np.uint8(cam * 255)).resize(image.size, Image.Resampling.BILINEAR)
    colored = matplotlib.colormaps["jet"](np.asarray(heat) / 255.0)[..., :3]
    return Image.fromarray(np.uint8((0.6 * np.asarray(image) / 255.0 + 0.4 * colored) * 255))


def overlay(image: Image.Image, cam: np.ndarray, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    blend(image, cam).save(out)


def write_gradcams(classifier: Classifier, paths: list[Path], results: list[dict], out_dir: Path) -> None:
    if classifier.keras_model is None:
        raise SystemExit("predict: --gradcam needs a Keras model (a registry URI or a .keras file), not TFLite")
    for i, (path, result) in enumerate(zip(paths, results)):
        if result["error"] is None:
            x = model_input(path, classifier.size)
            cam = gradcam(classifier.keras_model, x, classifier.classes.index(result["class"]))
            overlay(load_rgb(path), cam, out_dir / f"{i:03d}_{path.stem}_gradcam.png")


def decision_text(result: dict, operating_point: dict | None) -> str:
    if result["refer"] is None:
        return "no operating point"
    sign = ">=" if result["refer"] else "<"
    return (f"{'refer' if result['refer'] else 'no refer'} (P({'+'.join(operating_point['positive_classes'])}) "
            f"{threshold_text(result['refer_score'])} {sign} {threshold_text(operating_point['threshold'])})")


def format_line(path: Path, result: dict, operating_point: dict | None = None) -> str:
    if result["error"]:
        return f"{path}\tERROR\t{result['error']}"
    probs = " ".join(f"{c}={p:.4f}" for c, p in result["probabilities"].items())
    return f"{path}\t{result['class']}\t{decision_text(result, operating_point)}\t{probs}"


def main(argv: list[str] | None = None) -> None:
    quiet(tensorflow=True)  # before TensorFlow's first import: its start-up lines stay out of the log
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS, a .keras file or a .tflite file")
    parser.add_argument("--gradcam", type=Path, help="folder for Grad-CAM overlays")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    parser.add_argument("images", type=Path, nargs="+")
    args = parser.parse_args(argv)
    tracking_uri()  # models:/ URIs resolve in the registry the stages use
    classifier = load_classifier(args.model)
    results = classify(classifier, args.images)
    for path, result in zip(args.images, results):
        print(json.dumps({"path": str(path), **result}) if args.json
              else format_line(path, result, classifier.operating_point))
    if args.gradcam:
        write_gradcams(classifier, args.images, results, args.gradcam)
    sys.exit(1 if any(r["error"] for r in results) else 0)


if __name__ == "__main__":
    main()
