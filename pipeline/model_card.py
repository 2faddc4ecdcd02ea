"""A model card (markdown) for each registered version: what it was trained on and how it scored."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def confusion_table(records: list[dict], classes: list[str]) -> str:
    matrix = np.zeros((len(classes), len(classes)), dtype=int)
    for r in records:
        matrix[classes.index(r["actual"]), classes.index(r["predicted"])] += 1
    head = "| actual \\ predicted | " + " | ".join(classes) + " |\n|---|" + "---|" * len(classes) + "\n"
    return head + "\n".join(f"| {c} | " + " | ".join(str(v) for v in row) + " |" for c, row in zip(classes, matrix))


def render(name: str, version: str, decision: dict, metrics: dict, reports: Path, lineage: dict, classes) -> str:
    best = metrics["best"]
    scores = metrics["architectures"][best["architecture"]]
    validation = json.loads((reports / "validation.json").read_text())
    dedup = json.loads((reports / "dedup.json").read_text())
    split = json.loads((reports / "split.json").read_text())
    records = json.loads((reports / "confusion" / f"{best['architecture']}.json").read_text())
    rows = "\n".join(f"| {k} | {scores[k]:.3f} |" for k in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "ece")
                     if k in scores) + "\n" + "\n".join(
        f"| recall (sensitivity) {c} | {scores[f'recall_{c}']:.3f} |" for c in classes)
    sizes = "\n".join(f"| {s} | " + " | ".join(str(split["per_split"][s][c]) for c in classes) + " |"
                      for s in ("train", "val", "test"))
    return f"""# Model card: {name} version {version}

> **Research use only.** Not a medical device and not validated for clinical decisions.
> Every prediction must be reviewed by a qualified clinician.

- Architecture: {best['architecture']} (MLflow run `{best['run_id']}`)
- Registry decision: **{decision['alias']}**: {decision['reason']}
- Data version (md5 of `data/raw`): `{lineage['data_version']}`; git commit `{lineage['git_commit']}`;
  params digest `{lineage['params_digest']}`

## Intended use
Triage support for research on oral photographs labelled {', '.join(classes)}: flagging images
for specialist review. Not for diagnosis, not for populations, cameras or lesion types absent
from the training data.

## Data
{validation['files']} files received, {validation['ok']} usable, {validation['excluded']} excluded with a reason.
{dedup['exact_duplicate_images']} exact duplicate copies and {dedup['duplicate_groups']} duplicate groups found;
{dedup['conflict_images']} images in {dedup['conflict_groups']} label-conflict groups were quarantined.
Splits are by duplicate group (no near-duplicate crosses splits), stratified by class:

| split | {' | '.join(classes)} |
|---|{'---|' * len(classes)}
{sizes}

## Test metrics ({scores['test_images']} images)
| metric | value |
|---|---|
{rows}

{best['select_by']}: {best['value']:.3f}, 95% bootstrap interval {best['ci95'][0]:.3f} to {best['ci95'][1]:.3f}.

## Confusion matrix (test)
{confusion_table(records, list(classes))}

## Limitations
Small dataset; intervals above are wide for small test sets. Calibration (ECE above) was
measured on the test split only. Performance on other devices and populations is unknown.
"""
