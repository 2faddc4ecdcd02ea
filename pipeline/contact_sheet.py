"""A contact sheet of the largest duplicate groups, so a person can check the grouping by eye."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

from pipeline.images import load_rgb
from pipeline.pixels import cache_dir, preview

THUMB, CAPTION, PER_ROW = 96, 14, 8


def thumbnail(raw_dir: Path, row, side: int) -> Image.Image:
    """A row's image at most side x side: from the preview validate kept, when the row names its content."""
    sha = getattr(row, "sha256", "")
    image = preview(cache_dir(raw_dir), sha, raw_dir / row.path) if sha else load_rgb(raw_dir / row.path)
    image.thumbnail((side, side))
    return image


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
            thumb = thumbnail(raw_dir, row, THUMB)
            x, y = c * THUMB, r * row_h + CAPTION
            sheet.paste(thumb, (x, y))
            pen.text((x + 2, y + THUMB), row.label[:14], fill="red" if row.conflict else "black")
    sheet.save(out)


LABEL_CELL, LABEL_THUMB, LABEL_COLS, LINE = 200, 160, 6, 15


def _fit(text: str, font, width: int) -> str:
    """text, cut with an ellipsis so it fits `width` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _caption(row, font, width: int) -> list[str]:
    """'#rank label -> suggested (quality)' on one line, or split after the arrow when too wide."""
    one = f"#{row.rank} {row.label} -> {row.suggested_label} ({row.label_quality:.2f})"
    if font.getlength(one) <= width:
        return [one]
    return [_fit(f"#{row.rank} {row.label} ->", font, width),
            _fit(f"{row.suggested_label} ({row.label_quality:.2f})", font, width)]


def draw_label_issue_sheet(issues: pd.DataFrame, raw_dir: Path, max_images: int, out: Path) -> None:
    """The most suspicious images (rank order) captioned 'label -> suggested (label quality)', for review."""
    from PIL import ImageFont

    font = ImageFont.load_default(12)
    shown = issues.sort_values("rank").head(max_images)
    rows = -(-len(shown) // LABEL_COLS)
    top, cell_h = 3 * LINE, LABEL_THUMB + 2 * LINE + 8
    sheet = Image.new("RGB", (LABEL_COLS * LABEL_CELL, top + rows * cell_h), "white")
    pen = ImageDraw.Draw(sheet)
    if shown.empty:
        pen.text((6, 6), "No suspected label errors: nothing was flagged, nothing to review.", fill="black", font=font)
        sheet.save(out)
        return
    shown_note = f", the {len(shown)} most suspicious shown" if len(shown) < len(issues) else ""
    pen.text((6, 4), f"Suspected label errors: {len(issues)} flagged{shown_note}, most suspicious first.",
             fill="black", font=font)
    pen.text((6, 4 + LINE), "Caption: given label -> suggested label (label quality: the model's probability "
                            "of the given label). Flagged for review only; nothing was excluded.",
             fill="dimgray", font=font)
    for i, row in enumerate(shown.itertuples()):
        x, y = (i % LABEL_COLS) * LABEL_CELL, top + (i // LABEL_COLS) * cell_h
        thumb = thumbnail(raw_dir, row, LABEL_THUMB)
        sheet.paste(thumb, (x + (LABEL_CELL - thumb.width) // 2, y + (LABEL_THUMB - thumb.height) // 2))
        for j, line in enumerate(_caption(row, font, LABEL_CELL - 6)):
            pen.text((x + 3, y + LABEL_THUMB + 2 + j * LINE), line, fill="firebrick", font=font)
    sheet.save(out)


def draw_shift_sheet(atypical: pd.DataFrame, raw_dir: Path, note: str, out: Path) -> None:
    """The new images least like the champion's reference (rank order: highest witness score first),
    captioned '#rank label, camera'; never a file name. `note` heads the sheet: the result in words,
    or why nothing was checked."""
    from PIL import ImageFont

    font = ImageFont.load_default(12)
    rows = -(-len(atypical) // LABEL_COLS)
    top, cell_h = 4 * LINE, LABEL_THUMB + 2 * LINE + 8
    sheet = Image.new("RGB", (LABEL_COLS * LABEL_CELL, top + rows * cell_h), "white")
    pen = ImageDraw.Draw(sheet)
    words, width = note.split(" "), LABEL_COLS * LABEL_CELL - 12
    cut = max([i for i in range(1, len(words) + 1) if font.getlength(" ".join(words[:i])) <= width] or [1])
    for j, line in enumerate((" ".join(words[:cut]), " ".join(words[cut:]))):  # the note on at most two lines
        pen.text((6, 4 + j * LINE), _fit(line, font, width), fill="black", font=font)
    if len(atypical):
        pen.text((6, 4 + 2 * LINE), "Most atypical new images first (kernel witness score: where new images are "
                                "denser than the champion's reference). Caption: rank, label, camera.",
                 fill="dimgray", font=font)
    for i, row in enumerate(atypical.itertuples()):
        x, y = (i % LABEL_COLS) * LABEL_CELL, top + (i // LABEL_COLS) * cell_h
        thumb = thumbnail(raw_dir, row, LABEL_THUMB)
        sheet.paste(thumb, (x + (LABEL_CELL - thumb.width) // 2, y + (LABEL_THUMB - thumb.height) // 2))
        pen.text((x + 3, y + LABEL_THUMB + 2), _fit(f"#{row.rank} {row.label}", font, LABEL_CELL - 6),
                 fill="firebrick", font=font)
        pen.text((x + 3, y + LABEL_THUMB + 2 + LINE), _fit(row.camera or "camera unknown", font, LABEL_CELL - 6),
                 fill="dimgray", font=font)
    sheet.save(out)
