"""split: train/val/test by duplicate group, stratified by class, stable as data grows.

A group never straddles two splits. Images assigned by an earlier run keep their split,
so champion and challenger are compared on the same test images. Only new groups are
placed, each into the split of its class that is furthest below its target share.
If new images merge groups that earlier runs put in different splits, the merged group
goes to the least held-out split among them (train, then val, then test): held-out images
may move into training, but a training image never moves into a held-out split, where it
would inflate the scores of a model that has already seen it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pandas as pd

from pipeline.params import Base, Split, load_section

SPLITS = ("train", "val", "test")


def training_rows(groups: pd.DataFrame) -> pd.DataFrame:
    """The images a model may see: no label conflicts and one copy of each exact duplicate."""
    keep = ~groups.conflict.astype(bool) & (groups.duplicate_of.fillna("") == "")
    return groups.loc[keep, ["path", "label", "group_id"]].sort_values("path").reset_index(drop=True)


def ratios(params: Split) -> dict[str, float]:
    train = 1.0 - params.val - params.test
    if min(train, params.val, params.test) < 0:
        raise SystemExit("split: split.val + split.test must be between 0 and 1")
    return {"train": train, "val": params.val, "test": params.test}


def keep_previous(rows: pd.DataFrame, previous: dict[str, str]) -> dict[str, str]:
    """group -> split for every group with an image placed by an earlier run."""
    placed = {}
    for gid, paths in rows.groupby("group_id").path:
        earlier = {previous[p] for p in paths if p in previous}
        if earlier:
            placed[gid] = next(s for s in SPLITS if s in earlier)
    return placed


def place_new(rows: pd.DataFrame, placed: dict[str, str], share: dict[str, float], seed: int) -> dict[str, str]:
    """Place unplaced groups, largest first (seeded order among equals), where their class lacks most."""
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
        split = max(SPLITS, key=lambda s: share[s] * total[c] - counts[c, s])
        placed[gid] = split
        counts[c, split] += int(sizes[gid])
    return placed


def assign_splits(groups: pd.DataFrame, previous: dict[str, str], params: Split, seed: int) -> pd.DataFrame:
    rows = training_rows(groups)
    placed = place_new(rows, keep_previous(rows, previous), ratios(params), seed)
    rows["split"] = rows.group_id.map(placed)
    return rows


def summarize(split: pd.DataFrame, groups: pd.DataFrame, previous: dict[str, str], classes) -> dict:
    moved = [p for p, s in zip(split.path, split.split) if p in previous and previous[p] != s]
    return {
        "images": int(len(split)),
        "per_split": {s: {c: int(((split.split == s) & (split.label == c)).sum()) for c in classes} for s in SPLITS},
        "kept_from_previous_run": int(split.path.isin(list(previous)).sum()),
        "newly_assigned": int((~split.path.isin(list(previous))).sum()),
        "moved_by_group_merge": len(moved),
        "excluded_label_conflicts": int(groups.conflict.astype(bool).sum()),
        "excluded_exact_copies": int(((groups.duplicate_of.fillna("") != "") & ~groups.conflict.astype(bool)).sum()),
    }


def run(params_path: Path, groups_path: Path, out: Path, report: Path) -> dict:
    base: Base = load_section("base", params_path)
    params: Split = load_section("split", params_path)
    groups = pd.read_csv(groups_path, keep_default_na=False)
    groups["conflict"] = groups.conflict.astype(str).str.lower() == "true"
    previous = {}
    if out.exists():  # the last run's assignment: kept, so test images stay test images
        old = pd.read_csv(out, keep_default_na=False)
        previous = dict(zip(old.path, old.split))
    split = assign_splits(groups, previous, params, base.seed)
    summary = summarize(split, groups, previous, base.classes)
    out.parent.mkdir(parents=True, exist_ok=True)
    report.parent.mkdir(parents=True, exist_ok=True)
    split[["path", "label", "group_id", "split"]].to_csv(out, index=False)
    report.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--groups", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args(argv)
    s = run(args.params, args.groups, args.out, args.report)
    sizes = {k: sum(v.values()) for k, v in s["per_split"].items()}
    print(f"split: {sizes} ({s['kept_from_previous_run']} kept from the last run, {s['newly_assigned']} new)")


if __name__ == "__main__":
    main()
