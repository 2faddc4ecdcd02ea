"""register: what counts as newer data; then the real stage on a real SQLite MLflow store with hand-set
models: champion, challenger, a failure before the alias move, a retry, predict."""
import json
import os
import subprocess
import sys

import pytest

from tests.colour_project import CLASSES, pipeline_run, project, register_again  # noqa: F401 (fixture)
from tests.conftest import free_port


class Version:
    def __init__(self, version, data_version, created):
        self.version, self.creation_timestamp = str(version), created
        self.tags = {} if data_version is None else {"data_version": data_version}


class Registry:
    """The one registry call newer_data makes, over a list of versions."""
    def __init__(self, *versions):
        self.versions = versions

    def search_model_versions(self, query):
        wanted = query.split("tag.data_version = '")[1].rstrip("'")
        return [v for v in self.versions if v.tags.get("data_version") == wanted]


def test_newer_data_means_a_data_version_the_registry_saw_later():
    from pipeline.register import newer_data

    old, mid, new = Version(1, "aaaa", 100), Version(2, "bbbb", 200), Version(3, "cccc", 300)
    registry = Registry(old, mid, new, Version(4, "aaaa", 400))  # v4: retrained on the oldest data
    assert newer_data(registry, "m", mid, "cccc") == (True, "data version cccc, first registered after "
                                                             "champion v2's bbbb")
    older = newer_data(registry, "m", mid, "aaaa")  # a later model on older data is not newer
    assert older == (False, "its data version aaaa was first registered before champion v2's bbbb")
    assert newer_data(registry, "m", mid, "bbbb") == (False, "its data version bbbb is champion v2's")
    untagged = newer_data(registry, "m", Version(5, None, 50), "cccc")  # a champion without data_version tag
    assert untagged == (False, "champion v5 records no data version, so its data cannot be ordered")
    assert not newer_data(registry, "m", Version(6, "untracked", 50), "cccc")[0]
    assert not newer_data(registry, "m", mid, "untracked")[0]
    assert not newer_data(registry, "m", mid, "dddd")[0]  # a data version no version was registered on


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


@pytest.mark.slow
def test_after_a_shift_the_winner_waits_for_a_clinician(project, monkeypatch, tmp_path):
    """The shift check found new photos unlike the champion's: a model that earns @champion is recorded as
    awaiting approval, nothing moves, and a clinician's approval moves it (the same code as the CLI)."""
    from mlflow.tracking import MlflowClient

    from pipeline.params import load_params
    from pipeline.registry import aliases
    from pipeline.registry.client import alias_version

    root, params = project
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'shift.db'}")
    client, name = MlflowClient(), "oralscan-classifier"
    assert pipeline_run(root, params, "mediocre")["alias"] == "champion"
    pipeline_run(root, params, "perfect")  # registers v2 as champion; put v1 back and decide again after a shift
    aliases.rollback(client, name, "1", "test: decide v2 again after a shift", "test")
    report = tmp_path / "shift.json"
    report.write_text(json.dumps({"shifted": True, "p_value": 0.001, "summary": "new images differ (p = 0.001)"}))
    waiting = register_again(root, load_params(params), shift=report)
    assert (waiting["version"], waiting["alias"]) == (2, "awaiting_approval"), waiting
    assert "Shift check: new images differ (p = 0.001)." in waiting["reason"] and alias_version(client, name) == "1"
    assert client.get_model_version(name, "2").tags["decision"] == "awaiting_approval"
    event = aliases.approve(client, name, "2", "dr. rao", "looked at the new photos")
    assert event["moved"] and alias_version(client, name) == "2"
