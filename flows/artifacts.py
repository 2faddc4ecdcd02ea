"""What a retrain run did, as Prefect artifacts: the Artifacts tab answers "what did last night's run do?".

A markdown summary of the decision (version, alias, the rule and its numbers, data version, the
shift check) and the leaderboard as a table, both read from the files the stages wrote (nothing recomputed here).
Runs that trained nothing get a one-line summary saying why.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipeline.metrics import fmt, threshold_text


def shift_line(reports: Path) -> str:
    """The shift check in one line, and whether its contact sheet of the most atypical new images exists."""
    shift = json.loads((reports / "shift.json").read_text()) if (reports / "shift.json").is_file() else None
    if shift is None:
        return ""
    flag = "⚠ " if shift.get("shifted") else ""
    sheet = ("contact sheet of the most atypical new images: `reports/shift_atypical.png`"
             if (reports / "shift_atypical.png").is_file() else "no contact sheet was written")
    return f"**Shift check:** {flag}{shift.get('summary', '')} · {sheet}"


def decision_markdown(registry: dict, metrics: dict, version: str, outcome: dict, shift: str = "") -> str:
    c, best = registry.get("comparison") or {}, metrics.get("best", {})
    lines = [f"## {registry['model_name']} v{registry['version']} → @{registry['alias']}", "",
             f"**Data version** `{version[:8]}` · **chosen** {best.get('architecture')} on validation "
             f"{metrics.get('select_by')} · **rule** {registry.get('rule')} on test {registry.get('select_by')}", "",
             f"**Why:** {registry['reason']}", ""]
    op = registry.get("operating_point")
    if op:
        guarantee = (f"sensitivity ≥ {op['target_sensitivity']:g} guaranteed" if op["target_met"] else
                     f"target {op['target_sensitivity']:g} NOT met: sensitivity ≥ {op['guaranteed_sensitivity']:.3f} "
                     "guaranteed")
        lines += [f"**Decision shipped:** refer when P({' + '.join(op['positive_classes'])}) ≥ {threshold_text(op['threshold'])}"
                  f" ({guarantee} at {op['confidence']:.0%}); on test sensitivity {fmt(op['test_sensitivity'])}, "
                  f"specificity {fmt(op['test_specificity'])}", ""]
    if shift:
        lines += [shift, ""]
    if c:
        lines += ["| | value |", "|---|---|", f"| new model | {fmt(c.get('new'))} |",
                  f"| champion before | {fmt(c.get('old'))} |", f"| difference | {fmt(c.get('difference'))} |",
                  f"| {c.get('confidence', 0):.0%} interval | {fmt(c.get('lower'))} to {fmt(c.get('upper'))} |",
                  f"| one-sided lower bound | {fmt(c.get('one_sided_lower'))} |", ""]
    if not outcome["message"].startswith(f"model v{registry['version']} is "):  # e.g. an approval was asked for
        lines += [f"Outcome: {outcome['message']}", ""]
    lines += ["Full report: `reports/index.html` in the workspace, and on the pipeline's MLflow run under `report/`."]
    return "\n".join(lines)


def leaderboard_rows(board: pd.DataFrame) -> list[dict]:
    rows = board.astype(object).where(board.notna(), None).to_dict("records")
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]


def publish(root: Path, outcome: dict) -> None:
    """Attach the run's story to the current flow run (no-op outside one)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    version = outcome.get("data_version", "")
    if outcome.get("status") != "trained":
        title = "Run failed: the registry was not changed" if outcome["status"] == "failed" else "Nothing trained"
        create_markdown_artifact(key="retrain-decision", markdown=f"## {title}\n\n{outcome['message']}",
                                 description=f"retrain: {outcome['status']}")
        return
    registry = json.loads((root / "reports" / "registry.json").read_text())
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    markdown = decision_markdown(registry, metrics, version, outcome, shift_line(root / "reports"))
    create_markdown_artifact(key="retrain-decision", markdown=markdown,
                             description=f"v{registry['version']} @{registry['alias']}, data {version[:8]}")
    create_table_artifact(key="leaderboard", table=leaderboard_rows(pd.read_csv(root / "reports" / "leaderboard.csv")),
                          description="validation chooses, test reports (intervals by duplicate group)")
