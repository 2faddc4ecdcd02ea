"""register: the chosen model into the MLflow Model Registry; `@champion` moves only on evidence.

The champion is re-scored on the same test images as the new model and the two are compared
*paired*, resampling duplicate groups (`pipeline.paired.paired_comparison`), under the rule in
params: superiority (promote only when better with `register.confidence`) or non-inferiority
(promote a model trained on a later data version unless worse by more than `register.margin`;
one shown better is promoted as better). Data versions are DVC hashes: the registry orders them
by when it first registered a model on each (`newer_data`). Ties never churn the champion.
Clinical gates (`register.min_sensitivity`) use exact intervals and can gate on the estimate or
its lower bound; a class with no test image fails its gate as "not measured".

The write is idempotent and race-safe: a retry reuses the version already registered for the
same training run; the alias moves under a registry lock and only if `@champion` is still the
version compared against (`pipeline/registry/`), and every decision is recorded in the registry's
history. Tags, description and registry.json are written after the alias, so none of them claims
an alias the version does not hold.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import paired, tracking
from pipeline.promotion import at_operating_point, gate_failures, operating_point_failures, promotion_decision
from pipeline.console import quiet
from pipeline.params import Params, load_params
from pipeline.registry import aliases
from pipeline.registry.client import RegistryUnavailable, actor, alias_version, registry_client
from pipeline.registry.lock import RegistryBusy
from pipeline.shift import hold_for_shift, log_reference, read_report
from pipeline.stage import StageError, one_line_errors, parser, paths
from pipeline.tables import read_split


@dataclass(frozen=True)
class Inputs:
    raw: Path
    split: Path
    metrics: Path
    export: Path
    reports: Path       # the stages' reports the model card quotes
    operating_point: Path  # export's decision: threshold, guarantee, sensitivities at it on the test split
    shift: Path | None = None     # reports/shift.json: after a shift, a would-be champion waits (shift.on_shift)
    manifest: Path | None = None  # validate's manifest: the cameras of the reference table logged with the version


@dataclass(frozen=True)
class Outputs:
    card: Path
    out: Path           # registry.json: the decision, the paired comparison, the rule


def champion_probs(name: str, version: str, test: pd.DataFrame, raw: Path, classes) -> np.ndarray | None:
    """The champion's probabilities on today's test images, or None if it predicts other classes."""
    from pipeline.inference import load_classifier
    from pipeline.streams import images_of, predict_rows

    classifier = load_classifier(f"models:/{name}/{version}")
    if list(classifier.classes) != list(classes):
        return None
    return predict_rows(classifier.predict, images_of(test, raw, classes, classifier.size))


def compare(params, evaluation, best, test, raw, classes, name, champion) -> tuple[dict | None, dict | None]:
    """Paired comparison of the new model and the champion on the same test images."""
    if champion is None:
        return None, None
    old = champion_probs(name, champion.version, test, raw, classes)
    if old is None:
        return None, None
    predictions = pd.read_csv(best["predictions"], keep_default_na=False)
    if list(predictions.sha256) != list(test.sha256):
        raise StageError("the test predictions are not of today's test split; rerun evaluate")
    new = predictions[[f"p_{c}" for c in classes]].to_numpy()
    y = np.array([classes.index(c) for c in test.label])
    comparison = paired.paired_comparison(evaluation.select_by, y, new, old, test.group_id.to_numpy(), classes,
                                          params.bootstrap, 0, params.confidence, params.rule, params.margin)
    return comparison, {"version": int(champion.version), "data_version": champion.tags.get("data_version", "")}


def first_registered(client, name: str, data_version: str) -> int | None:
    """When the registry first saw a data version: the creation time (ms) of the first version of `name` trained on
    it, or None. DVC's data versions are content hashes with no order of their own; the registry's is the record."""
    if data_version in ("", "untracked"):
        return None
    found = client.search_model_versions(f"name = '{name}' and tag.data_version = '{data_version}'")
    return min((int(v.creation_timestamp) for v in found), default=None)


def newer_data(client, name: str, champion, data_version: str) -> tuple[bool, str]:
    """(whether the new model, registered already, was trained on a LATER data version than the champion, why).
    A data version the registry first saw after the champion's is later; the same one, an older one, or one that
    cannot be ordered (untracked, or a champion without a data_version tag) is not."""
    old, who = champion.tags.get("data_version", ""), f"champion v{champion.version}"
    if old in ("", "untracked"):
        return False, f"{who} records no data version, so its data cannot be ordered"
    if data_version == old:
        return False, f"its data version {data_version[:8]} is {who}'s"
    new_at, old_at = first_registered(client, name, data_version), first_registered(client, name, old)
    if new_at is None or old_at is None:
        return False, f"data version {data_version[:8]} or {who}'s {old[:8]} is unknown to the registry"
    if new_at <= old_at:
        return False, f"its data version {data_version[:8]} was first registered before {who}'s {old[:8]}"
    return True, f"data version {data_version[:8]}, first registered after {who}'s {old[:8]}"


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


def lineage_tags(info: dict, scores: dict, export_dir: Path, params_digest: str) -> dict[str, str]:
    metadata = json.loads((export_dir / "metadata.json").read_text())
    tags = {"git_commit": info["git_commit"], "data_version": info["data_version"],
            "params_digest": params_digest,
            "architecture": info["architecture"], "run_id": info["run_id"], "image_size": str(info["image_size"]),
            "classes": ",".join(metadata["classes"]), "decision": "pending", "reason": "register in progress"}
    tags.update({"members": ",".join(info["members"])} if info.get("members") else {})  # an ensemble's, strongest first
    tags.update({f"test_{k}": f"{v:.4f}" for k, v in scores.items() if isinstance(v, float)})
    tags.update({f"tflite_{k}": f"runs:/{info['run_id']}/tflite/{v['file']}" for k, v in metadata["variants"].items()})
    return {**tags, **operating_point_tags(metadata["operating_point"])}


def operating_point_tags(op: dict) -> dict[str, str]:
    """The shipped decision on the registry version, so deployment reads it beside the model."""
    value = lambda v: "none" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)  # noqa: E731
    tags = {f"op_{k}": value(op[k]) for k in ("threshold", "target_sensitivity", "confidence",
                                              "guaranteed_sensitivity", "target_met", "temperature")}
    tags["op_positive_classes"] = ",".join(op["positive_classes"])
    tags.update({f"op_test_{k}": value(v) for k, v in op["test"].items()})
    return tags


def register_version(client, name, info, best, scores, export_dir, params_digest, sample) -> str:
    """Find the version of this run (idempotent retry) or log and register it as `pending`."""
    import mlflow

    from pipeline.inference import log_serving_model

    found = find_version(client, name, info["run_id"])
    if found is not None:
        return found.version
    uri = log_serving_model(info, export_dir / "model.keras", export_dir, sample)  # calibrated, as export shipped it
    tags = lineage_tags(info, scores, export_dir, params_digest)
    return mlflow.register_model(uri, name, tags=tags).version


def apply(client, name, version, decision, champion, data_version, wait) -> dict:
    who = f"pipeline run {os.environ.get('PIPELINE_RUN_ID', 'manual')} ({actor()})"
    client.set_model_version_tag(name, version, "compared_against", champion or "")
    if decision["alias"] == "awaiting_approval":
        return aliases.record_decision(client, name, version, who, "awaiting_approval", decision["reason"],
                                       data_version, wait)
    return aliases.move_alias(client, name, decision["alias"], version, champion, who, decision["alias"],
                              decision["reason"], data_version, wait)


def decide(client, params: Params, info: dict, chosen: dict, best: dict, test: pd.DataFrame, raw: Path,
           version: str, current, op: dict, shift_report: dict | None = None) -> tuple[dict, dict | None, dict | None]:
    """(decision, paired comparison, the champion before) for the registered version; `op` is export's
    operating point, whose sensitivities on the test split the clinical gates read."""
    if current is not None and str(current.version) == version:
        decision = {"alias": "champion", "reason": f"v{version} is already @champion (same training run); kept"}
        return decision, None, {"version": int(version), "data_version": info["data_version"]}
    reg, classes = params.register, list(params.base.classes)
    comparison, before = compare(reg, params.evaluate, best, test, raw, classes, reg.model_name, current)
    gates = (operating_point_failures(op, params.operating_point.promote_below_target, reg.min_specificity, reg.gate_on)
             + gate_failures(at_operating_point(chosen["test_report"]["classes"], op), reg.min_sensitivity,
                             reg.gate_on))
    newer, why = newer_data(client, reg.model_name, current, info["data_version"]) if comparison \
        else (False, "")
    decision = promotion_decision(gates, str(current.version) if current else None, comparison, newer,
                                  params.evaluate.select_by, reg.require_approval, why)
    return hold_for_shift(decision, shift_report, params.shift.on_shift), comparison, before


def run(params: Params, inputs: Inputs, outputs: Outputs) -> dict:
    from pipeline.model_card import render

    reg, classes, name = params.register, list(params.base.classes), params.register.model_name
    client = registry_client()
    tracking.setup(params.train.experiment)
    metrics = json.loads(inputs.metrics.read_text())
    best = metrics["best"]
    info = json.loads((Path(best["model"]).parent / "run.json").read_text())
    chosen = metrics["architectures"][best["architecture"]]
    test = read_split(inputs.split, "test")
    op = json.loads(inputs.operating_point.read_text())
    version = str(register_version(client, name, info, best, chosen["test"], inputs.export,
                                   tracking.params_digest(params), inputs.raw / test.path[0]))
    abandon_interrupted(client, name, version)
    log_reference(client, info["run_id"], inputs.split, inputs.manifest)  # what a later shift check compares with
    current = client.get_model_version_by_alias(name, "champion") if alias_version(client, name) else None
    decision, comparison, before = decide(client, params, info, chosen, best, test, inputs.raw, version, current, op,
                                          read_report(inputs.shift))
    try:
        event = apply(client, name, version, decision, str(current.version) if current else None,
                      info["data_version"], reg.lock_timeout_seconds)
    except (aliases.ChampionMoved, RegistryBusy) as err:
        raise StageError(f"{err}; rerun to decide against the current champion") from None
    lineage = {**info, "params_digest": client.get_model_version(name, version).tags.get("params_digest", "")}
    card = render(name, version, decision, metrics, inputs.reports, lineage, classes)
    outputs.card.write_text(card)
    client.update_model_version(name, version, description=card)
    client.log_text(info["run_id"], card, f"model_card_v{version}.md")
    report = {"model_name": name, "version": int(version), **decision, "moved": event.get("moved"),
              "rule": reg.rule, "select_by": params.evaluate.select_by, "comparison": comparison,
              "new": chosen["test"], "champion_before": before, "history_seq": event.get("seq"),
              "operating_point": {**{k: op[k] for k in ("threshold", "positive_classes", "target_sensitivity",
                                                        "confidence", "target_met", "guaranteed_sensitivity")},
                                  **{f"test_{k}": op["test"][k]["value"] for k in ("sensitivity", "specificity")}}}
    outputs.out.write_text(json.dumps(report, indent=2) + "\n")
    log_decision(client, info["parent_run_id"], report, [outputs.out, outputs.card])
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
    args = parser(__doc__, Inputs, Outputs).parse_args(argv)
    with one_line_errors("register"):
        try:
            r = run(load_params(args.params), paths(Inputs, args), paths(Outputs, args))
        except RegistryUnavailable as err:
            raise StageError(f"{err}; the registry was not changed") from None
    print(f"register: {r['model_name']} version {r['version']} is {r['alias']}: {r['reason']}")


if __name__ == "__main__":
    main()
