"""register: the chosen model into the MLflow Model Registry; `@champion` moves only on evidence.

The champion is re-scored on the same test images as the new model and the two are compared
*paired*, resampling duplicate groups (`pipeline.stats.paired_comparison`), under the rule in
params: superiority (promote only when better with `register.confidence`) or non-inferiority
(promote a model trained on newer data unless worse by more than `register.margin`). Ties never
churn the champion. Clinical gates (`register.min_sensitivity`) use exact intervals and can gate
on the estimate or its lower bound; a class with no test image fails its gate as "not measured".

The write is idempotent and race-safe: a retry reuses the version already registered for the
same training run; the alias moves under a registry lock and only if `@champion` is still the
version compared against (`pipeline.champion`), and every decision is recorded in the registry's
history. Tags, description and registry.json are written after the alias, so none of them claims
an alias the version does not hold.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import stats
from pipeline.console import quiet
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


def champion_probs(name: str, version: str, test: pd.DataFrame, raw: Path, classes) -> np.ndarray | None:
    """The champion's probabilities on today's test images, or None if it predicts other classes."""
    from pipeline.inference import load_classifier
    from pipeline.streams import images_of, predict_rows

    classifier = load_classifier(f"models:/{name}/{version}")
    if list(classifier.classes) != list(classes):
        return None
    return predict_rows(classifier.predict, images_of(test, raw, classes, classifier.size))


def gate_failures(classes_report: dict, min_sensitivity: dict[str, float], gate_on: str) -> list[str]:
    """Clinical gates on test sensitivity: the estimate (point) or its exact lower bound (lower_bound)."""
    failures = []
    for c, need in min_sensitivity.items():
        r = classes_report.get(c)
        if r is None or r["sensitivity"] is None:
            failures.append(f"sensitivity for {c} not measured (no {c} image in the test split)")
            continue
        value = r["sensitivity"] if gate_on == "point" else r["sensitivity_ci"][0]
        if value < need:
            what = "estimate" if gate_on == "point" else "exact lower bound"
            failures.append(f"sensitivity for {c} {what} {value:.3f} < {need} "
                            f"(estimate {r['sensitivity']:.3f}, interval {r['sensitivity_ci'][0]:.3f}-"
                            f"{r['sensitivity_ci'][1]:.3f}, {r['groups']} groups)")
    return failures


def decide(gates: list[str], champion: str | None, comparison: dict | None, newer_data: bool,
           select_by: str, require_approval: bool) -> dict:
    """The decision in words a clinician reads; no registry access."""
    if gates:
        return {"alias": "challenger", "reason": "fails the clinical gates: " + "; ".join(gates)}
    if champion is None:
        out = {"alias": "champion", "reason": "passes the clinical gates and there was no champion"}
    elif comparison is None:
        out = {"alias": "champion", "reason": f"champion v{champion} predicts other classes; passes the clinical gates"}
    else:
        sentence = stats.describe(comparison, select_by)
        if comparison["identical"]:
            return {"alias": "challenger", "reason": f"same predictions as champion v{champion} on every test image: "
                                                     "no reason to change. " + sentence}
        wins = comparison["verdict"] == "better" or (comparison["verdict"] == "not_worse" and newer_data)
        if comparison["verdict"] == "not_worse" and not newer_data:
            sentence += " Non-inferiority only promotes a model trained on newer data; this one is not."
        out = {"alias": "champion" if wins else "challenger", "reason": f"vs champion v{champion}: {sentence}"}
    if out["alias"] == "champion" and require_approval:
        return {"alias": "awaiting_approval", "reason": out["reason"] + " Waiting for a clinician's approval."}
    return out


def compare(params, evaluation, best, test, raw, classes, name, champion) -> tuple[dict | None, dict | None]:
    """Paired comparison of the new model and the champion on the same test images."""
    if champion is None:
        return None, None
    old = champion_probs(name, champion.version, test, raw, classes)
    if old is None:
        return None, None
    predictions = pd.read_csv(best["predictions"], keep_default_na=False)
    if list(predictions.path) != list(test.path):
        raise SystemExit("register: the test predictions are not of today's test split; rerun evaluate")
    new = predictions[[f"p_{c}" for c in classes]].to_numpy()
    y = np.array([classes.index(c) for c in test.label])
    comparison = stats.paired_comparison(evaluation.select_by, y, new, old, test.group_id.to_numpy(), classes,
                                         params.bootstrap, 0, params.confidence, params.rule, params.margin)
    return comparison, {"version": int(champion.version), "data_version": champion.tags.get("data_version", "")}


def check_rule(params, select_by: str) -> None:
    """Settings that cannot give a decision with a stated error rate fail before anything is registered."""
    if params.rule not in ("superiority", "non_inferiority"):
        raise SystemExit(f"register: register.rule {params.rule!r} is not superiority or non_inferiority")
    if params.gate_on not in ("point", "lower_bound"):
        raise SystemExit(f"register: register.gate_on {params.gate_on!r} is not point or lower_bound")
    if params.rule == "non_inferiority" and select_by in ("macro_f1", "roc_auc"):
        raise SystemExit(f"register: non_inferiority has no test with a stated error rate for {select_by}; "
                         "use superiority or select_by balanced_accuracy, accuracy or sensitivity_<class>")


def find_version(client, name: str, run_id: str):
    """The version already registered for this training run (a retry), or None."""
    for v in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        if v.tags.get("decision") != "abandoned":
            return v
    return None


def abandon_interrupted(client, name: str, keep: str) -> None:
    """Versions an interrupted register left undecided are marked so, never left looking promoted."""
    for v in client.search_model_versions(f"name = '{name}' and tag.decision = 'pending'"):
        if str(v.version) != keep and not v.aliases:  # one holding an alias was moved: the next register re-tags it
            client.set_model_version_tag(name, v.version, "decision", "abandoned")
            client.set_model_version_tag(name, v.version, "reason", f"register was interrupted; superseded by v{keep}")


def log_serving_model(info: dict, model_path: Path, export_dir: Path, sample: Path) -> str:
    """The image-in, classes-out pyfunc, logged to the architecture's run; returns its model URI."""
    import keras
    import mlflow
    import tensorflow as tf
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from pipeline.inference import ImageClassifier, serving_artifacts

    classes = json.loads((export_dir / "metadata.json").read_text())["classes"]
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "image")]),
        outputs=Schema([ColSpec("string", "class"), ColSpec("string", "error")]
                       + [ColSpec("double", f"prob_{c}") for c in classes]))
    example = pd.DataFrame({"image": [base64.b64encode(sample.read_bytes()).decode()]})
    with mlflow.start_run(run_id=info["run_id"]):
        logged = mlflow.pyfunc.log_model(
            name="serving", python_model=ImageClassifier(), code_paths=[str(PIPELINE_DIR)],
            artifacts=serving_artifacts(model_path, export_dir), signature=signature, input_example=example,
            pip_requirements=[f"tensorflow-cpu=={tf.__version__}", f"keras=={keras.__version__}", "pillow",
                              "pillow-heif", "pandas", "ai-edge-litert"])
    return logged.model_uri


def lineage_tags(info: dict, scores: dict, export_dir: Path, params_path: Path) -> dict[str, str]:
    metadata = json.loads((export_dir / "metadata.json").read_text())
    tags = {"git_commit": info["git_commit"], "data_version": info["data_version"],
            "params_digest": hashlib.sha256(params_path.read_bytes()).hexdigest()[:16],
            "architecture": info["architecture"], "run_id": info["run_id"], "image_size": str(info["image_size"]),
            "classes": ",".join(metadata["classes"]), "decision": "pending", "reason": "register in progress"}
    tags.update({f"test_{k}": f"{v:.4f}" for k, v in scores.items() if isinstance(v, float)})
    tags.update({f"tflite_{k}": f"runs:/{info['run_id']}/tflite/{v['file']}" for k, v in metadata["variants"].items()})
    return tags


def register_version(client, name, info, best, scores, export_dir, params_path, sample) -> str:
    """Find the version of this run (idempotent retry) or log and register it as `pending`."""
    import mlflow

    found = find_version(client, name, info["run_id"])
    if found is not None:
        return found.version
    uri = log_serving_model(info, Path(best["model"]), export_dir, sample)
    tags = lineage_tags(info, scores, export_dir, params_path)
    return mlflow.register_model(uri, name, tags=tags).version


def apply(client, name, version, decision, champion, data_version, wait) -> dict:
    from pipeline import champion as registry

    actor = f"pipeline run {os.environ.get('PIPELINE_RUN_ID', 'manual')} ({registry.actor()})"
    client.set_model_version_tag(name, version, "compared_against", champion or "")
    if decision["alias"] == "awaiting_approval":
        return registry.record_decision(client, name, version, actor, "awaiting_approval", decision["reason"],
                                        data_version, wait)
    return registry.move_alias(client, name, decision["alias"], version, champion, actor, decision["alias"],
                               decision["reason"], data_version, wait)


def run(params_path: Path, raw: Path, split_csv: Path, metrics_path: Path, export_dir: Path,
        reports: Path, card_path: Path, out: Path) -> dict:
    from pipeline import champion as registry
    from pipeline import tracking
    from pipeline.model_card import render

    base, params = load_section("base", params_path), load_section("register", params_path)
    evaluation, classes = load_section("evaluate", params_path), list(base.classes)
    check_rule(params, evaluation.select_by)
    client = client_or_fail()
    tracking.setup(load_section("train", params_path).experiment)
    metrics = json.loads(metrics_path.read_text())
    best = metrics["best"]
    info = json.loads((Path(best["model"]).parent / "run.json").read_text())
    chosen = metrics["architectures"][best["architecture"]]
    test = pd.read_csv(split_csv, keep_default_na=False).query("split == 'test'").reset_index(drop=True)
    name = params.model_name
    version = str(register_version(client, name, info, best, chosen["test"], export_dir, params_path, raw / test.path[0]))
    abandon_interrupted(client, name, version)
    current = client.get_model_version_by_alias(name, "champion") if registry.alias_version(client, name) else None
    if current is not None and str(current.version) == version:
        decision = {"alias": "champion", "reason": f"v{version} is already @champion (same training run); kept"}
        comparison, before = None, {"version": int(version), "data_version": info["data_version"]}
    else:
        comparison, before = compare(params, evaluation, best, test, raw, classes, name, current)
        gates = gate_failures(chosen["test_report"]["classes"], params.min_sensitivity, params.gate_on)
        newer = before is None or before["data_version"] != info["data_version"]
        decision = decide(gates, str(current.version) if current else None, comparison, newer, evaluation.select_by,
                          params.require_approval)
    try:
        event = apply(client, name, version, decision, str(current.version) if current else None,
                      info["data_version"], params.lock_timeout_seconds)
    except (registry.ChampionMoved, registry.RegistryBusy) as err:
        raise SystemExit(f"register: {err}; rerun to decide against the current champion") from None
    lineage = {**info, "params_digest": client.get_model_version(name, version).tags.get("params_digest", "")}
    card = render(name, version, decision, metrics, reports, lineage, classes)
    card_path.write_text(card)
    client.update_model_version(name, version, description=card)
    client.log_text(info["run_id"], card, f"model_card_v{version}.md")
    report = {"model_name": name, "version": int(version), **decision, "moved": event.get("moved"),
              "rule": params.rule, "select_by": evaluation.select_by, "comparison": comparison,
              "new": chosen["test"], "champion_before": before, "history_seq": event.get("seq")}
    out.write_text(json.dumps(report, indent=2) + "\n")
    log_decision(client, info["parent_run_id"], report, [out, card_path])
    return report


def log_decision(client, parent: str, report: dict, files: list[Path]) -> None:
    """The decision on the pipeline's parent run, beside its leaderboard: version, alias, the rule's numbers."""
    tags = {"registered_version": str(report["version"]), "decision": report["alias"],
            "decision_reason": report["reason"][:5000], "decision_rule": report["rule"]}
    for key, value in tags.items():
        client.set_tag(parent, key, value)
    for key in ("difference", "one_sided_lower"):  # NaN when nothing was compared: no stale number stays
        value = (report["comparison"] or {}).get(key)
        client.log_metric(parent, f"decision.{key}", float("nan") if value is None else float(value))
    for f in files:
        client.log_artifact(parent, str(f), artifact_path="decision")


def main(argv: list[str] | None = None) -> None:
    quiet(tensorflow=True)  # before TensorFlow's first import: its start-up lines stay out of the log
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    for flag in ("raw", "split", "metrics", "export", "reports", "card", "out"):
        parser.add_argument(f"--{flag}", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        r = run(args.params, args.raw, args.split, args.metrics, args.export, args.reports, args.card, args.out)
    except RegistryUnavailable as err:
        raise SystemExit(f"register: {err}; the registry was not changed") from None
    print(f"register: {r['model_name']} version {r['version']} is {r['alias']}: {r['reason']}")


if __name__ == "__main__":
    main()
