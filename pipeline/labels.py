"""Label corrections: clinicians' decisions, kept in a git-tracked file people own.

`data/labels/corrections.csv` holds one decision per image content (sha256): the correct
label (or `exclude`), who decided, when, and a note. `validate` applies it by content, so a
decision follows the image whatever its file name or folder, and `data/raw` is never touched.
No stage writes this file; people do, by hand or with this module's commands:

    python -m pipeline.labels add SHA256 cancer --who "dr. ana" --note "biopsy 2026-03"
    python -m pipeline.labels import data/quarantine/conflicts/conflicts.csv --who "dr. ana"

`import` copies every filled `correct_label` of a review sheet (the quarantine sheet dedup
writes, or the label-review list) into the corrections file. A later row for the same
content replaces an earlier one; git keeps the history.
"""
from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import pandas as pd

COLUMNS = ["sha256", "correct_label", "who", "when", "note"]
EXCLUDE = "exclude"
DEFAULT_PATH = Path("data/labels/corrections.csv")


class CorrectionsError(ValueError):
    """The corrections file cannot be applied; the message names the row."""


def load(path: Path | None, classes) -> pd.DataFrame:
    """The decisions, one per content (the last row wins), checked against the classes."""
    if path is None or not path.is_file():
        return pd.DataFrame(columns=COLUMNS)
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise CorrectionsError(f"{path}: missing column {missing[0]} (columns: {', '.join(COLUMNS)})")
    allowed = set(classes) | {EXCLUDE}
    for i, row in table.iterrows():
        if len(row.sha256) != 64:
            raise CorrectionsError(f"{path} row {i + 2}: sha256 {row.sha256!r} is not a sha256")
        if row.correct_label not in allowed:
            raise CorrectionsError(f"{path} row {i + 2}: correct_label {row.correct_label!r} is not one of "
                                   f"{', '.join(sorted(allowed))}")
    return table[COLUMNS].drop_duplicates("sha256", keep="last").reset_index(drop=True)


def apply(manifest: pd.DataFrame, corrections: pd.DataFrame) -> pd.DataFrame:
    """The manifest with decisions applied by content: `label` becomes the decided label,
    `folder_label` keeps the folder's, `decision` says who decided what and when."""
    out = manifest.copy()
    out["folder_label"] = out.label
    out["decision"] = ""
    decided = corrections.set_index("sha256")
    hit = out.sha256.isin(decided.index) & (out.status == "ok")
    for i in out.index[hit]:
        d = decided.loc[out.at[i, "sha256"]]
        note = f"{d.correct_label} by {d.who or 'unknown'} on {d.when or 'unknown date'}" + (f": {d.note}" if d.note else "")
        out.at[i, "decision"] = note
        if d.correct_label == EXCLUDE:
            out.loc[i, ["status", "reason"]] = ["excluded", f"excluded on label review ({note})"]
        else:
            out.at[i, "label"] = d.correct_label
    return out


def append(path: Path, rows: list[dict]) -> int:
    """Add decisions to the corrections file (created with its header when absent)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(path, dtype=str, keep_default_na=False) if path.is_file() else pd.DataFrame(columns=COLUMNS)
    table = pd.concat([table, pd.DataFrame(rows, columns=COLUMNS)], ignore_index=True)
    table.to_csv(path, index=False)
    return len(rows)


def record(path: Path, rows: list[dict], classes) -> int:
    """Append decisions and check the file still loads; on a bad row restore it and raise CorrectionsError.
    The one writer of the corrections file (this module's commands and the clinic's page)."""
    before = path.read_bytes() if path.is_file() else None
    append(path, rows)
    try:
        load(path, classes)
    except CorrectionsError:  # never leave a file the next run cannot read
        path.write_bytes(before) if before is not None else path.unlink()
        raise
    return len(rows)


def from_sheet(sheet: Path, who: str, today: str) -> list[dict]:
    """Filled `correct_label` cells of a review sheet (columns sha256, correct_label[, note])."""
    table = pd.read_csv(sheet, dtype=str, keep_default_na=False)
    if "sha256" not in table.columns or "correct_label" not in table.columns:
        raise CorrectionsError(f"{sheet}: a review sheet needs sha256 and correct_label columns")
    filled = table[table.correct_label.str.strip() != ""]
    return [{"sha256": r.sha256, "correct_label": r.correct_label.strip(), "who": who, "when": today,
             "note": getattr(r, "note", "") or f"from {sheet.name}"} for r in filled.itertuples()]


def main(argv: list[str] | None = None) -> None:
    from pipeline.params import load_params

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--file", type=Path, default=DEFAULT_PATH)
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="record one decision")
    add.add_argument("sha256")
    add.add_argument("label", help=f"a class from params, or '{EXCLUDE}'")
    sheet = sub.add_parser("import", help="record every filled correct_label of a review sheet")
    sheet.add_argument("sheet", type=Path)
    for p in (add, sheet):
        p.add_argument("--who", required=True, help="who decided (name or initials)")
        p.add_argument("--note", default="")
    args = parser.parse_args(argv)
    today = datetime.date.today().isoformat()
    if args.command == "add":
        rows = [{"sha256": args.sha256, "correct_label": args.label, "who": args.who, "when": today, "note": args.note}]
    else:
        rows = from_sheet(args.sheet, args.who, today)
    try:
        record(args.file, rows, load_params(args.params).base.classes)
    except CorrectionsError as err:
        raise SystemExit(f"labels: {err}; nothing recorded") from None
    print(f"labels: recorded {len(rows)} decision(s) in {args.file}; the next run applies them")


if __name__ == "__main__":
    main()
