"""Export parity, registry promotion on a real SQLite MLflow store, predict, and mlflow models serve.

The models here are small Keras models with hand-set weights on colour-coded images, so their
quality is known in advance (mediocre, bad, perfect) while every stage they go through is real.
"""
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import free_port, shrink_params, wait_for_http
from tests.test_inference import strict_json

CLASSES = ["normal", "precancer", "cancer"]
COLOURS = {"normal": (200, 40, 40), "precancer": (40, 200, 40), "cancer": (40, 40, 200)}
SIZE = 32
WEIGHTS = {  # mean colour (0..1) -> class scores
    "mediocre": np.array([[5, 0, 0], [5, 0, 0], [0, 0, 20]], "float32"),  # red and green both "normal"
    "bad": np.zeros((3, 3), "float32"),                                     # always "normal"
    "perfect": np.eye(3, dtype="float32") * 20,
}


def colour_model(kind: str):
    import keras

    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    features = keras.layers.Conv2D(3, 1, name="features")
    x = features(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    dense = keras.layers.Dense(3, activation="softmax", name="classes")
    out = dense(x)
    model = keras.Model(inputs, out, name=f"Colour{kind}")
    features.set_weights([np.eye(3, dtype="float32").reshape(1, 1, 3, 3), np.zeros(3, "float32")])
    dense.set_weights([WEIGHTS[kind], np.zeros(3, "float32")])
    return model


def write_image(path: Path, label: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(COLOURS[label]) + rng.normal(0, 25, (80, 80, 3)), 0, 255).astype("uint8")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Real validate/dedup/split outputs over colour-coded images; a SQLite MLflow store."""
    from pipeline import dedup, split, validate

    root = tmp_path_factory.mktemp("deploy")
    for label in CLASSES:
        for i in range(40):  # about 6 test images per class: enough for a clear winner to show
            write_image(root / "raw" / label / f"{i}.png", label, hash((label, i)) % 10_000)
    params = shrink_params(root, validate={"min_images_per_class": 5}, dedup={"max_distance": 0},
                           evaluate={"bootstrap": 20}, export={"latency_repeats": 3},
                           register={"min_sensitivity": {"cancer": 0.5}},
                           train={"architectures": {"Colourmediocre": {"weights": "none"}}})
    reports = root / "reports"
    validate.run(params, root / "raw", root / "manifest.csv", root / "docs", reports / "validation.json")
    paths = {"groups": root / "g.csv", "cache": root / "c.json", "quarantine": root / "q",
             "report": reports / "dedup.json", "sheet": root / "s.png"}
    dedup.run(params, root / "raw", root / "manifest.csv", paths)
    split.run(params, paths["groups"], root / "split.csv", reports / "split.json")
    return root, params


def pipeline_run(root: Path, params: Path, kind: str, before_register=None, retry: bool = False) -> dict:
    """What train leaves behind for one hand-set model, then the real evaluate -> export -> register.
    `retry`: the same training run again (as `dvc repro` after a failed register), not a new one."""
    import mlflow

    from pipeline import evaluate, export, register, tracking

    arch = f"Colour{kind}"
    tracking.setup("oralscan")
    model_dir = root / "models" / arch
    if not retry:
        with mlflow.start_run(run_name=arch) as run:
            pass
        model_dir.mkdir(parents=True, exist_ok=True)
        colour_model(kind).save(model_dir / "model.keras")
        (model_dir / "run.json").write_text(json.dumps({
            "architecture": arch, "run_id": run.info.run_id, "parent_run_id": run.info.run_id, "image_size": SIZE,
            "classes": CLASSES, "data_version": "test", "git_commit": "test"}))
    text = params.read_text().replace("Colourmediocre", arch)
    params.write_text(text)
    reports = root / "reports"
    out = {"models": root / "models", "metrics": reports / "metrics.json", "leaderboard": reports / "board.csv",
           "figures": reports / "fig", "plots": reports / "confusion"}
    for d in ("fig", "confusion"):
        (reports / d).mkdir(exist_ok=True)
    evaluate.run(params, root / "raw", root / "split.csv", out)
    export.run(params, root / "raw", root / "split.csv", reports / "metrics.json", root / "export", reports / "export.json")
    if before_register:
        before_register()
    result = register.run(params, root / "raw", root / "split.csv", reports / "metrics.json", root / "export",
                          reports, reports / "model_card.md", reports / "registry.json")
    params.write_text(text.replace(arch, "Colourmediocre"))
    return result


def test_tflite_parity_on_a_real_architecture():
    from pipeline.export import VARIANTS, convert
    from pipeline.inference import TFLiteModel
    from pipeline.models import build_model

    model = build_model("MobileNetV2", 3, "none", size=64, alpha=0.35, seed=0).model
    x = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    reference = model.predict(x, verbose=0)
    blobs = convert(model)
    assert set(blobs) == set(VARIANTS)
    np.testing.assert_allclose(TFLiteModel(blobs["float32"]).predict(x), reference, atol=1e-5)
    np.testing.assert_allclose(TFLiteModel(blobs["float16"]).predict(x), reference, atol=2e-2)
    assert len(blobs["dynamic_range"]) < len(blobs["float32"]) / 2


def test_parity_check_rejects_a_variant_that_disagrees():
    from pipeline.export import parity
    from pipeline.params import load_section
    from tests.conftest import ROOT

    params = load_section("export", ROOT / "params.yaml")
    ref = np.eye(3)[[0, 1, 2, 0]]
    assert parity(ref, ref, "float32", params)["accepted"]
    bad = parity(ref, np.eye(3)[[0, 1, 2, 1]], "dynamic_range", params)
    assert not bad["accepted"] and "top-1 agreement 0.7500" in bad["reason"]


@pytest.mark.slow
def test_champion_challenger_promotion_predict_and_failures(project, monkeypatch, tmp_path):
    from mlflow.tracking import MlflowClient

    from pipeline import champion, register

    root, params = project
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    client = MlflowClient()
    name = "oralscan-classifier"

    first = pipeline_run(root, params, "mediocre")
    assert (first["version"], first["alias"]) == (1, "champion")
    export = json.loads((root / "reports" / "export.json").read_text())
    assert all(v["accepted"] for v in export["variants"].values())
    assert (root / "export" / "labels.txt").read_text().split() == CLASSES

    second = pipeline_run(root, params, "bad")
    assert (second["version"], second["alias"]) == (2, "challenger")
    assert "clinical gates" in second["reason"] and second["champion_before"]["version"] == 1
    assert champion.alias_version(client, name) == "1"

    # a model that WOULD be promoted fails before the alias moves: the champion stays, nothing claims it
    def lose_predictions():
        (root / "reports" / "fig" / "Colourperfect_test_predictions.csv").unlink()
    with pytest.raises(FileNotFoundError):
        pipeline_run(root, params, "perfect", before_register=lose_predictions)
    assert champion.alias_version(client, name) == "1"
    assert {v.tags["decision"] for v in client.search_model_versions(f"name = '{name}'")
            if str(v.version) not in ("1", "2")} <= {"pending"}
    assert [e["new"] for e in champion.history(client, name) if e["moved"] and e["alias"] == "champion"] == ["1"]

    third = pipeline_run(root, params, "perfect", retry=True)  # the retry completes the interrupted version
    assert (third["version"], third["alias"]) == (3, "champion")
    assert len(client.search_model_versions(f"name = '{name}'")) == 3
    assert third["comparison"]["old"] == pytest.approx(2 / 3)  # the champion re-scored on the same test split
    assert third["comparison"]["verdict"] == "better" and "superiority" in third["reason"]
    v3 = client.get_model_version(name, "3")
    assert v3.tags["data_version"] == "test" and v3.tags["tflite_float32"].endswith("model_float32.tflite")
    assert v3.tags["decision"] == "champion" and v3.tags["compared_against"] == "1"
    assert "Research use only" in v3.description and "| cancer |" in v3.description

    # re-registering the champion's own model (dvc repro -f register): kept, no new version, history says why
    again = register.run(params, root / "raw", root / "split.csv", root / "reports" / "metrics.json", root / "export",
                         root / "reports", root / "reports" / "model_card.md", root / "reports" / "registry.json")
    assert (again["version"], again["alias"], again["moved"]) == (3, "champion", False)
    assert len(client.search_model_versions(f"name = '{name}'")) == 3
    last = champion.history(client, name)[-1]
    assert last["new"] == "3" and not last["moved"] and "already @champion" in last["reason"]

    # predict from the registry: per-image errors, Grad-CAM overlays
    good = root / "raw" / "cancer" / "0.png"
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    done = subprocess.run([sys.executable, "-m", "pipeline.predict", "--model", "models:/oralscan-classifier@champion",
                           str(good), str(tmp_path / "broken.jpg"), "--gradcam", str(tmp_path / "cam")],
                          capture_output=True, text=True, env=os.environ)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 1 and lines[0].split("\t")[1] == "cancer" and "ERROR" in lines[1]
    assert len(list((tmp_path / "cam").glob("*_gradcam.png"))) == 1
    tflite = subprocess.run([sys.executable, "-m", "pipeline.predict", "--model",
                             str(root / "export" / "model_float32.tflite"), str(good)], capture_output=True, text=True)
    assert tflite.returncode == 0 and tflite.stdout.split("\t")[1] == "cancer"

    # an unreachable registry: a clear message, nothing changed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    try:
        with pytest.raises(register.RegistryUnavailable, match="cannot reach the MLflow registry"):
            register.client_or_fail()
    finally:
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")  # the URI is process-global in MLflow


@pytest.mark.slow
def test_store_dropping_at_the_alias_move_leaves_no_claim_and_the_next_run_completes(project, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline import champion

    root, params = project
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'drop.db'}")
    client, name = MlflowClient(), "oralscan-classifier"
    pipeline_run(root, params, "mediocre")

    def store_gone(*args, **kwargs):
        raise ConnectionError("the tracking server went away")
    with monkeypatch.context() as m:
        m.setattr(MlflowClient, "set_registered_model_alias", store_gone)
        with pytest.raises(ConnectionError):
            pipeline_run(root, params, "perfect")
    assert champion.alias_version(client, name) == "1"
    v2 = client.get_model_version(name, "2")
    assert v2.tags["decision"] == "pending" and "champion" not in (v2.aliases or [])
    assert json.loads((root / "reports" / "registry.json").read_text())["version"] == 1  # not rewritten
    done = pipeline_run(root, params, "perfect", retry=True)  # the next run completes it
    assert (done["version"], done["alias"]) == (2, "champion")
    assert len(client.search_model_versions(f"name = '{name}'")) == 2


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
