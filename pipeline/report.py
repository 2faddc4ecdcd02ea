"""report: one self-contained page per pipeline run, reports/index.html (no network needed).

What was validated and excluded (with reasons), deduplicated and quarantined, flagged for label
review, how the split moved, the leaderboard with intervals, confusion matrices, Grad-CAM
examples, the registry decision with its reason, and the model card. Pictures are embedded;
the Data Docs and the review sheets are linked beside it. Logged to the pipeline's MLflow run.

Also `reports/summary.json`, the run in a dozen flat numbers: the only file dvc.yaml declares as
`metrics`, so `dvc metrics show` and `dvc metrics diff` print one readable line (the stages' full
JSON reports stay outputs beside it).
"""
from __future__ import annotations

import base64
import dataclasses
import json
from html import escape
from pathlib import Path

import pandas as pd

from pipeline.metrics import fmt, threshold_text
from pipeline.privacy import image_id
from pipeline.stage import parser


@dataclasses.dataclass(frozen=True)
class Inputs:
    reports: Path       # the stages' JSON reports, figures and the leaderboard
    manifest: Path
    conflicts: Path
    card: Path
    raw: Path           # the privacy check: where the originals are (and so the pixel cache)
    identifiers: Path   # the privacy check: identifying metadata values validate read (local-only)


@dataclasses.dataclass(frozen=True)
class Outputs:
    out: Path           # reports/index.html
    summary: Path       # reports/summary.json: dvc.yaml's only metrics file

CSS = """body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:0 1.5em 3em;color:#1d2330}
h1{margin:.8em 0 .2em}h2{border-bottom:2px solid #dde3ea;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccd3dc;padding:.25em .6em;text-align:left}
th{background:#eef2f6}td.n{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#5b6675}
.decision{padding:.8em 1em;border-radius:6px;border:2px solid}.champion{background:#e9f7ee;border-color:#3a9b5c}
.other{background:#fff6e5;border-color:#d29a22}img{max-width:100%;border:1px solid #ccd3dc}
.grid{display:flex;flex-wrap:wrap;gap:1em}.grid figure{margin:0;max-width:330px}figcaption{font-size:13px}
nav a{margin-right:1em}.card{border-left:4px solid #dde3ea;padding-left:1em}
.card h1{font-size:1.3em}.card h2{font-size:1.1em;border:none}"""


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def image(path: Path, alt: str) -> str:
    if not path.is_file():
        return f'<p class="muted">({escape(alt)}: not produced)</p>'
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def number(value) -> str:
    return fmt(value) if value is None or isinstance(value, float) else escape(str(value))


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    columns = columns or list(rows[0])
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(
        f'<td class="n">{number(r.get(c))}</td>' if isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool)
        else f"<td>{number(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def counts(mapping: dict, key: str, value: str) -> str:
    return table([{key: k, value: v} for k, v in mapping.items()])


def decision_section(registry: dict) -> str:
    if not registry:
        return '<p class="muted">register has not run</p>'
    c = registry.get("comparison") or {}
    kind = "champion" if registry.get("alias") == "champion" else "other"
    rows = [{"": "new model", "value": c.get("new")}, {"": "champion", "value": c.get("old")},
            {"": "difference", "value": c.get("difference")},
            {"": f"{c.get('confidence', 0):.0%} interval", "value": f"{number(c.get('lower'))} to {number(c.get('upper'))}"},
            {"": "one-sided lower bound", "value": c.get("one_sided_lower")}] if c else []
    before = registry.get("champion_before") or {}
    return (f'<div class="decision {kind}"><b>{escape(registry["model_name"])} v{registry["version"]} '
            f'&rarr; @{escape(registry["alias"])}</b><br>{escape(registry["reason"])}</div>'
            f'<p>Rule: <b>{escape(str(registry.get("rule")))}</b> on test {escape(str(registry.get("select_by")))}; '
            f'champion before: {("v" + str(before["version"])) if before else "none"}.</p>'
            + (table(rows) if rows else "<p>No champion to compare with.</p>")
            + (f'<p class="muted">{escape(c["method"])}</p>' if c.get("method") else ""))


def operating_point_section(op: dict, figure: Path) -> str:
    """The refer rule the model ships with, its guarantee, and how it did on the test split."""
    if not op:
        return '<p class="muted">export has not run</p>'
    t, a = op["test"], op["test_argmax"]
    verdict = (f"sensitivity &ge; {op['target_sensitivity']:g} guaranteed with {op['confidence']:.0%} confidence"
               if op["target_met"] else
               f"<b>target {op['target_sensitivity']:g} not met</b>: sensitivity &ge; "
               f"{op['guaranteed_sensitivity']:.3f} guaranteed with {op['confidence']:.0%} confidence")
    rows = [{"": f"sensitivity ({' + '.join(op['positive_classes'])})", "at the operating point": t["sensitivity"]["value"],
             "interval": span(t["sensitivity"]["interval"]), "argmax": a["sensitivity"]["value"]},
            {"": "specificity", "at the operating point": t["specificity"]["value"],
             "interval": span(t["specificity"]["interval"]), "argmax": a["specificity"]["value"]}]
    rows += [{"": f"sensitivity, {c}", "at the operating point": r["value"], "interval": span(r["interval"]),
              "argmax": a["per_class"][c]["value"]} for c, r in t["per_class"].items()]
    return (f'<div class="decision other"><b>Refer when P({escape(" + ".join(op["positive_classes"]))}) &ge; '
            f'{threshold_text(op["threshold"])}</b>: {verdict}.<br>{escape(op["reason"])}.</div>'
            f"<p>Chosen on the calibration split ({op['calibration_images']} images, {op['positive_groups']} positive "
            f"duplicate groups); probabilities temperature-scaled (T = {op['temperature']:.3f}). ECE on the test "
            f"split {number(op['ece_test']['before']['value'])} before, {number(op['ece_test']['after']['value'])} "
            f"after calibration. On the test split, exact intervals by duplicate group:</p>" + table(rows)
            + image(figure, "ROC with the operating point; reliability before and after calibration"))


def shift_section(shift: dict, sheet: Path) -> str:
    """Whether new images look like the champion's reference images, where they differ, the most atypical ones."""
    if not shift:
        return '<p class="muted">the shift check has not run</p>'
    kind = "other" if shift.get("shifted") else "champion"
    rows = [{"": f"{kind_.split('_')[1]} {name}", "new": r.get("new"), "reference": r.get("reference"),
             "p (both tests)": r.get("p_value"), "Holm-adjusted": r.get("p_adjusted"),
             "classifier AUC": (r.get("classifier") or {}).get("auc"),
             "compared with": r.get("against", r.get("reason"))}
            for kind_ in ("per_class", "per_camera") for name, r in shift.get(kind_, {}).items()]
    then = {"approve": "a model that would become champion waits for a clinician's approval",
            "hold": "a model that would become champion stays challenger"}.get(shift.get("on_shift"), "")
    return (f'<div class="decision {kind}"><b>{escape(shift.get("summary", ""))}</b></div>'
            f"<p>The operating point's guarantee holds for photos like the ones the champion was checked on. New "
            f"images (content the champion's reference lacks) are compared with its reference images in its embedding "
            f"space: a kernel test (MMD) and a classifier test (cross-validated AUC), permutation p-values by duplicate "
            f"group, Bonferroni-combined. When a shift is found, {then} (<code>shift.on_shift</code>).</p>"
            + (table(rows) if rows else "") + image(sheet, "the most atypical new images"))


def span(interval) -> str:
    return "-" if not interval or interval[0] is None else f"{interval[0]:.3f} to {interval[1]:.3f}"


def leaderboard_section(board: pd.DataFrame, select_by: str) -> str:
    rows = []
    for r in board.to_dict("records"):
        rows.append({"architecture": r["architecture"], "chosen": "yes" if r["chosen"] else "",
                     f"validation {select_by}": r.get(f"val_{select_by}"), f"test {select_by}": r.get(f"test_{select_by}"),
                     "test interval": f"{number(r.get(f'test_{select_by}_low'))} to {number(r.get(f'test_{select_by}_high'))}",
                     "test ROC AUC": r.get("test_roc_auc"),
                     **{k.replace("test_sensitivity_", "test sensitivity "): v for k, v in r.items()
                        if k.startswith("test_sensitivity_")}})
    return ("<p>Chosen on the <b>validation</b> split; the test split is reported once per architecture. "
            "Intervals resample duplicate groups.</p>" + table(rows))


def gradcam_section(folder: Path) -> str:
    examples = json.loads((folder / "examples.json").read_text()) if (folder / "examples.json").is_file() else []
    figures = "".join(f"<figure>{image(folder / e['png'], e['id'])}<figcaption>image {escape(e['id'])}: "
                      f"actual <b>{escape(e['label'])}</b>, predicted <b>{escape(e['predicted'])}</b> "
                      f"({e['confidence']:.2f}, {escape(e['outcome'])})</figcaption></figure>" for e in examples)
    return f'<div class="grid">{figures}</div>' if figures else '<p class="muted">no examples</p>'


def render(reports: Path, manifest: Path, conflicts: Path, card: Path) -> str:
    import markdown

    validation, dedup, split = (read_json(reports / f"{n}.json") for n in ("validation", "dedup", "split"))
    review, metrics, registry = (read_json(reports / f"{n}.json") for n in ("label_review", "metrics", "registry"))
    op, shift = read_json(reports / "operating_point.json"), read_json(reports / "shift.json")
    files = pd.read_csv(manifest, keep_default_na=False) if manifest.is_file() else pd.DataFrame(columns=["status"])
    # images by ID, never by file name: this page goes to MLflow (the manifest, local, maps ID -> path)
    excluded = [{"image": image_id(r.sha256), "reason": r.reason} for r in files[files.status == "excluded"].itertuples()]
    sheet = pd.read_csv(conflicts, keep_default_na=False) if conflicts.is_file() else pd.DataFrame(columns=["sha256"])
    quarantine = sheet.assign(image=sheet.sha256.map(image_id)).to_dict("records")
    board = pd.read_csv(reports / "leaderboard.csv") if (reports / "leaderboard.csv").is_file() else pd.DataFrame()
    select_by = metrics.get("select_by", "balanced_accuracy")
    per_split = [{"split": s, **v} for s, v in split.get("per_split", {}).items()]
    confusions = "".join(f"<figure>{image(p, p.stem)}<figcaption>{escape(p.stem)}</figcaption></figure>"
                         for p in sorted((reports / "evaluate").glob("*_confusion.png")))
    version = str(validation.get("data_version", "untracked")).removesuffix(".dir")
    sections = [
        ("decision", "Registry decision", decision_section(registry)),
        ("operating_point", "The clinical decision (operating point)",
         operating_point_section(op, reports / "operating_point.png")),
        ("shift", "Shift check (new images vs the champion's reference)",
         shift_section(shift, reports / "shift_atypical.png")),
        ("leaderboard", "Leaderboard", leaderboard_section(board, select_by) if not board.empty else "none"),
        ("cv", "Test split and cross-validated estimate", f"<p>{escape(read_json(reports / 'cv.json').get('text', 'none'))}</p>"),
        ("confusion", "Confusion matrices (test split)", f'<div class="grid">{confusions}</div>'),
        ("gradcam", "Where the chosen model looked (Grad-CAM, test images)", gradcam_section(reports / "evaluate" / "gradcam")),
        ("validation", "Validation",
         f"<p>{validation.get('files', 0)} files: {validation.get('ok', 0)} usable, {validation.get('excluded', 0)} "
         f"excluded. Suite {'passed' if validation.get('suite_success') else 'FAILED'}. "
         f'<a href="validation/index.html">Data Docs</a></p>' + counts(validation.get("per_class", {}), "class", "usable images")
         + "<h3>Excluded files, with reasons</h3><p class=\"muted\">Images by ID (the start of their sha256); "
           "the manifest (data/interim/manifest.csv, local) gives each one's file.</p>" + table(excluded)),
        ("dedup", "Duplicates and quarantine",
         table([{"": k.replace("_", " "), "value": v} for k, v in dedup.items()])
         + "<h3>Quarantined label conflicts</h3>" + table(quarantine, ["status", "group_id", "image", "folder_label",
                                                                     "decision", "correct_label"])
         + image(reports / "dedup_groups.png", "duplicate groups")),
        ("labels", "Label review",
         f"<p>{review.get('flagged', 0)} of {review.get('images_reviewed', 0)} images flagged for a second look "
         f'(<a href="label_issues.csv">label_issues.csv</a>). {escape(review.get("method", ""))}</p>'
         + image(reports / "label_issues.png", "flagged images")),
        ("split", "Split",
         f"<p>{split.get('kept_from_ledger', 0)} images kept their earlier split, {split.get('newly_assigned', 0)} "
         f"newly assigned, {split.get('moved', 0)} moved; left test: {len(split.get('left_test', []))}, "
         f"left val: {len(split.get('left_val', []))}, left calibration: {len(split.get('left_calibration', []))}.</p>" + table(per_split)),
        ("card", "Model card", f'<div class="card">{markdown.markdown(card.read_text().replace("<", "&lt;"), extensions=["tables"])}</div>'
                                if card.is_file() else "none"),
    ]
    nav = "".join(f'<a href="#{key}">{escape(title.split(" (")[0])}</a>' for key, title, _ in sections)
    body = "".join(f'<h2 id="{key}">{escape(title)}</h2>{html}' for key, title, html in sections)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Pipeline run, data {version[:8]}</title>'
            f"<style>{CSS}</style></head><body><h1>Pipeline run</h1>"
            f'<p class="muted">data version {escape(version)} &middot; chosen {escape(str(metrics.get("best", {}).get("architecture")))} '
            f"&middot; MLflow run of the chosen model {escape(str(metrics.get('best', {}).get('run_id')))}</p>"
            f"<nav>{nav}</nav>{body}</body></html>")


def log_to_mlflow(page: Path, metrics: dict) -> None:
    from mlflow.tracking import MlflowClient

    from pipeline import tracking

    tracking.tracking_uri()
    info = json.loads((Path(metrics["best"]["model"]).parent / "run.json").read_text())
    MlflowClient().log_artifact(info["parent_run_id"], str(page), artifact_path="report")


def summary(reports: Path) -> dict:
    """The run in flat numbers a person reads in one line of `dvc metrics show` (keys sorted there)."""
    validation, metrics, registry = (read_json(reports / f"{n}.json") for n in ("validation", "metrics", "registry"))
    best = metrics.get("best", {})
    test = metrics.get("architectures", {}).get(best.get("architecture"), {}).get("test", {})
    interval = best.get("test_interval") or {}
    rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in {
        "val": best.get("val_value"), "test": best.get("test_value"),
        "test_low": interval.get("low"), "test_high": interval.get("high"),
        **{"sens_" + k.removeprefix("sensitivity_"): v for k, v in test.items() if k.startswith("sensitivity_")},
    }.items()}
    op, cv = read_json(reports / "operating_point.json"), read_json(reports / "cv.json")
    if cv.get("ran"):  # the cross-validated estimate of the chosen procedure (pipeline/cv.py), beside the test split's
        rounded.update({k: round(cv["interval"][key], 3) for k, key in (("cv", "estimate"), ("cv_low", "low"),
                                                                         ("cv_high", "high"))})
    rounded.update({k: round(v, 3) for k, v in (("refer_threshold", op.get("threshold")),
                                                  ("refer_guaranteed", op.get("guaranteed_sensitivity")))
                    if v is not None})
    return {"data": str(validation.get("data_version", "untracked")).removesuffix(".dir")[:8],
            "images": validation.get("ok"), "excluded": validation.get("excluded"),
            "chosen": best.get("architecture"), "select_by": metrics.get("select_by"), **rounded,
            "alias": registry.get("alias"), "version": registry.get("version")}


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, Inputs, Outputs).parse_args(argv)
    args.out.write_text(render(args.reports, args.manifest, args.conflicts, args.card), encoding="utf-8")
    args.summary.write_text(json.dumps(summary(args.reports), indent=1) + "\n", encoding="utf-8")
    from pipeline import privacy, project

    try:  # fail closed: nothing goes to MLflow from a run that left an identifier outside data/raw
        checked = privacy.run_check(project.root(), args.raw, args.manifest, args.identifiers)
    except privacy.PrivacyLeak as err:
        raise SystemExit(f"report: {err}") from None
    print(f"report: privacy check passed: {checked} files outside {args.raw} re-read; no metadata in images, "
          f"no original name, path or metadata value in anything that leaves")
    metrics = read_json(args.reports / "metrics.json")
    if metrics:
        log_to_mlflow(args.out, metrics)
    print(f"report: {args.out} ({args.out.stat().st_size / 1e6:.1f} MB, self-contained); "
          f"also on the pipeline's MLflow run under report/; {args.summary} for `dvc metrics show`")


if __name__ == "__main__":
    main()
