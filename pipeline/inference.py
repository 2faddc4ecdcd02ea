"""Running a trained classifier anywhere: a .keras file, a .tflite file, or a registry URI.

`ImageClassifier` is the MLflow pyfunc that deployment serves: clients send images (base64
strings or raw bytes in an `image` column), it decodes, orients and resizes them exactly as
training did, and answers one row per image with the class and its probabilities, or the
reason the image could not be read (its probabilities are null, never NaN: strict JSON
parsers reject NaN). One bad image never fails the whole request.

Serving runs the float32 TFLite model that export checked against Keras on the whole test
split (top-1 agreement 1.0, probabilities within `export.max_probability_diff.float32`): it
answers one 224-px MobileNetV2 image in about 2 ms where Keras' `model.predict` takes ~180 ms
(bench/serve_bench.py). Without that file the Keras model is served.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.console import stderr_silenced
from pipeline.images import UnusableImage, model_input


class TFLiteModel:
    """A TFLite classifier run with the LiteRT interpreter, one image at a time."""

    def __init__(self, source: Path | bytes, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        kwargs = {"model_content": source} if isinstance(source, bytes) else {"model_path": str(source)}
        self.interpreter = Interpreter(num_threads=threads, **kwargs)
        with stderr_silenced():  # LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = []
        for image in x:
            self.interpreter.set_tensor(self.input["index"], image[None].astype(np.float32))
            self.interpreter.invoke()
            out.append(self.interpreter.get_tensor(self.output["index"])[0].copy())
        return np.array(out)


@dataclass
class Classifier:
    """What predict and serving need: a predict function, its classes and input size, Keras if any, and
    the operating point export shipped with it (metadata.json's `operating_point`; None for older models)."""
    predict: object
    classes: list[str]
    size: int
    keras_model: object = None
    operating_point: dict | None = None

    def refer(self, probs) -> tuple[bool | None, float | None]:
        """(refer, refer score) of one image's probabilities; (None, None) without an operating point."""
        op = self.operating_point
        if not op or op.get("threshold") is None:
            return None, None
        score = float(sum(probs[self.classes.index(c)] for c in op["positive_classes"]))
        return score >= op["threshold"], score


def from_keras_file(path: Path, metadata: dict) -> Classifier:
    from pipeline.keras_io import load_model

    model = load_model(path)
    return Classifier(lambda x: model.predict(x.astype("float32"), verbose=0), metadata["classes"],
                      metadata["image_size"], model, metadata.get("operating_point"))


def serving_artifacts(model_path: Path, export_dir: Path) -> dict[str, str]:
    """The files the served pyfunc carries: metadata, the Keras model and, if export accepted it,
    the float32 TFLite model that serving runs."""
    metadata = json.loads((export_dir / "metadata.json").read_text())
    artifacts = {"keras_model": str(model_path), "metadata": str(export_dir / "metadata.json")}
    if "float32" in metadata.get("variants", {}):
        artifacts["tflite_model"] = str(export_dir / metadata["variants"]["float32"]["file"])
    return artifacts


def from_artifacts(artifacts: dict[str, str]) -> Classifier:
    """The classifier of a served pyfunc: the parity-checked TFLite model when present, else Keras."""
    metadata = json.loads(Path(artifacts["metadata"]).read_text())
    if artifacts.get("tflite_model"):
        model = TFLiteModel(Path(artifacts["tflite_model"]))
        return Classifier(model.predict, metadata["classes"], metadata["image_size"],
                          operating_point=metadata.get("operating_point"))
    return from_keras_file(Path(artifacts["keras_model"]), metadata)


def load_classifier(uri: str) -> Classifier:
    """From `models:/name@alias` (or any MLflow model URI), a .keras file or a .tflite file.

    Files need a metadata.json beside them (classes, image_size), as export writes.
    """
    path = Path(uri)
    if path.suffix in (".tflite", ".keras") and path.is_file():
        metadata = json.loads((path.parent / "metadata.json").read_text())
        if path.suffix == ".keras":
            return from_keras_file(path, metadata)
        model = TFLiteModel(path)
        return Classifier(model.predict, metadata["classes"], metadata["image_size"],
                          operating_point=metadata.get("operating_point"))
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))  # Keras here: Grad-CAM needs it
    return from_keras_file(local / "artifacts" / "model.keras",
                           json.loads((local / "artifacts" / "metadata.json").read_text()))


def decode(item) -> bytes:
    """Raw bytes from a request cell: bytes as they are, strings as base64."""
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, str):
        try:
            return base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise UnusableImage("not valid base64") from None
    raise UnusableImage(f"expected base64 text or bytes, got {type(item).__name__}")


def classify(classifier: Classifier, items: list) -> list[dict]:
    """One result per item: {'class', 'probabilities', 'refer', 'refer_score'} or {'error'}; bad items never
    stop the rest."""
    arrays, results = [], []
    for item in items:
        try:
            source = item if isinstance(item, Path) else decode(item)
            arrays.append(model_input(source, classifier.size))
            results.append(None)
        except (UnusableImage, OSError) as err:
            results.append({"class": None, "probabilities": None, "refer": None, "refer_score": None,
                            "error": str(err)})
    probs = iter(classifier.predict(np.stack(arrays)) if arrays else [])
    return [answer(classifier, next(probs)) if result is None else result for result in results]


def answer(classifier: Classifier, p) -> dict:
    """One image's answer from its probabilities: the class, the refer decision and every probability."""
    refer, score = classifier.refer(p)
    return {"class": classifier.classes[int(np.argmax(p))], "refer": refer, "refer_score": score,
            "probabilities": {c: float(v) for c, v in zip(classifier.classes, p)}, "error": None}


try:
    import pandas as pd
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency; this keeps the module importable alone
    PythonModel = object


class ImageClassifier(PythonModel):
    """The served model: a DataFrame with an `image` column in, one row per image out.

    Each row: `class` (the argmax; empty when the image could not be read), `refer` (the clinical
    decision at the shipped operating point: true when the summed probability of the positive classes
    passes its threshold; None for unreadable images), `refer_score` (that sum), `error` (empty when the
    image could be read), and `prob_<class>` for every class (None, so JSON null, for unreadable images).
    """

    def load_context(self, context):
        self.classifier = from_artifacts(context.artifacts)

    # the DataFrame hint tells MLflow there is no schema to infer from it (without a hint it warns)
    def predict(self, context, model_input: pd.DataFrame, params=None):
        rows = []
        for r in classify(self.classifier, list(model_input["image"])):
            probs = r["probabilities"] or {}
            rows.append({"class": r["class"] or "", "refer": r["refer"], "refer_score": r["refer_score"],
                         "error": r["error"] or "", **{f"prob_{c}": probs.get(c) for c in self.classifier.classes}})
        # object columns keep None as None: a float column would turn it into NaN, which the
        # scoring server writes as the non-JSON token `NaN`.
        columns = ["class", "refer", "refer_score", "error", *(f"prob_{c}" for c in self.classifier.classes)]
        return pd.DataFrame(rows, columns=columns, dtype=object)


def example_png(sample: Path, side: int = 224) -> bytes:
    """The input example MLflow keeps with the model: a test image's pixels, shrunk, as PNG and nothing else.
    Never the original's bytes: they carry its EXIF/XMP (GPS, dates, serials) into the MLflow store."""
    from pipeline.images import load_rgb
    from pipeline.images import save_png

    image = load_rgb(sample, min_side=side)
    image.thumbnail((side, side))
    out = io.BytesIO()
    save_png(image, out)
    return out.getvalue()


def log_serving_model(info: dict, model_path: Path, export_dir: Path, sample: Path) -> str:
    """The image-in, classes-out pyfunc, logged to the architecture's run; returns its model URI."""
    import keras
    import mlflow
    import pandas
    import tensorflow as tf
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    classes = json.loads((export_dir / "metadata.json").read_text())["classes"]
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "image")]),
        outputs=Schema([ColSpec("string", "class"), ColSpec("boolean", "refer", required=False),
                        ColSpec("double", "refer_score", required=False), ColSpec("string", "error")]
                       + [ColSpec("double", f"prob_{c}") for c in classes]))
    example = pandas.DataFrame({"image": [base64.b64encode(example_png(sample)).decode()]})
    with mlflow.start_run(run_id=info["run_id"]):
        logged = mlflow.pyfunc.log_model(
            name="serving", python_model=ImageClassifier(), code_paths=[str(Path(__file__).resolve().parent)],
            artifacts=serving_artifacts(model_path, export_dir), signature=signature, input_example=example,
            pip_requirements=[f"tensorflow-cpu=={tf.__version__}", f"keras=={keras.__version__}", "pillow",
                              "pillow-heif", "pandas", "ai-edge-litert"])
    return logged.model_uri
