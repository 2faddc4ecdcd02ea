"""dedup: group exact (sha256) and near (perceptual hash) duplicates; quarantine label conflicts.

Two thresholds, because the two uses need different precision. Every usable image gets a
duplicate group (images within `max_distance`, linked transitively): split keeps a group in
one split, and grouping two different images together costs little there. A label conflict
is stricter: images within `conflict_max_distance` (identical or re-encoded copies) that
carry different labels. Only those are kept out of training and copied (never moved) to the
quarantine folder with a CSV a clinician can fill in; on real dermoscopy images, pairs at
phash distance 4-6 were often different lesions, which must not be quarantined. A group
whose labels differ without such a copy is reported as `mixed_labels` and kept.
Hashes are cached by file content, so a rerun after new images arrive hashes only new files.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.console import progress, quiet
from pipeline.images import load_rgb
from pipeline.images import save_png
from pipeline.privacy import image_id
from pipeline.hamming import near_pairs
from pipeline.pixels import VERSION, cache_dir, preview, preview_of
from pipeline.params import Dedup, Params, load_params
from pipeline.stage import one_line_errors, parser, paths

# keyed by params.HASH_KINDS, the names dedup.hash may take (params.yaml is checked there)
HASHES = {"phash": imagehash.phash, "dhash": imagehash.dhash,
          "ahash": imagehash.average_hash, "whash": imagehash.whash}


@dataclass(frozen=True)
class Inputs:
    raw: Path
    manifest: Path


@dataclass(frozen=True)
class Outputs:
    groups: Path        # one row per usable image: group, conflict, perceptual hash
    cache: Path         # hashes by content, reused by the next run (persisted)
    quarantine: Path    # copies of conflicting images and the sheet a clinician fills in
    report: Path
    sheet: Path         # contact sheet of the largest groups


def hash_image(image, kind: str, size: int) -> int:
    """The perceptual hash of an RGB image, as an integer of size**2 bits."""
    bits = HASHES[kind](image, hash_size=size).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big") >> (-len(bits) % 8)


def compute_hash(path: Path, kind: str, size: int) -> int:
    """The hash dedup gives a file: of its preview (pipeline/pixels.py; a hash looks at a 32x32 or
    smaller thumbnail, so the preview's 320 px serve it). Every image is hashed from its preview."""
    return hash_image(preview_of(path), kind, size)


def hash_contents(paths_by_sha: dict[str, Path], params: Dedup, cache: dict[str, str],
                  pixel_cache: Path) -> tuple[dict[str, int], int]:
    """Hash every distinct content once, reusing `cache` (updated in place). Returns hashes and how many were new.
    Hashes are of the preview validate kept (made from the original when it is missing)."""
    # the pixel cache's version names how previews are made: a new input contract hashes again
    prefix, fresh, hashes = f"{params.hash}:{params.hash_size}:preview-{VERSION}:", 0, {}
    for sha, path in progress(paths_by_sha.items(), "dedup: hashing", len(paths_by_sha)):
        key = prefix + sha
        if key not in cache:
            cache[key] = format(hash_image(preview(pixel_cache, sha, path), params.hash, params.hash_size), "x")
            fresh += 1
        hashes[sha] = int(cache[key], 16)
    return hashes, fresh


def components(shas: list[str], pairs: np.ndarray, prefix: str) -> dict[str, str]:
    """sha256 -> id of its connected component; a component is named after its smallest sha256."""
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(shas),) * 2)
    _, component = connected_components(graph, directed=False)
    first = {}
    for sha, comp in zip(shas, component):  # shas are sorted, so the first seen is the smallest
        first.setdefault(comp, sha)
    return {sha: prefix + first[comp][:12] for sha, comp in zip(shas, component)}


def group_contents(hashes: dict[str, int], max_distance: int, bits: int,
                   strict_distance: int = 0) -> tuple[dict[str, str], dict[str, str]]:
    """sha256 -> duplicate group (links within max_distance) and -> copy set (links within strict_distance)."""
    shas = sorted(hashes)
    values = np.array([hashes[s] for s in shas], dtype=np.uint64)
    pairs = near_pairs(values, max(max_distance, strict_distance), bits)
    distance = np.bitwise_count(values[pairs[:, 0]] ^ values[pairs[:, 1]]) if len(pairs) else np.array([])
    return (components(shas, pairs[distance <= max_distance], "g"),
            components(shas, pairs[distance <= strict_distance], "c"))


def build_groups(images: pd.DataFrame, group_of: dict[str, str], copies_of: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per usable image: its group, label conflicts, mixed-label groups and the kept copy of its bytes.

    A conflict is a set of near-identical copies (`copies_of`) carrying different labels: those copies
    are quarantined. Look-alikes linked to them only at the looser distance keep their labels (and
    their group, so they stay in the same split).

    Of identical files the shortest path is kept ("scan.jpg" over "copy of scan.jpg"), then the first by name.
    """
    groups = images[["path", "label", "sha256"]].sort_values("path").reset_index(drop=True)
    groups["group_id"] = groups.sha256.map(group_of)
    copy_set = groups.sha256.map(copies_of or group_of)
    groups["conflict"] = groups.groupby(copy_set).label.transform("nunique") > 1
    groups["mixed_labels"] = (groups.groupby("group_id").label.transform("nunique") > 1) & ~groups.conflict
    by_length = groups.assign(n=groups.path.str.len()).sort_values(["n", "path"])
    first_copy = by_length.groupby("sha256").path.transform("first").reindex(groups.index)
    groups["duplicate_of"] = first_copy.where(first_copy != groups.path, "")
    return groups[["path", "label", "group_id", "conflict", "sha256", "duplicate_of", "mixed_labels"]]


def quarantine(groups: pd.DataFrame, resolved: pd.DataFrame, raw_dir: Path, out_dir: Path) -> pd.DataFrame:
    """Copy the pixels of every image of a conflicting group to out_dir/<group>/<label>__<id>.png and
    write the review sheet. A copy is the EXIF-oriented RGB image every stage sees, losslessly, and
    nothing else: no original bytes, metadata or file name (pipeline/privacy.py); the sheet (local-only)
    says which original each copy is.

    The sheet lists open conflicts (copied here, `correct_label` to fill) and conflicts already
    resolved by a clinician's decision (with that decision), so a reviewer sees earlier answers.
    Decisions are recorded in data/labels/corrections.csv (`python -m pipeline.labels import`),
    never in this regenerated folder.
    """
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    conflicts = groups[groups.conflict].copy()
    copies = []
    for row in conflicts.itertuples():
        target = out_dir / row.group_id / f"{row.label}__{image_id(row.sha256)}.png"
        target.parent.mkdir(exist_ok=True)
        save_png(load_rgb(raw_dir / row.path), target)
        copies.append(target.relative_to(out_dir).as_posix())
    conflicts["quarantined_copy"], conflicts["status"] = copies, "open"
    resolved = resolved.assign(quarantined_copy="", status="resolved")
    sheet = pd.concat([conflicts, resolved], ignore_index=True)
    sheet = sheet.rename(columns={"label": "current_label"})[
        ["status", "group_id", "path", "folder_label", "current_label", "sha256", "quarantined_copy", "decision"]]
    sheet["correct_label"] = ""  # for the clinician: then `python -m pipeline.labels import <this sheet> --who NAME`
    sheet.to_csv(out_dir / "conflicts.csv", index=False)
    return sheet


def resolved_conflicts(images: pd.DataFrame, groups: pd.DataFrame, group_of, copies_of) -> pd.DataFrame:
    """Images that would conflict under their folder labels but no longer do after clinicians' decisions."""
    by_folder = build_groups(images.assign(label=images.folder_label), group_of, copies_of).set_index("path")
    now = groups.set_index("path")
    was = by_folder.conflict & ~now.conflict.reindex(by_folder.index, fill_value=False)
    return now.loc[was[was].index.intersection(now.index)].reset_index()


def summarize(groups: pd.DataFrame, fresh: int) -> dict:
    sizes = groups.groupby("group_id").size()
    conflict_groups = groups[groups.conflict].group_id.nunique()
    return {
        "images": int(len(groups)),
        "distinct_contents": int(groups.sha256.nunique()),
        "exact_duplicate_images": int((groups.duplicate_of != "").sum()),
        "groups": int(len(sizes)),
        "duplicate_groups": int((sizes > 1).sum()),
        "images_in_duplicate_groups": int(sizes[sizes > 1].sum()),
        "largest_group": int(sizes.max()) if len(sizes) else 0,
        "conflict_groups": int(conflict_groups),
        "conflict_images": int(groups.conflict.sum()),
        "mixed_label_groups_kept": int(groups[groups.mixed_labels].group_id.nunique()),
        "hashed_now": fresh,
        "hashed_from_cache": int(groups.sha256.nunique()) - fresh,
    }


def run(params: Params, inputs: Inputs, outputs: Outputs) -> dict:
    from pipeline.contact_sheet import draw_contact_sheet

    settings, raw_dir = params.dedup, inputs.raw
    manifest = pd.read_csv(inputs.manifest, keep_default_na=False)
    images = manifest[manifest.status == "ok"]
    for column, default in (("folder_label", images.label), ("decision", "")):  # manifests before label decisions
        images = images.assign(**{column: images[column] if column in images else default})
    cache = json.loads(outputs.cache.read_text()) if outputs.cache.exists() else {}
    paths_by_sha = {sha: raw_dir / path for sha, path in zip(images.sha256, images.path)}
    hashes, fresh = hash_contents(paths_by_sha, settings, cache, cache_dir(raw_dir))
    group_of, copies_of = group_contents(hashes, settings.max_distance, settings.hash_size ** 2,
                                         settings.conflict_max_distance)
    groups = build_groups(images, group_of, copies_of)
    kind = f"{settings.hash}:{settings.hash_size}:"  # the ledger in split compares hashes of the same kind only
    groups["perceptual_hash"] = groups.sha256.map(lambda sha: kind + format(hashes[sha], "x"))
    details = images.set_index("path")[["folder_label", "decision"]]
    resolved = resolved_conflicts(images, groups, group_of, copies_of).join(details, on="path")
    for path in (outputs.groups, outputs.cache, outputs.report, outputs.sheet):
        path.parent.mkdir(parents=True, exist_ok=True)
    outputs.cache.write_text(json.dumps(cache, sort_keys=True))
    groups.to_csv(outputs.groups, index=False)
    quarantine(groups.join(details, on="path"), resolved, raw_dir, outputs.quarantine)
    draw_contact_sheet(groups, raw_dir, settings.contact_sheet_groups, outputs.sheet)
    summary = {**summarize(groups, fresh), "conflict_images_resolved_by_decisions": int(len(resolved))}
    outputs.report.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    quiet()
    args = parser(__doc__, Inputs, Outputs).parse_args(argv)
    with one_line_errors("dedup"):
        s = run(load_params(args.params), paths(Inputs, args), paths(Outputs, args))
    print(f"dedup: {s['images']} images in {s['groups']} groups; {s['duplicate_groups']} duplicate groups, "
          f"{s['conflict_groups']} label conflicts ({s['conflict_images']} images quarantined); "
          f"hashed {s['hashed_now']} new, {s['hashed_from_cache']} from cache")


if __name__ == "__main__":
    main()
