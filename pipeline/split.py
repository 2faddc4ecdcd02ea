"""split: train/val/calibration/test by duplicate group, stratified by class, with a ledger that never forgets.

`calibration` is held out like val and test: it did not shape the weights (val drives early
stopping and chooses the architecture), so export fits the temperature and chooses the refer
threshold there, and the threshold's guarantee holds (pipeline/operating_point.py).

A group never straddles two splits. The ledger (`ledger.csv`, persisted across runs and data
versions) remembers, for every image content (sha256) ever assigned, the most training-ward
split it ever had, and its perceptual hash (`perceptual_hash`: the kind and size dedup chose and
the value, "dhash:8:9f3a..."; older tables call the column `phash`, renamed on read). Its rules:
- content that was ever in training, or a near-duplicate of it (within `dedup.max_distance`),
  is never placed in val or test again, whatever its path, label or group now;
- held-out content keeps its split (so champion and challenger meet the same test images);
- held-out images may move into training when new images merge their group with a training
  group (never the reverse); held-out splits merged go to the first of val, calibration, test.
  Every move is reported, with why.
- a ledger from before the calibration split shares its validation groups out again between
  validation and calibration, once (train and test never change for it).
Content leaving the data (a quarantined conflict, a deleted copy) stays in the ledger, so it
cannot come back as "new" into a held-out split. New groups go, largest first, to the split
their class lacks most (seeded order among equals).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.console import quiet
from pipeline.hamming import near_pairs
from pipeline.params import Params, Split, load_params
from pipeline.stage import one_line_errors, parser, paths

SPLITS = ("train", "val", "calibration", "test")  # training-ward first
LEDGER = ["sha256", "perceptual_hash", "split", "first_split", "path", "label"]
OLD_HASH_COLUMN = "phash"  # the name of perceptual_hash in groups.csv and ledger.csv before it held other kinds


@dataclass(frozen=True)
class Inputs:
    groups: Path


@dataclass(frozen=True)
class Outputs:
    out: Path           # split.csv: the table every later stage reads (pipeline/tables.py)
    ledger: Path        # every assignment ever made, by content (persisted)
    report: Path


def training_rows(groups: pd.DataFrame) -> pd.DataFrame:
    """The images a model may see: no label conflicts and one copy of each exact duplicate."""
    keep = ~groups.conflict.astype(bool) & (groups.duplicate_of.fillna("") == "")
    cols = [c for c in ("path", "label", "group_id", "sha256", "perceptual_hash") if c in groups]
    return groups.loc[keep, cols].sort_values("path").reset_index(drop=True)


def ratios(params: Split) -> dict[str, float]:
    return {"train": 1.0 - params.val - params.calibration - params.test, "val": params.val,
            "calibration": params.calibration, "test": params.test}


def parse_hash(value: str) -> tuple[str, int] | None:
    """'phash:8:abc' -> ('phash:8', 0xabc); None when missing."""
    kind, _, digits = str(value).rpartition(":")
    return (kind, int(digits, 16)) if kind and digits else None


def near_trained(rows: pd.DataFrame, ledger: pd.DataFrame, max_distance: int) -> pd.Series:
    """For each row: the path-free reason it must train (near-duplicate of ever-trained content), or ''."""
    reasons = pd.Series("", index=rows.index)
    trained = ledger[ledger.split == "train"]
    mine, theirs = rows.perceptual_hash.map(parse_hash), trained.perceptual_hash.map(parse_hash)
    for kind in {h[0] for h in mine.dropna()}:
        a = [(i, h[1]) for i, h in mine.items() if h and h[0] == kind]
        b = [(sha, h[1]) for sha, h in zip(trained.sha256, theirs) if h and h[0] == kind]
        if not a or not b:
            continue
        values = np.array([h for _, h in a] + [h for _, h in b], dtype=np.uint64)
        bits = int(kind.split(":")[1]) ** 2
        for i, j in near_pairs(values, max_distance, bits):
            if i < len(a) <= j:  # a current image close to content that was trained on
                distance = int(np.bitwise_count(values[i] ^ values[j]))
                reasons[a[i][0]] = f"near-duplicate (distance {distance}) of content trained on before ({b[j - len(a)][0][:12]})"
    return reasons


def keep_previous(rows: pd.DataFrame, ledger: pd.DataFrame, max_distance: int) -> tuple[dict, pd.Series]:
    """group -> split for every group the ledger constrains, and each row's reason to train."""
    known = dict(zip(ledger.sha256, ledger.split))
    reason = (near_trained(rows, ledger, max_distance) if "perceptual_hash" in rows
              else pd.Series("", index=rows.index))
    reason[rows.sha256.map(known).eq("train")] = "was in training before"
    placed = {}
    for gid, members in rows.groupby("group_id"):
        earlier = {known[s] for s in members.sha256 if s in known}
        if (reason[members.index] != "").any() or "train" in earlier:
            placed[gid] = "train"
        elif earlier:
            placed[gid] = next(s for s in SPLITS if s in earlier)
    return placed, reason


def place_new(rows: pd.DataFrame, placed: dict[str, str], share: dict[str, float], seed: int,
              only: dict[str, tuple[str, ...]] | None = None) -> dict[str, str]:
    """Place unplaced groups, largest first (seeded order among equals), where their class lacks most
    (among the splits `only` allows a group, if it names it)."""
    sizes = rows.groupby("group_id").size()
    label = rows.groupby("group_id").label.first()
    total = rows.label.value_counts()
    counts = {(c, s): 0 for c in total.index for s in SPLITS}
    for gid, split in placed.items():
        counts[label[gid], split] += int(sizes[gid])
    fresh = [g for g in sizes.index if g not in placed]
    order = sorted(fresh, key=lambda g: (-sizes[g], hashlib.sha256(f"{seed}:{g}".encode()).hexdigest()))
    placed = dict(placed)
    for gid in order:
        c = label[gid]
        split = max((only or {}).get(gid, SPLITS), key=lambda s: share[s] * total[c] - counts[c, s])
        placed[gid] = split
        counts[c, split] += int(sizes[gid])
    return placed


def assign_splits(groups: pd.DataFrame, ledger: pd.DataFrame, params: Split, seed: int,
                  max_distance: int = 0) -> pd.DataFrame:
    rows = training_rows(groups)
    placed, reason = keep_previous(rows, ledger, max_distance)
    reopened = {}
    if params.calibration > 0 and len(ledger) and not (ledger.split == "calibration").any():
        reopened = {g: ("val", "calibration") for g, s in placed.items() if s == "val"}
        placed = {g: s for g, s in placed.items() if g not in reopened}
    placed = place_new(rows, placed, ratios(params), seed, reopened)
    rows["split"] = rows.group_id.map(placed)
    first = reason.groupby(rows.group_id).agg(lambda r: next((x for x in r if x), ""))
    inherited = rows.group_id.map(first)
    via_group = "its duplicate group " + rows.group_id + " holds an image that must train (" + inherited + ")"
    rows["train_reason"] = reason.where(reason != "", via_group.where(inherited != "", ""))
    shared_out = rows.group_id.isin(list(reopened)) & (rows.split == "calibration")
    rows.loc[shared_out, "train_reason"] = ("the calibration split was introduced: validation groups were shared out "
                                            "between validation and calibration, once")
    return rows


def moves(split: pd.DataFrame, ledger: pd.DataFrame) -> list[dict]:
    """Every image whose content the ledger held in another split, with why it moved."""
    before = dict(zip(ledger.sha256, ledger.split))
    out = []
    for row in split.itertuples():
        old = before.get(row.sha256)
        if old and old != row.split:
            why = row.train_reason or (f"its group {row.group_id} was merged with images in {row.split}")
            # by content, never by path: split.json is committed and read by the report (which MLflow keeps)
            out.append({"sha256": row.sha256, "from": old, "to": row.split, "reason": why})
    return out


def update_ledger(ledger: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    """Add new content; content once trained stays train, held-out content takes its new held-out split (a merge
    or the calibration split's introduction); content no longer present is kept as it was."""
    old = ledger.set_index("sha256")
    new = split.drop_duplicates("sha256").set_index("sha256")
    both = old.index.intersection(new.index)
    trained = (old.loc[both, "split"] == "train") | (new.loc[both, "split"] == "train")
    old.loc[both, "split"] = np.where(trained, "train", new.loc[both, "split"])  # held-out moves only by a merge
    kept = ["path", "label", "perceptual_hash"]
    old.loc[both, kept] = new.loc[both, kept].to_numpy()
    fresh = new.loc[new.index.difference(old.index)]
    out = pd.concat([old, fresh.assign(first_split=fresh.split)[LEDGER[1:]]])
    return out.rename_axis("sha256").reset_index()[LEDGER].sort_values("sha256").reset_index(drop=True)


def read_persisted(path: Path) -> pd.DataFrame:
    """groups.csv or ledger.csv as text; a table from before `perceptual_hash` was named gets the name."""
    table = pd.read_csv(path, keep_default_na=False, dtype=str)
    return table.rename(columns={OLD_HASH_COLUMN: "perceptual_hash"})


def read_groups(path: Path) -> pd.DataFrame:
    """dedup's groups.csv, `conflict` as a boolean; without perceptual hashes, no near-duplicate rule applies."""
    groups = read_persisted(path)
    groups["conflict"] = groups.conflict.str.lower() == "true"
    if "perceptual_hash" not in groups:
        groups["perceptual_hash"] = ""
    return groups


def read_ledger(path: Path, old_split: Path, groups: pd.DataFrame) -> pd.DataFrame:
    """The ledger; started from the last split.csv (by path) when a project predates it."""
    if path.exists():
        return read_persisted(path)
    if not old_split.exists():
        return pd.DataFrame(columns=LEDGER)
    old = pd.read_csv(old_split, keep_default_na=False).merge(groups[["path", "sha256", "perceptual_hash"]], on="path")
    return old.assign(first_split=old.split)[LEDGER].drop_duplicates("sha256")


def summarize(split: pd.DataFrame, groups: pd.DataFrame, ledger: pd.DataFrame, moved: list[dict], classes) -> dict:
    known = set(ledger.sha256)
    return {
        "images": int(len(split)),
        "per_split": {s: {c: int(((split.split == s) & (split.label == c)).sum()) for c in classes} for s in SPLITS},
        "kept_from_ledger": int(split.sha256.isin(known).sum()),
        "newly_assigned": int((~split.sha256.isin(known)).sum()),
        "moved": len(moved),
        "left_test": [m for m in moved if m["from"] == "test"],
        "left_val": [m for m in moved if m["from"] == "val"],
        "left_calibration": [m for m in moved if m["from"] == "calibration"],
        "ledger_contents": int(len(known | set(split.sha256))),
        "excluded_label_conflicts": int(groups.conflict.astype(bool).sum()),
        "excluded_exact_copies": int(((groups.duplicate_of.fillna("") != "") & ~groups.conflict.astype(bool)).sum()),
    }


def run(params: Params, inputs: Inputs, outputs: Outputs) -> dict:
    base = params.base
    groups = read_groups(inputs.groups)
    ledger = read_ledger(outputs.ledger, outputs.out, groups)
    split = assign_splits(groups, ledger, params.split, base.seed, params.dedup.max_distance)
    moved = moves(split, ledger)
    summary = summarize(split, groups, ledger, moved, base.classes)
    for path in (outputs.out, outputs.report, outputs.ledger):
        path.parent.mkdir(parents=True, exist_ok=True)
    split[["path", "label", "group_id", "split", "sha256"]].to_csv(outputs.out, index=False)
    update_ledger(ledger, split).to_csv(outputs.ledger, index=False)
    outputs.report.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    quiet()
    args = parser(__doc__, Inputs, Outputs).parse_args(argv)
    with one_line_errors("split"):
        s = run(load_params(args.params), paths(Inputs, args), paths(Outputs, args))
    sizes = {k: sum(v.values()) for k, v in s["per_split"].items()}
    print(f"split: {sizes} ({s['kept_from_ledger']} kept by the ledger, {s['newly_assigned']} new, "
          f"{s['moved']} moved, {len(s['left_test'])} left the test split)")


if __name__ == "__main__":
    main()
