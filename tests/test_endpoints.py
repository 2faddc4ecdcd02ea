"""pipeline.endpoints: the one KEY=VALUE reader, and where a client finds each service."""
import pytest

from pipeline.endpoints import endpoint, read_env_file, stack_env
from tests.conftest import ROOT


def test_env_files_are_read_one_way(tmp_path):
    path = tmp_path / "env"
    path.write_text("# written by make stack\n\nMLFLOW_TRACKING_URI=http://127.0.0.1:15000\n"
                    "  KEY = a=b==c  \nEMPTY=\n")
    assert read_env_file(path) == {"MLFLOW_TRACKING_URI": "http://127.0.0.1:15000", "KEY": "a=b==c", "EMPTY": ""}
    path.write_text("GOOD=1\nno equals sign here\n")
    with pytest.raises(ValueError, match=r"env:2: expected KEY=VALUE"):
        read_env_file(path)


def test_the_launcher_reads_its_settings_with_the_same_reader():
    settings = read_env_file(ROOT / "docker" / "stack.env")
    assert settings["STACK_HOST"] == "127.0.0.1" and settings["STACK_WORK_POOL"] == "training"


def test_environment_then_the_running_stack_then_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("STACK_DIR", str(tmp_path / "stack"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert stack_env() == {} and endpoint("MLFLOW_TRACKING_URI", default="sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    (tmp_path / "stack").mkdir()
    (tmp_path / "stack" / "env").write_text("MLFLOW_TRACKING_URI=http://127.0.0.1:15000\n")
    assert endpoint("MLFLOW_TRACKING_URI", default="sqlite:///mlflow.db") == "http://127.0.0.1:15000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.hospital:5000")
    assert endpoint("MLFLOW_TRACKING_URI") == "http://mlflow.hospital:5000"
    assert endpoint("PREFECT_API_URL") is None
