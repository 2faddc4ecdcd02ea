"""MLflow plumbing shared by the stages: where runs go, the pipeline's parent run, lineage tags."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import yaml

from pipeline import project
from pipeline.endpoints import endpoint, use_credentials

# the kind makes the MLflow 3 UI open the experiment on its training runs, not on GenAI traces
KIND = ("mlflow.experimentKind", "custom_model_development")


def default_uri(root: Path | None = None) -> str:
    """The local store: mlflow.db in the project root (not the working directory), artifacts in mlruns/ beside it."""
    return f"sqlite:///{Path(root or project.root()) / 'mlflow.db'}"


def tracking_uri(root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI when set, else the running stack's server, else the SQLite default;
    pointed at by every stage that logs."""
    import mlflow

    uri = endpoint("MLFLOW_TRACKING_URI", root, None) or default_uri(root)
    if not uri.startswith("sqlite:"):
        use_credentials(root)  # the stack's MLflow asks who you are (its basic-auth app)
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
    location = (project.root() / "mlruns" / experiment).as_uri() if local else None
    try:
        return mlflow.create_experiment(experiment, artifact_location=location, tags=dict([KIND]))
    except mlflow.exceptions.MlflowException:  # made meanwhile by a stage on another worker
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            raise
        return found.experiment_id


def dvc_written(root: Path = Path(".")) -> list[str]:
    """Git pathspecs of what DVC itself writes while the pipeline runs: dvc.lock, .dvc files, the
    .gitignore files beside outputs, and every stage's outs, metrics and plots in dvc.yaml."""
    dvc_yaml = Path(root) / "dvc.yaml"
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}) if dvc_yaml.is_file() else {}
    paths = {"dvc.lock", "**/*.dvc", "**/.gitignore"}
    for stage in stages.values():
        body = stage.get("do", stage)
        for entry in (e for kind in ("outs", "metrics", "plots") for e in body.get(kind) or []):
            name = re.sub(r"\$\{[^}]*\}", "*", entry if isinstance(entry, str) else next(iter(entry)))
            paths |= {name, f"{name}/**"}
    return sorted(paths)


def git_commit(root: Path = Path(".")) -> str:
    """HEAD, with `-dirty` only when tracked files differ from it beyond what DVC writes during the run
    (dvc.lock and the stages' outputs change under every `dvc repro`; code, params or labels are a real diff)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        excludes = [f":(exclude,glob){p}" for p in dvc_written(root)]
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *excludes],
                               cwd=root, capture_output=True, text=True)
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


def params_digest(params) -> str:
    """A digest of the resolved settings (a Params), blind to comments and formatting of params.yaml."""
    return digest(extra=json.dumps(dataclasses.asdict(params), sort_keys=True, default=str))


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

    # the output's schema from the model's own output shape: predicting the sample only for its dtype and
    # shape traced the whole network once more in every stage that logs a model
    signature = infer_signature(sample, np.zeros((len(sample), *model.output.shape[1:]), "float32"))
    # mlflow.keras.log_model writes the input example before creating its folder (MLflow 3.17): use the
    # tensorflow flavor, which saves Keras 3 models in the same .keras format. No input example: with
    # one, MLflow reloads the model and predicts again (a progress bar and that E0000 line in the log)
    # only to log a warning if it fails. The served model (register) carries one.
    mlflow.tensorflow.log_model(model, name="model", signature=signature,
                                pip_requirements=[f"tensorflow-cpu=={tf.__version__}", f"keras=={keras.__version__}"])
