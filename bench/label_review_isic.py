"""label_review on the real ISIC set (run: `python bench/label_review_isic.py`).

Builds, in a scratch folder (never in the project), a split.csv over the set's Train and Test
folders (label: the 3-way benign/precancer/cancer grouping of SOURCE.md, or the 9 folder classes;
split: the folder), and a copy of params.yaml whose `base.classes` are those classes. Duplicate
groups come from the project's own dedup functions (phash, `dedup.max_distance`), or, with
`--groups path`, every image is its own group. `--rows all` reviews every image, including the
identical files the set files under two labels (known errors: the script reports how many the
stage flags); `--rows pipeline` keeps only what split.csv would hold. Then runs the stage and
prints its figures and the run time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.dedup import build_groups, group_contents, hash_contents  # noqa: E402
from pipeline.images import sha256_file  # noqa: E402
from pipeline.label_review import Inputs, Outputs, run  # noqa: E402
from pipeline.params import load_params  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets" / "isic-skin-9class-180px"
os.environ.setdefault("KERAS_HOME", str(ROOT.parent / "shared" / "weights" / "keras"))  # offline ImageNet weights
THREE_WAY = {"actinic keratosis": "precancer", "basal cell carcinoma": "cancer", "melanoma": "cancer",
             "squamous cell carcinoma": "cancer", "dermatofibroma": "benign", "nevus": "benign",
             "pigmented benign keratosis": "benign", "seborrheic keratosis": "benign", "vascular lesion": "benign"}


def build_split(dataset: Path, grouping: str, groups: str) -> pd.DataFrame:
    """Every image with its label, folder split, sha256, duplicate group and dedup's conflict/copy flags."""
    rows = [{"path": p.relative_to(dataset).as_posix(), "folder_class": p.parent.name,
             "split": p.parts[-3].lower(), "sha256": sha256_file(p)}
            for p in sorted(dataset.glob("*/*/*.jpg"))]
    table = pd.DataFrame(rows)
    table["label"] = table.folder_class.map(THREE_WAY) if grouping == "3way" else table.folder_class
    params = load_params(ROOT / "params.yaml").dedup
    hashes, _ = hash_contents(dict(zip(table.sha256, (dataset / p for p in table.path))), params, {})
    group_of, copies_of = group_contents(hashes, params.max_distance, params.hash_size ** 2,
                                         params.conflict_max_distance)
    flags = build_groups(table, group_of, copies_of).set_index("path")[["group_id", "conflict", "duplicate_of"]]
    table = table.join(flags, on="path")
    if groups == "path":
        table["group_id"] = table.path
    return table


def conflict_check(table: pd.DataFrame, issues: pd.DataFrame) -> str:
    """The set's own known errors: identical files filed under two labels (one of the two is wrong)."""
    copies = table[table.groupby("sha256").label.transform("nunique") > 1]
    if copies.empty:
        return "no identical files under two labels in the reviewed rows"
    hit = copies.assign(flagged=copies.path.isin(issues.path)).groupby("sha256").flagged.any()
    top = issues.head(100).path.isin(copies.path).sum()
    return (f"identical files under two labels: {len(hit)} contents ({len(copies)} images, "
            f"{len(copies) / len(table):.0%} of the rows); at least one copy flagged for {hit.sum()} of them; "
            f"{top} of the 100 top-ranked flags are such copies")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=SHARED)
    parser.add_argument("--work", type=Path, default=Path("/tmp/label_review_isic"))
    parser.add_argument("--grouping", choices=("3way", "9class"), default="3way")
    parser.add_argument("--groups", choices=("dedup", "path"), default="dedup")
    parser.add_argument("--rows", choices=("all", "pipeline"), default="all",
                        help="all images, or only what split.csv would hold (no label conflicts, one copy per file)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    table = build_split(args.dataset, args.grouping, args.groups)
    if args.rows == "pipeline":  # the rule of pipeline/split.py
        table = table[~table.conflict & (table.duplicate_of == "")]
    table[["path", "label", "group_id", "split", "sha256"]].to_csv(args.work / "split.csv", index=False)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    classes = ["benign", "precancer", "cancer"] if args.grouping == "3way" else sorted(THREE_WAY)
    positive = ["cancer", "precancer"] if args.grouping == "3way" else ["melanoma", "basal cell carcinoma"]
    params["base"].update(classes=classes, positive_classes=positive)
    params["register"]["min_sensitivity"] = {c: 0.0 for c in positive}  # must name classes (register does not run)
    (args.work / "params.yaml").write_text(yaml.safe_dump(params))
    print(f"{len(table)} images, {table.group_id.nunique()} groups ({args.groups}); label_review: "
          f"{json.dumps(params['label_review'])}")
    start = time.perf_counter()
    summary = run(load_params(args.work / "params.yaml"), Inputs(args.dataset, args.work / "split.csv"),
                  Outputs(out=args.work / "label_issues.csv", sheet=args.work / "label_issues.png",
                          report=args.work / "label_review.json"))
    print(json.dumps({k: v for k, v in summary.items() if k != "not_checked"}, indent=2))
    print(conflict_check(table, pd.read_csv(args.work / "label_issues.csv")))
    print(f"not checked: {len(summary['not_checked']['unreadable'])} unreadable, "
          f"{len(summary['not_checked']['class_unseen_by_head'])} of a class the head had not seen")
    print(f"stage run time: {time.perf_counter() - start:.1f} s; outputs in {args.work}")


if __name__ == "__main__":
    main()
