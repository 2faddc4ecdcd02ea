"""A model card (markdown) for each registered version: what it was trained on, how it was chosen,
how it scored on the test split with honest intervals, and why the registry did what it did."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.metrics import fmt, threshold_text


def span(ci) -> str:
    return "-" if ci is None or ci[0] is None else f"{ci[0]:.3f} to {ci[1]:.3f}"


def confusion_table(records: list[dict], classes: list[str]) -> str:
    matrix = np.zeros((len(classes), len(classes)), dtype=int)
    for r in records:
        matrix[classes.index(r["actual"]), classes.index(r["predicted"])] += 1
    head = "| actual \\ predicted | " + " | ".join(classes) + " |\n|---|" + "---|" * len(classes) + "\n"
    return head + "\n".join(f"| {c} | " + " | ".join(str(v) for v in row) + " |" for c, row in zip(classes, matrix))


def selection_table(metrics: dict) -> str:
    key = metrics["select_by"]
    rows = [f"| {name}{' (chosen)' if name == metrics['best']['architecture'] else ''} | {fmt(r['val'][key])} | "
            f"{fmt(r['test'][key])} | {span([r['test_report']['intervals'][key]['low'], r['test_report']['intervals'][key]['high']])} |"
            for name, r in metrics["architectures"].items()]
    return f"| architecture | validation {key} | test {key} | test interval |\n|---|---|---|---|\n" + "\n".join(rows)


def metric_rows(report: dict) -> str:
    return "\n".join(f"| {m} | {fmt(ci['estimate'])} | {span([ci['low'], ci['high']])} |"
                     for m, ci in report["intervals"].items())


def class_rows(report: dict, classes) -> str:
    rows = []
    for c in classes:
        r = report["classes"][c]
        rows.append(f"| {c} | {r['images']} ({r['groups']} groups) | {fmt(r['sensitivity'])} | "
                    f"{span(r['sensitivity_ci'])} | {fmt(r['specificity'])} | {span(r['specificity_ci'])} |")
    return "\n".join(rows)


def operating_point_section(op: dict, level: str) -> str:
    """What the clinic uses: the refer rule, its guarantee in words, and how it did on the test split."""
    t, a = op["test"], op["test_argmax"]
    positive = " + ".join(op["positive_classes"])
    guarantee = (f"sensitivity of at least {op['target_sensitivity']:g} with {op['confidence']:.0%} confidence "
                 f"(target met)" if op["target_met"] else
                 f"**target {op['target_sensitivity']:g} NOT met**: only sensitivity >= "
                 f"{op['guaranteed_sensitivity']:.3f} can be guaranteed with {op['confidence']:.0%} confidence")
    rows = [f"| sensitivity (positive: {positive}) | {fmt(t['sensitivity']['value'])} | {span(t['sensitivity']['interval'])} "
            f"| {fmt(a['sensitivity']['value'])} |",
            f"| specificity | {fmt(t['specificity']['value'])} | {span(t['specificity']['interval'])} | "
            f"{fmt(a['specificity']['value'])} |"]
    rows += [f"| sensitivity, {c} | {fmt(r['value'])} | {span(r['interval'])} | {fmt(a['per_class'][c]['value'])} |"
             for c, r in t["per_class"].items()]
    ece = op["ece_test"]
    return f"""## The clinical decision (operating point)
**Refer when P({positive}) >= {threshold_text(op['threshold'])}.** Chosen on the calibration split ({op['calibration_images']}
images, {op['positive_groups']} positive duplicate groups), which did not shape the weights, by Learn-then-Test with
exact binomial bounds by duplicate group: {guarantee}. {op['reason']}.
Probabilities are temperature-scaled (T = {op['temperature']:.3f}, fitted on the same split); ECE on the test split
{fmt(ece['before']['value'])} ({span(ece['before']['interval'])}) before, {fmt(ece['after']['value'])}
({span(ece['after']['interval'])}) after. The guarantee assumes new photos resemble the calibration photos.

| on the test split | at the operating point | {level} interval | argmax (for comparison) |
|---|---|---|---|
{chr(10).join(rows)}
"""


def cv_section(path: Path) -> str:
    """The cross-validated estimate beside the test split's, in words (pipeline/cv.py writes them)."""
    return f"## Test split and cross-validated estimate\n{json.loads(path.read_text())['text']}\n" if path.is_file() else ""


def render(name: str, version: str, decision: dict, metrics: dict, reports: Path, lineage: dict, classes) -> str:
    best = metrics["best"]
    chosen = metrics["architectures"][best["architecture"]]
    report, level = chosen["test_report"], f"{metrics['confidence']:.0%}"
    validation = json.loads((reports / "validation.json").read_text())
    dedup = json.loads((reports / "dedup.json").read_text())
    split = json.loads((reports / "split.json").read_text())
    records = json.loads((reports / "confusion" / f"{best['architecture']}.json").read_text())
    op_path = reports / "operating_point.json"
    decision_section = operating_point_section(json.loads(op_path.read_text()), level) if op_path.exists() else ""
    sizes = "\n".join(f"| {s} | " + " | ".join(str(split["per_split"].get(s, {}).get(c, 0)) for c in classes) + " |"
                      for s in ("train", "val", "calibration", "test"))
    method = report["intervals"][best["select_by"]]["method"]
    members = f", the probability average of {' + '.join(chosen['members'])}" if chosen.get("members") else ""
    return f"""# Model card: {name} version {version}

> **Research use only.** Not a medical device and not validated for clinical decisions.
> Every prediction must be reviewed by a qualified clinician.

- Architecture: {best['architecture']}{members} (MLflow run `{best['run_id']}`), chosen on the **validation** split by
  {best['select_by']}; the test split was used only to report and to compare with the champion.
- Registry decision: **{decision['alias']}**: {decision['reason']}
- Data version (md5 of `data/raw`): `{lineage['data_version']}`; git commit `{lineage['git_commit']}`;
  params digest `{lineage['params_digest']}`

## Intended use
Triage support for research on photographs labelled {', '.join(classes)}: flagging images
for specialist review. Not for diagnosis, not for populations, cameras or lesion types absent
from the training data.

## Data
{validation['files']} files received, {validation['ok']} usable, {validation['excluded']} excluded with a reason;
{validation.get('label_decisions_applied', 0)} clinician label decisions applied.
{dedup['exact_duplicate_images']} exact duplicate copies and {dedup['duplicate_groups']} duplicate groups found;
{dedup['conflict_images']} images in {dedup['conflict_groups']} label-conflict groups were quarantined.
Splits are by duplicate group (no near-duplicate crosses splits), stratified by class; content that
was ever trained on never enters validation, calibration or test:

| split | {' | '.join(classes)} |
|---|{'---|' * len(classes)}
{sizes}

{decision_section}
## How the architecture was chosen
{selection_table(metrics)}

{cv_section(reports / "cv.json")}
## Test metrics ({chosen['test']['test_images']} images)
| metric | estimate | {level} interval |
|---|---|---|
{metric_rows(report)}

Intervals: {method}

## Per class (test), exact intervals counting each duplicate group once
| class | images | sensitivity | {level} interval | specificity | {level} interval |
|---|---|---|---|---|---|
{class_rows(report, classes)}

"not measured": the class has no image in the test split, so nothing can be said about it.

## Confusion matrix (test)
{confusion_table(records, list(classes))}

## Limitations
Small dataset: read the intervals, not the point estimates. The argmax metrics above are of the model before
calibration (temperature scaling does not change the argmax; its ECE {fmt(chosen['test']['ece'])}). Performance
on other devices and populations is unknown.
"""
