"""The served pyfunc: strict JSON for bad rows, the parity-checked TFLite model inside it, and
`mlflow models serve` answering images from the registry's champion."""
import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.inference import Classifier, ImageClassifier, from_artifacts, serving_artifacts
from tests.colour_project import pipeline_run, project  # noqa: F401 (fixture)
from tests.conftest import free_port, wait_for_http

CLASSES = ["normal", "precancer", "cancer"]


def strict_json(text: str):
    """Parse as a browser would: NaN / Infinity are not JSON."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def png_base64(colour) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def served(model: ImageClassifier, frame: pd.DataFrame) -> list[dict]:
    """What `mlflow models serve` sends back for this input, parsed strictly."""
    from mlflow.pyfunc.scoring_server import predictions_to_json

    out = io.StringIO()
    predictions_to_json(model.predict(None, frame), out)
    return strict_json(out.getvalue())["predictions"]


def test_bad_rows_carry_null_not_nan():
    model = ImageClassifier()
    model.classifier = Classifier(lambda x: np.tile([[0.1, 0.7, 0.2]], (len(x), 1)), CLASSES, 16)
    rows = served(model, pd.DataFrame({"image": [png_base64("red"), "not base64!", png_base64("blue")]}))
    assert [r["class"] for r in rows] == ["precancer", "", "precancer"]
    assert rows[1]["prob_normal"] is None and "base64" in rows[1]["error"]
    assert rows[0]["prob_precancer"] == pytest.approx(0.7)


def test_the_answer_carries_the_refer_decision_of_the_shipped_operating_point():
    op = {"threshold": 0.5, "positive_classes": ["cancer", "precancer"]}
    model = ImageClassifier()
    model.classifier = Classifier(lambda x: np.tile([[0.45, 0.35, 0.2]], (len(x), 1)), CLASSES, 16, operating_point=op)
    rows = served(model, pd.DataFrame({"image": [png_base64("red"), "not base64!"]}))
    assert rows[0]["class"] == "normal" and rows[0]["refer"] is True  # argmax says normal; 0.55 >= 0.5 refers
    assert rows[0]["refer_score"] == pytest.approx(0.55)
    assert rows[1]["refer"] is None and rows[1]["refer_score"] is None
    model.classifier.operating_point = {**op, "threshold": 0.6}
    assert served(model, pd.DataFrame({"image": [png_base64("red")]}))[0]["refer"] is False
    model.classifier.operating_point = None  # a model registered before operating points: no decision, not a guess
    assert served(model, pd.DataFrame({"image": [png_base64("red")]}))[0]["refer"] is None


def test_strict_parser_refuses_nan():
    with pytest.raises(ValueError, match="NaN"):
        strict_json('{"p": NaN}')


def tiny_model():
    import keras

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def test_serving_runs_the_exported_tflite_model_with_keras_answers(tmp_path):
    from pipeline.export import convert

    model = tiny_model()
    model.save(tmp_path / "model.keras")
    (tmp_path / "model_float32.tflite").write_bytes(convert(model, ("float32",))["float32"])
    metadata = {"classes": CLASSES, "image_size": 16, "variants": {"float32": {"file": "model_float32.tflite"}}}
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))
    artifacts = serving_artifacts(tmp_path / "model.keras", tmp_path)
    assert artifacts["tflite_model"].endswith("model_float32.tflite")
    classifier = from_artifacts(artifacts)
    assert classifier.keras_model is None  # the TFLite interpreter, not Keras
    x = np.random.default_rng(0).uniform(0, 255, (5, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(classifier.predict(x), model.predict(x, verbose=0), atol=1e-5)
    del metadata["variants"]["float32"]  # not accepted by export: Keras is served
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))
    assert from_artifacts(serving_artifacts(tmp_path / "model.keras", tmp_path)).keras_model is not None


@pytest.mark.slow
def test_mlflow_models_serve_answers_images(project, monkeypatch):
    import httpx

    root, params = project
    monkeypatch.chdir(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).get_model_version_by_alias("oralscan-classifier", "champion")
    except Exception:
        pipeline_run(root, params, "perfect")
    import mlflow

    served = Path(mlflow.artifacts.download_artifacts("models:/oralscan-classifier@champion", tracking_uri=uri))
    assert (served / "artifacts" / "model_float32.tflite").is_file()  # serving runs the parity-checked TFLite
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                               "models:/oralscan-classifier@champion", "--env-manager", "local",
                               "--host", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "MLFLOW_TRACKING_URI": uri,  # serve runs uvicorn from PATH
                                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", 120, "mlflow models serve")
        good = base64.b64encode((root / "raw" / "precancer" / "1.png").read_bytes()).decode()
        broken = base64.b64encode(b"GIF89a garbage").decode()
        reply = httpx.post(f"http://127.0.0.1:{port}/invocations", timeout=60,
                           json={"dataframe_split": {"columns": ["image"], "data": [[good], [broken]]}})
        assert reply.status_code == 200, reply.text
        rows = strict_json(reply.text)["predictions"]  # as a browser parses it: NaN would fail here
        assert rows[0]["class"] == "precancer" and rows[0]["error"] == ""
        assert rows[0]["prob_precancer"] > 0.9
        assert rows[1]["class"] == "" and "not a readable image" in rows[1]["error"]
        assert rows[1]["prob_precancer"] is None
    finally:
        server.terminate()
        server.wait(timeout=30)
