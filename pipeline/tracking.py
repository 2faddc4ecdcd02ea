"""MLflow plumbing shared by the stages: where runs go, the pipeline's parent run, lineage tags."""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import yaml

DEFAULT_URI = "sqlite:///mlflow.db"


def setup(experiment: str) -> str:
    """Point MLflow at MLFLOW_TRACKING_URI (default: SQLite, artifacts under mlruns/); returns the experiment id."""
    import mlflow

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI))
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    local = mlflow.get_tracking_uri().startswith("sqlite:")
    location = (Path("mlruns") / experiment).resolve().as_uri() if local else None
    return mlflow.create_experiment(experiment, artifact_location=location)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def data_version(dvc_file: Path = Path("data/raw.dvc")) -> str:
    """The md5 DVC recorded for data/raw, or 'untracked' when the folder is not under DVC."""
    if not dvc_file.is_file():
        return "untracked"
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
    return str(outs[0].get("md5", "untracked"))


def digest(*files: Path, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def parent_run(experiment_id: str, key: str, tags: dict[str, str]) -> str:
    """The pipeline run's parent MLflow run (found by its key, or created): one per pipeline run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    found = client.search_runs([experiment_id], filter_string=f"tags.pipeline_run = '{key}'", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"pipeline {key[:8]}", tags={"pipeline_run": key, **tags})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def pipeline_key(*inputs: Path, params_section: str = "") -> str:
    """PIPELINE_RUN_ID when an orchestrator sets one, else a digest of the inputs the models share."""
    return os.environ.get("PIPELINE_RUN_ID") or digest(*inputs, extra=params_section)
