"""register: the best model into the MLflow Model Registry; `champion` only when it earns it.

The current champion is scored on the same test split as the new model. The new version
becomes `@champion` only if it passes the clinical gates (`register.min_sensitivity`) and is at
least as good on `evaluate.select_by` (within `register.tolerance`); otherwise it becomes
`@challenger` and the reason is recorded. Moving the alias is the last step, so any failure
before it leaves the champion where it was.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.params import load_section

PIPELINE_DIR = Path(__file__).resolve().parent


class RegistryUnavailable(RuntimeError):
    pass


def client_or_fail():
    from mlflow.tracking import MlflowClient

    from pipeline import tracking

    uri = tracking.tracking_uri()  # only sets the URI: nothing is contacted before the try
    try:
        client = MlflowClient()
        client.search_registered_models(max_results=1)
        return client
    except Exception as err:  # any transport or store error: nothing has been changed yet
        raise RegistryUnavailable(f"cannot reach the MLflow registry at {uri}: {err}") from None


def current_champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" in str(err.error_code) or "not found" in str(err).lower():
            return None
        raise


def score_version(name: str, version: str, test: pd.DataFrame, raw: Path, base, bins: int) -> dict | None:
    """The champion's scores on today's test split, or None if its classes differ."""
    from pipeline.evaluate import predict_test, scores
    from pipeline.inference import load_classifier

    classifier = load_classifier(f"models:/{name}/{version}")
    if list(classifier.classes) != list(base.classes):
        return None
    y, probs = predict_test(classifier.predict, classifier.size, test, raw, list(base.classes))
    return scores(y, probs, list(base.classes), list(base.positive_classes), bins)


def gate_failures(scores: dict, min_sensitivity: dict[str, float]) -> list[str]:
    return [f"sensitivity for {c} {scores.get(f'recall_{c}', 0):.3f} < {need}"
            for c, need in min_sensitivity.items() if scores.get(f"recall_{c}", 0) < need]


def decide(new: dict, champion: dict | None, champion_version, select_by: str, tolerance: float,
           gates: list[str]) -> dict:
    if gates:
        return {"alias": "challenger", "reason": "fails the clinical gates: " + "; ".join(gates)}
    if champion_version is None:
        return {"alias": "champion", "reason": "passes the clinical gates and there was no champion"}
    if champion is None:
        return {"alias": "champion", "reason": f"champion v{champion_version.version} predicts other classes"}
    ours, theirs = new[select_by], champion[select_by]
    if ours >= theirs - tolerance:
        return {"alias": "champion", "reason": f"{select_by} {ours:.4f} >= champion v{champion_version.version}'s "
                                               f"{theirs:.4f} - tolerance {tolerance} on the same test split"}
    return {"alias": "challenger", "reason": f"{select_by} {ours:.4f} < champion v{champion_version.version}'s "
                                            f"{theirs:.4f} - tolerance {tolerance} on the same test split"}


def log_serving_model(info: dict, model_path: Path, export_dir: Path, sample: Path) -> str:
    """The image-in, classes-out pyfunc, logged to the architecture's run; returns its model URI."""
    import keras
    import mlflow
    import tensorflow as tf
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from pipeline.inference import ImageClassifier

    classes = json.loads((export_dir / "metadata.json").read_text())["classes"]
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "image")]),
        outputs=Schema([ColSpec("string", "class"), ColSpec("string", "error")]
                       + [ColSpec("double", f"prob_{c}") for c in classes]))
    example = pd.DataFrame({"image": [base64.b64encode(sample.read_bytes()).decode()]})
    with mlflow.start_run(run_id=info["run_id"]):
        logged = mlflow.pyfunc.log_model(
            name="serving", python_model=ImageClassifier(), code_paths=[str(PIPELINE_DIR)],
            artifacts={"keras_model": str(model_path), "metadata": str(export_dir / "metadata.json")},
            signature=signature, input_example=example,
            pip_requirements=[f"tensorflow-cpu=={tf.__version__}", f"keras=={keras.__version__}", "pillow", "pandas"])
    return logged.model_uri


def version_tags(info: dict, scores: dict, export_dir: Path, params_path: Path, decision: dict) -> dict[str, str]:
    metadata = json.loads((export_dir / "metadata.json").read_text())
    tags = {"git_commit": info["git_commit"], "data_version": info["data_version"],
            "params_digest": hashlib.sha256(params_path.read_bytes()).hexdigest()[:16],
            "architecture": info["architecture"], "run_id": info["run_id"], "image_size": str(info["image_size"]),
            "classes": ",".join(metadata["classes"]), "decision": decision["alias"], "reason": decision["reason"]}
    tags.update({f"test_{k}": f"{v:.4f}" for k, v in scores.items() if isinstance(v, float) and not np.isnan(v)})
    tags.update({f"tflite_{k}": f"runs:/{info['run_id']}/tflite/{v['file']}" for k, v in metadata["variants"].items()})
    return tags


def run(params_path: Path, raw: Path, split_csv: Path, metrics_path: Path, export_dir: Path,
        reports: Path, card_path: Path, out: Path) -> dict:
    import mlflow

    from pipeline import tracking
    from pipeline.model_card import render

    base, params = load_section("base", params_path), load_section("register", params_path)
    evaluation = load_section("evaluate", params_path)
    client = client_or_fail()
    tracking.setup(load_section("train", params_path).experiment)
    metrics = json.loads(metrics_path.read_text())
    best = metrics["best"]
    info = json.loads((Path(best["model"]).parent / "run.json").read_text())
    new = metrics["architectures"][best["architecture"]]
    test = pd.read_csv(split_csv, keep_default_na=False).query("split == 'test'")
    champion_version = current_champion(client, params.model_name)
    champion = (score_version(params.model_name, champion_version.version, test, raw, base, evaluation.calibration_bins)
                if champion_version else None)
    decision = decide(new, champion, champion_version, evaluation.select_by, params.tolerance,
                      gate_failures(new, params.min_sensitivity))
    model_uri = log_serving_model(info, Path(best["model"]), export_dir, raw / test.path.iloc[0])
    tags = version_tags(info, new, export_dir, params_path, decision)
    version = mlflow.register_model(model_uri, params.model_name, tags=tags).version
    lineage = {**info, "params_digest": tags["params_digest"]}
    card = render(params.model_name, version, decision, metrics, reports, lineage, list(base.classes))
    card_path.write_text(card)
    client.update_model_version(params.model_name, version, description=card)
    with mlflow.start_run(run_id=info["run_id"]):
        mlflow.log_text(card, f"model_card_v{version}.md")
    report = {"model_name": params.model_name, "version": int(version), "model_uri": model_uri, **decision,
              "select_by": evaluation.select_by, "new": new,
              "champion_before": {"version": int(champion_version.version), "scores": champion}
              if champion_version else None}
    out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    client.set_registered_model_alias(params.model_name, decision["alias"], version)  # last: all else succeeded
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    for flag in ("raw", "split", "metrics", "export", "reports", "card", "out"):
        parser.add_argument(f"--{flag}", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        r = run(args.params, args.raw, args.split, args.metrics, args.export, args.reports, args.card, args.out)
    except RegistryUnavailable as err:
        raise SystemExit(f"register: {err}; the registry was not changed") from None
    print(f"register: {r['model_name']} version {r['version']} is @{r['alias']}: {r['reason']}")


if __name__ == "__main__":
    main()
