"""A contact sheet of the largest duplicate groups, so a person can check the grouping by eye."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

from pipeline.images import load_rgb

THUMB, CAPTION, PER_ROW = 96, 14, 8


def draw_contact_sheet(groups: pd.DataFrame, raw_dir: Path, max_groups: int, out: Path) -> None:
    """One row per group (largest first), up to PER_ROW thumbnails with their labels; quarantined ones in red."""
    sizes = groups.groupby("group_id").size()
    largest = sizes[sizes > 1].sort_index().sort_values(ascending=False, kind="stable").index[:max_groups]
    row_h = THUMB + 2 * CAPTION
    sheet = Image.new("RGB", (PER_ROW * THUMB, max(1, len(largest)) * row_h), "white")
    pen = ImageDraw.Draw(sheet)
    if not len(largest):
        pen.text((4, 4), "no duplicate groups found", fill="black")
    for r, gid in enumerate(largest):
        members = groups[groups.group_id == gid]
        conflict, mixed = bool(members.conflict.any()), bool(members.mixed_labels.any())
        note = ("  LABEL CONFLICT (red labels: quarantined copies)" if conflict
                else "  mixed labels, not copies (kept)" if mixed else "")
        pen.text((4, r * row_h + 1), f"{gid}: {len(members)} images{note}",
                 fill="red" if conflict else "darkorange" if mixed else "black")
        for c, row in enumerate(members.head(PER_ROW).itertuples()):
            thumb = load_rgb(raw_dir / row.path)
            thumb.thumbnail((THUMB, THUMB))
            x, y = c * THUMB, r * row_h + CAPTION
            sheet.paste(thumb, (x, y))
            pen.text((x + 2, y + THUMB), row.label[:14], fill="red" if row.conflict else "black")
    sheet.save(out)
