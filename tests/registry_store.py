"""A real SQLite MLflow registry for the registry tests (pipeline/registry/, pipeline.champion)."""
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

NAME = "oralscan-classifier"  # register.model_name in params.yaml: the CLI's default


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    """An initialised MLflow database, built once (migrations take seconds) and copied per test."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_registered_models()
    return path


@pytest.fixture
def store(empty_store, tmp_path, monkeypatch):
    """A fresh registry holding NAME v1..v4 (no aliases); returns (client, tracking URI)."""
    from mlflow.tracking import MlflowClient

    from pipeline import tracking

    shutil.copy(empty_store, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    uri = tracking.tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("artifact_path: model\n")
    client.create_registered_model(NAME)
    for i in range(1, 5):
        client.create_model_version(NAME, source=str(tmp_path / "model"), run_id=None,
                                    tags={"data_version": f"md5data{i}", "run_id": f"run{i}"})
    return client, uri


def start(uri: str, code: str) -> subprocess.Popen:
    """Python in a new process on the same store (imports pipeline from the project root)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def cli(uri: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "USER": "dr.rao"}
    return subprocess.run([sys.executable, "-m", "pipeline.champion", *args, "--params", str(ROOT / "params.yaml")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def wait_for(path, proc, seconds=60):
    for _ in range(seconds * 20):
        if path.exists():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    pytest.fail(f"{path.name} did not appear")


def snapshot(client):
    model = client.get_registered_model(NAME)
    return model.aliases, model.tags, {v.version: v.tags for v in client.search_model_versions(f"name = '{NAME}'")}
