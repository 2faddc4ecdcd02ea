"""The review queue: open label conflicts (dedup's quarantine sheet) and suspected label errors
(label_review's list), most suspicious first, with the clinicians' answers written through
`pipeline.labels.record`, the one writer of data/labels/corrections.csv. Read from the files the
stages write (paths from dvc.yaml), so the queue is what the last run left; an answer counts as
reviewed at once (by content, as validate applies it) and the next run applies it.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline import labels, project

KEEP = "keep"  # "the label is right": recorded as a decision for the label it has


@dataclass(frozen=True)
class Paths:
    root: Path
    raw: Path
    corrections: Path
    conflicts: Path
    label_issues: Path

    @classmethod
    def of(cls, root: Path) -> "Paths":
        flags = {s: project.stage_flags(s, root) for s in ("validate", "dedup", "label_review")}
        return cls(root, root / flags["validate"]["raw"], root / flags["validate"]["corrections"],
                   root / flags["dedup"]["quarantine"] / "conflicts.csv", root / flags["label_review"]["out"])


@dataclass
class Image:
    sha256: str
    path: str      # under data/raw; shown only when clinic.show_file_names
    label: str     # the label it carries now


@dataclass
class Item:
    key: str       # c-<group> (conflict) or l-<sha256> (suspected label error)
    kind: str      # conflict | label_issue
    group_id: str
    images: list[Image]
    probabilities: dict[str, float] | None = None
    suggested: str = ""
    decided: dict[str, str] = field(default_factory=dict)   # sha256 -> the recorded decision

    @property
    def reviewed(self) -> bool:  # every content decided (exact copies share one)
        return all(i.sha256 in self.decided for i in self.images)

    @property
    def labels(self) -> list[str]:
        return sorted({i.label for i in self.images})


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False) if path.is_file() else pd.DataFrame()


def conflict_items(sheet: pd.DataFrame) -> list[Item]:
    """One item per quarantined group (open or resolved by an earlier run)."""
    if sheet.empty:
        return []
    return [Item(f"c-{group}", "conflict", group,
                 [Image(r.sha256, r.path, r.current_label) for r in rows.itertuples()])
            for group, rows in sheet.groupby("group_id", sort=True)]


def issue_items(issues: pd.DataFrame, classes) -> list[Item]:
    """One item per flagged image, in label_review's rank (least likely label first)."""
    if issues.empty:
        return []
    issues = issues.sort_values("rank", key=lambda s: s.astype(int))
    return [Item(f"l-{r['sha256']}", "label_issue", r["group_id"], [Image(r["sha256"], r["path"], r["label"])],
                 {c: float(r[f"p_{c}"]) for c in classes if r.get(f"p_{c}", "") != ""}, r["suggested_label"])
            for r in issues.to_dict("records")]


_LOADED: dict[Paths, tuple] = {}  # the last queue read per project, with the file stamps it was read at


def load_queue(paths: Paths, classes) -> list[Item]:
    """Conflicts first (certain disagreements), then suspected errors by rank; each with its decisions.
    Read again only when one of the three files changed (every preview and page asks)."""
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else None
                  for p in (paths.corrections, paths.conflicts, paths.label_issues))
    if paths in _LOADED and _LOADED[paths][0] == (stamp, tuple(classes)):
        return _LOADED[paths][1]
    items = read_queue(paths, classes)
    _LOADED[paths] = ((stamp, tuple(classes)), items)
    return items


def read_queue(paths: Paths, classes) -> list[Item]:
    decided = labels.load(paths.corrections, classes).set_index("sha256")
    items = conflict_items(_read(paths.conflicts)) + issue_items(_read(paths.label_issues), classes)
    for item in items:
        item.decided = {i.sha256: f"{d.correct_label} by {d.who} on {d.when}" for i in item.images
                        if i.sha256 in decided.index for d in [decided.loc[i.sha256]]}
    return items


def select(items: list[Item], cls: str = "", status: str = "open") -> list[Item]:
    return [i for i in items if (not cls or cls in i.labels or cls == i.suggested)
            and (status == "all" or (status == "reviewed") == i.reviewed)]


def answer_rows(item: Item, answer: str, who: str, classes, note: str = "") -> list[dict]:
    """The corrections rows of one answer: a class or `exclude` for every image of the item, or, for a
    suspected error, `keep` (the label is right)."""
    allowed = list(classes) + [labels.EXCLUDE] + ([KEEP] if item.kind == "label_issue" else [])
    if answer not in allowed:
        raise labels.CorrectionsError(f"answer {answer!r} is not one of {', '.join(allowed)}")
    today = datetime.date.today().isoformat()
    where = f"conflict group {item.group_id}" if item.kind == "conflict" else "suspected label error"
    text = f"clinic's page, {where}" + (f": {note}" if note else "")
    contents = {i.sha256: i.label for i in item.images}  # exact copies share one content: one decision
    return [{"sha256": sha, "correct_label": label if answer == KEEP else answer, "who": who,
             "when": today, "note": text} for sha, label in contents.items()]


def record_answer(paths: Paths, item: Item, answer: str, who: str, classes, note: str = "") -> int:
    return labels.record(paths.corrections, answer_rows(item, answer, who, classes, note), classes)
