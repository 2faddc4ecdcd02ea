"""The one reader of the split table (data/splits/split.csv), which split writes and five stages read.

Every cell is read as text, empty cells stay "" (a class or path named "NA" is not a missing value),
and what a stage cannot use is a `StageError` naming the file and the column, label or split.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.stage import StageError

SPLIT_COLUMNS = ("path", "label", "group_id", "split")  # sha256 too since the ledger; older tables lack it


def read_split(path: Path, split: str | None = None, classes=None) -> pd.DataFrame:
    """The rows of `split` (train, val, calibration, test; None: every row), index 0..n-1. With `classes`, a label
    outside them is an error; asking for a split that has no row is one too."""
    table = pd.read_csv(path, keep_default_na=False, dtype=str)
    missing = [c for c in SPLIT_COLUMNS if c not in table.columns]
    if missing:
        raise StageError(f"{path} has no column {missing[0]!r}")
    if classes is not None:
        unknown = sorted(set(table.label) - set(classes))
        if unknown:
            raise StageError(f"label {unknown[0]!r} in {path} is not in base.classes {list(classes)}")
    if split is None:
        return table.reset_index(drop=True)
    rows = table[table.split == split].reset_index(drop=True)
    if rows.empty:
        remedy = "lower split.val, split.calibration and split.test" if split == "train" else f"raise split.{split}"
        raise StageError(f"the {split} split is empty; add images or {remedy}")
    return rows
