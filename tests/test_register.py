"""register: the clinical gates and the promotion decision as functions; then the real stage on a real SQLite
MLflow store with hand-set models: champion, challenger, a failure before the alias move, a retry, predict."""
import json
import os
import subprocess
import sys

import pytest

from tests.colour_project import CLASSES, pipeline_run, project, register_again  # noqa: F401 (fixture)
from tests.conftest import free_port


def report(sensitivity, low=None, high=1.0, groups=5):
    return {"sensitivity": sensitivity, "sensitivity_ci": None if sensitivity is None else [low, high],
            "groups": groups}


def test_gates_on_the_estimate_or_its_exact_lower_bound():
    from pipeline.register import gate_failures

    classes = {"cancer": report(0.9, 0.55), "precancer": report(0.7, 0.35)}
    assert gate_failures(classes, {"cancer": 0.8, "precancer": 0.6}, "point") == []
    failures = gate_failures(classes, {"cancer": 0.8, "precancer": 0.6}, "lower_bound")
    assert [f.split(" exact")[0] for f in failures] == ["sensitivity for cancer", "sensitivity for precancer"]
    assert "exact lower bound 0.550 < 0.8 (estimate 0.900, interval 0.550-1.000, 5 groups)" in failures[0]
    assert gate_failures({"cancer": report(0.75, 0.5)}, {"cancer": 0.8}, "point") == [
        "sensitivity for cancer estimate 0.750 < 0.8 (estimate 0.750, interval 0.500-1.000, 5 groups)"]
    # a class with no test image fails as "not measured", never as a pass or a 0
    assert gate_failures({"cancer": report(None)}, {"cancer": 0.0}, "point") == [
        "sensitivity for cancer not measured (no cancer image in the test split)"]
    assert gate_failures({}, {"cancer": 0.0}, "point")[0].endswith("not measured (no cancer image in the test split)")


def comparison(verdict, identical=False):
    return {"verdict": verdict, "identical": identical, "one_sided_lower": 0.01 if verdict != "not_shown" else -0.2,
            "new": 0.8, "old": 0.7, "difference": 0.1, "confidence": 0.95, "rule": "superiority", "margin": 0.05}


def test_promotion_decision_in_every_case():
    from pipeline.register import promotion_decision as decide

    assert decide(["sensitivity for cancer x"], None, None, True, "balanced_accuracy", False) == {
        "alias": "challenger", "reason": "fails the clinical gates: sensitivity for cancer x"}
    assert decide([], None, None, True, "balanced_accuracy", False)["alias"] == "champion"
    other = decide([], "3", None, True, "balanced_accuracy", False)
    assert other["alias"] == "champion" and "champion v3 predicts other classes" in other["reason"]
    better = decide([], "3", comparison("better"), False, "balanced_accuracy", False)
    assert better["alias"] == "champion" and better["reason"].startswith("vs champion v3: balanced_accuracy 0.800")
    assert decide([], "3", comparison("not_shown"), True, "balanced_accuracy", False)["alias"] == "challenger"
    # non-inferiority promotes only a model trained on newer data
    assert decide([], "3", comparison("not_worse"), True, "balanced_accuracy", False)["alias"] == "champion"
    same_data = decide([], "3", comparison("not_worse"), False, "balanced_accuracy", False)
    assert same_data["alias"] == "challenger" and "only promotes a model trained on newer data" in same_data["reason"]
    # identical predictions never churn the champion, whatever the verdict
    tie = decide([], "3", comparison("better", identical=True), True, "balanced_accuracy", False)
    assert tie["alias"] == "challenger" and tie["reason"].startswith("same predictions as champion v3")
    # sign-off: a winner waits; a loser does not ask
    waiting = decide([], "3", comparison("better"), False, "balanced_accuracy", True)
    assert waiting["alias"] == "awaiting_approval" and waiting["reason"].endswith("Waiting for a clinician's approval.")
    assert decide(["gate"], None, None, True, "balanced_accuracy", True)["alias"] == "challenger"


@pytest.mark.slow
def test_champion_challenger_promotion_predict_and_failures(project, monkeypatch, tmp_path):
    from mlflow.tracking import MlflowClient

    from pipeline.params import load_params
    from pipeline.registry.client import RegistryUnavailable, alias_version, registry_client
    from pipeline.registry.history import history

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
    assert alias_version(client, name) == "1"

    # a model that WOULD be promoted fails before the alias moves: the champion stays, nothing claims it
    def lose_predictions():
        (root / "reports" / "fig" / "Colourperfect_test_predictions.csv").unlink()
    with pytest.raises(FileNotFoundError):
        pipeline_run(root, params, "perfect", before_register=lose_predictions)
    assert alias_version(client, name) == "1"
    assert {v.tags["decision"] for v in client.search_model_versions(f"name = '{name}'")
            if str(v.version) not in ("1", "2")} <= {"pending"}
    assert [e["new"] for e in history(client, name) if e["moved"] and e["alias"] == "champion"] == ["1"]

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
    again = register_again(root, load_params(params))
    assert (again["version"], again["alias"], again["moved"]) == (3, "champion", False)
    assert len(client.search_model_versions(f"name = '{name}'")) == 3
    last = history(client, name)[-1]
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
        with pytest.raises(RegistryUnavailable, match="cannot reach the MLflow registry"):
            registry_client()
    finally:
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")  # the URI is process-global in MLflow


@pytest.mark.slow
def test_store_dropping_at_the_alias_move_leaves_no_claim_and_the_next_run_completes(project, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline.registry.client import alias_version

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
    assert alias_version(client, name) == "1"
    v2 = client.get_model_version(name, "2")
    assert v2.tags["decision"] == "pending" and "champion" not in (v2.aliases or [])
    assert json.loads((root / "reports" / "registry.json").read_text())["version"] == 1  # not rewritten
    done = pipeline_run(root, params, "perfect", retry=True)  # the next run completes it
    assert (done["version"], done["alias"]) == (2, "champion")
    assert len(client.search_model_versions(f"name = '{name}'")) == 2
