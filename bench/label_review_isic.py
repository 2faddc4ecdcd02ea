"""label_review on the real ISIC set (run: `python bench/label_review_isic.py`).

Builds, in a scratch folder (never in the project), a split.csv over every image of the set's
Train and Test folders (label: the 3-way benign/precancer/cancer grouping of SOURCE.md, or the
9 folder classes; split: the folder), and a copy of params.yaml whose `base.classes` are those
classes. Duplicate groups come from the project's own dedup functions (phash, `dedup.max_distance`),
or, with `--groups path`, every image is its own group. Then runs the stage and prints its
figures and the run time.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.dedup import group_contents, hash_contents  # noqa: E402
from pipeline.images import sha256_file  # noqa: E402
from pipeline.label_review import run  # noqa: E402
from pipeline.params import load_section  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets" / "isic-skin-9class-180px"
THREE_WAY = {"actinic keratosis": "precancer", "basal cell carcinoma": "cancer", "melanoma": "cancer",
             "squamous cell carcinoma": "cancer", "dermatofibroma": "benign", "nevus": "benign",
             "pigmented benign keratosis": "benign", "seborrheic keratosis": "benign", "vascular lesion": "benign"}


def build_split(dataset: Path, grouping: str, groups: str) -> pd.DataFrame:
    rows = [{"path": p.relative_to(dataset).as_posix(), "folder_class": p.parent.name,
             "split": p.parts[-3].lower(), "sha256": sha256_file(p)}
            for p in sorted(dataset.glob("*/*/*.jpg"))]
    table = pd.DataFrame(rows)
    table["label"] = table.folder_class.map(THREE_WAY) if grouping == "3way" else table.folder_class
    if groups == "path":
        table["group_id"] = table.path
    else:
        params = load_section("dedup", ROOT / "params.yaml")
        hashes, _ = hash_contents(dict(zip(table.sha256, (dataset / p for p in table.path))), params, {})
        group_of, _ = group_contents(hashes, params.max_distance, params.hash_size ** 2)
        table["group_id"] = table.sha256.map(group_of)
    return table[["path", "label", "group_id", "split", "sha256"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=SHARED)
    parser.add_argument("--work", type=Path, default=Path("/tmp/label_review_isic"))
    parser.add_argument("--grouping", choices=("3way", "9class"), default="3way")
    parser.add_argument("--groups", choices=("dedup", "path"), default="dedup")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    table = build_split(args.dataset, args.grouping, args.groups)
    table.to_csv(args.work / "split.csv", index=False)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    classes = ["benign", "precancer", "cancer"] if args.grouping == "3way" else sorted(THREE_WAY)
    positive = ["cancer", "precancer"] if args.grouping == "3way" else ["melanoma", "basal cell carcinoma"]
    params["base"].update(classes=classes, positive_classes=positive)
    (args.work / "params.yaml").write_text(yaml.safe_dump(params))
    print(f"{len(table)} images, {table.group_id.nunique()} groups ({args.groups}); label_review: "
          f"{json.dumps(params['label_review'])}")
    start = time.perf_counter()
    summary = run(args.work / "params.yaml", args.dataset, args.work / "split.csv",
                  {"out": args.work / "label_issues.csv", "sheet": args.work / "label_issues.png",
                   "report": args.work / "label_review.json"})
    print(json.dumps({k: v for k, v in summary.items() if k != "not_checked"}, indent=2))
    print(f"not checked: {len(summary['not_checked']['unreadable'])} unreadable, "
          f"{len(summary['not_checked']['class_unseen_by_head'])} of a class the head had not seen")
    print(f"stage run time: {time.perf_counter() - start:.1f} s; outputs in {args.work}")


if __name__ == "__main__":
    main()
