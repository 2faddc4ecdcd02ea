"""MLflow plumbing shared by the stages: where runs go, the pipeline's parent run, lineage tags."""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import yaml

DEFAULT_URI = "sqlite:///mlflow.db"
# the kind makes the MLflow 3 UI open the experiment on its training runs, not on GenAI traces
KIND = ("mlflow.experimentKind", "custom_model_development")


def stack_env(root: Path = Path(".")) -> dict[str, str]:
    """What `make stack` wrote for its clients ($STACK_DIR/env, default .stack/env); empty when no stack is up."""
    path = Path(os.environ.get("STACK_DIR") or root / ".stack") / "env"
    if not path.is_file():
        return {}
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[0] != "#")


def tracking_uri(root: Path = Path(".")) -> str:
    """MLFLOW_TRACKING_URI when set, else the running stack's server, else the SQLite default;
    pointed at by every stage that logs."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or stack_env(root).get("MLFLOW_TRACKING_URI", DEFAULT_URI)
    mlflow.set_tracking_uri(uri)
    return uri


def setup(experiment: str) -> str:
    """Point MLflow at its store (artifacts under mlruns/ for SQLite); returns the experiment id."""
    import mlflow

    tracking_uri()
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        if found.tags.get(KIND[0]) != KIND[1]:  # an experiment made before the kind was set
            mlflow.MlflowClient().set_experiment_tag(found.experiment_id, *KIND)
        return found.experiment_id
    local = mlflow.get_tracking_uri().startswith("sqlite:")
    location = (Path("mlruns") / experiment).resolve().as_uri() if local else None
    try:
        return mlflow.create_experiment(experiment, artifact_location=location, tags=dict([KIND]))
    except mlflow.exceptions.MlflowException:  # made meanwhile by a stage on another worker
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            raise
        return found.experiment_id


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
    name = f"pipeline data {tags.get('data_version', 'untracked')[:8]} run {key[-8:]}"
    run = client.create_run(experiment_id, run_name=name, tags={"pipeline_run": key, **tags})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def pipeline_key(*inputs: Path, params_section: str = "") -> str:
    """PIPELINE_RUN_ID when an orchestrator sets one, else a digest of the inputs the models share."""
    return os.environ.get("PIPELINE_RUN_ID") or digest(*inputs, extra=params_section)


class History:
    """Per-epoch metrics across both phases, mirrored to the active MLflow run."""

    def __init__(self, mlflow=None):
        self.rows, self.mlflow = [], mlflow

    def __call__(self, phase: str):
        def log(epoch, logs):
            row = {"step": len(self.rows), "phase": phase, "epoch": epoch, **{k: float(v) for k, v in logs.items()}}
            self.rows.append(row)
            if self.mlflow:
                self.mlflow.log_metrics({k: v for k, v in row.items() if k not in ("step", "phase", "epoch")},
                                        step=row["step"])
        return log


def log_keras_model(model, sample) -> None:
    """The Keras model with its signature (inferred from `sample`), as `model` in the active run."""
    import keras
    import mlflow
    import numpy as np
    import tensorflow as tf
    from mlflow.models import infer_signature

    # predict_on_batch, not predict: under train's op determinism, predict's tf.data pipeline makes
    # TensorFlow print "E0000 ... use_unbounded_threadpool" (its parallel map rewritten to a plain one)
    signature = infer_signature(sample, np.asarray(model.predict_on_batch(sample)))
    # mlflow.keras.log_model writes the input example before creating its folder (MLflow 3.17): use the
    # tensorflow flavor, which saves Keras 3 models in the same .keras format. No input example: with
    # one, MLflow reloads the model and predicts again (a progress bar and that E0000 line in the log)
    # only to log a warning if it fails. The served model (register) carries one.
    mlflow.tensorflow.log_model(model, name="model", signature=signature,
                                pip_requirements=[f"tensorflow-cpu=={tf.__version__}", f"keras=={keras.__version__}"])
