"""validate: walk data/raw, build the manifest, check it with a Great Expectations suite.

One bad file never stops the run: it is excluded with a reason. The stage fails only when
the suite's thresholds are breached, naming each broken expectation.
--corrections: clinicians' label decisions, applied by content (data/labels/corrections.csv);
--version-file: only the files of the DVC data version it records (data/raw.dvc).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline import datadocs, pixels, privacy
from pipeline.console import quiet
from pipeline.images import UnusableImage, camera, sha256_file
from pipeline.params import Base, Params, Validate, load_params
from pipeline.stage import StageError, one_line_errors, parser, paths

COLUMNS = ["path", "label", "sha256", "format", "mode", "width", "height", "bytes", "status", "reason", "camera"]


@dataclass(frozen=True)
class Inputs:
    raw: Path
    corrections: Path | None = None   # clinicians' label decisions (data/labels/corrections.csv)
    version_file: Path | None = None  # only the files of this DVC data version (data/raw.dvc)


@dataclass(frozen=True)
class Outputs:
    manifest: Path
    docs: Path          # Great Expectations Data Docs
    summary: Path
    identifiers: Path | None = None  # local-only: identifying metadata values of the originals (pipeline/privacy.py)


class ValidationFailed(StageError):
    """The suite failed, or the input cannot be validated; the message names every broken expectation."""


def list_files(raw_dir: Path) -> list[Path]:
    """Every file under raw_dir, hidden ones included (they are reported, not ignored)."""
    return sorted(p.relative_to(raw_dir) for p in raw_dir.rglob("*") if p.is_file())


def versioned_files(dvc_file: Path) -> set[str] | None:
    """The files of the data version DVC recorded (`dvc add data/raw`), from its directory listing
    in the DVC cache; None when there is no such record (a folder not under DVC)."""
    import yaml

    if not dvc_file.is_file():
        return None
    md5 = ((yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}])[0].get("md5", "")
    repo = next((d for d in dvc_file.resolve().parents if (d / ".dvc").is_dir()), None)
    if repo is None or not md5:
        return None
    from dvc.repo import Repo  # the cache may live elsewhere (cache.dir): ask DVC where

    with Repo(str(repo)) as dvc_repo:
        listing = Path(dvc_repo.cache.local.oid_to_path(md5))
    if not listing.is_file():
        return None
    return {entry["relpath"] for entry in json.loads(listing.read_text())}


def precheck(rel: Path, classes: tuple[str, ...]) -> str | None:
    """A reason to exclude the file from its place alone, before opening it."""
    if any(part.startswith(".") for part in rel.parts):
        return "hidden file (name starts with a dot)"
    if len(rel.parts) < 2:
        return "file is not inside a class folder"
    if rel.parts[0] not in classes:
        # the folder's name stays out of the reason: reasons reach the report (and MLflow); the manifest has the path
        return f"top folder is not one of the classes in params ({', '.join(classes)})"
    return None


def describe_file(raw_dir: Path, base: Base, params: Validate, sizes: tuple[int, ...], rel: Path) -> dict:
    """One manifest row: what the file is, and whether it can be used. A usable image is decoded
    once and its model inputs kept (pipeline/pixels.py); content seen before is not decoded again."""
    path = raw_dir / rel
    row = dict.fromkeys(COLUMNS, "")
    row.update(path=rel.as_posix(), label=rel.parts[0] if len(rel.parts) > 1 else "",
               bytes=path.stat().st_size, width=0, height=0, status="excluded")
    row["sha256"] = sha256_file(path)
    reason = precheck(rel, base.classes)
    if reason is None:
        try:
            info = pixels.inspect_cached(pixels.cache_dir(raw_dir), row["sha256"], path, sizes, params.max_pixels)
            row.update(format=info.format, mode=info.mode, width=info.width, height=info.height)
            reason = check_image(info.format, info.width, info.height, params)
        except UnusableImage as err:
            reason = str(err)
    row.update(status="ok" if reason is None else "excluded", reason=reason or "")
    # EXIF make and model, read from the original (the only file that keeps its metadata), for the shift check
    row["camera"] = camera(path) if reason is None else ""
    return row


def check_image(fmt: str, width: int, height: int, params: Validate) -> str | None:
    if fmt not in params.formats:
        return f"format {fmt} is not allowed (allowed: {', '.join(params.formats)})"
    if width < params.min_width or height < params.min_height:
        return f"image is {width}x{height}, smaller than the {params.min_width}x{params.min_height} minimum"
    return None


def model_sizes(params: Params) -> tuple[int, ...]:
    """Every input size a stage will ask of the pixel cache: each architecture's and label_review's.
    A name the architecture table lacks is train's to refuse; whatever size is asked later is made on first use."""
    from pipeline.models import ARCHITECTURES

    sizes = {spec.image_size or ARCHITECTURES[spec.base or name].size for name, spec in params.train.architectures.items()
             if spec.image_size or (spec.base or name) in ARCHITECTURES}
    return tuple(sorted(sizes | {params.label_review.image_size}))


def build_manifest(raw_dir: Path, base: Base, params: Validate, files: list[Path] | None = None,
                   sizes: tuple[int, ...] = ()) -> pd.DataFrame:
    files = list_files(raw_dir) if files is None else files
    rows = pixels.parallel_map(functools.partial(describe_file, raw_dir, base, params, sizes), files, "validate")
    return pd.DataFrame(rows, columns=COLUMNS)


def summarize(manifest: pd.DataFrame, classes: tuple[str, ...], failures: list[str]) -> dict:
    ok = manifest[manifest.status == "ok"]
    return {
        "files": int(len(manifest)),
        "ok": int(len(ok)),
        "excluded": int((manifest.status == "excluded").sum()),
        "per_class": {c: int((ok.label == c).sum()) for c in classes},
        "excluded_reasons": manifest.loc[manifest.status == "excluded", "reason"]
        .str.split(" \\(").str[0].value_counts().to_dict(),
        "label_decisions_applied": int((manifest.decision != "").sum()) if "decision" in manifest else 0,
        "suite_success": not failures,
        "broken_expectations": failures,
    }


def run(params: Params, inputs: Inputs, outputs: Outputs) -> dict:
    from pipeline import labels
    from pipeline.tracking import data_version

    base, settings, raw_dir, version_file = params.base, params.validate, inputs.raw, inputs.version_file
    if not raw_dir.is_dir():
        raise ValidationFailed(f"{raw_dir} does not exist: put images in {raw_dir}/<class>/")
    try:  # clinicians' label decisions, applied by content; data/raw is never touched
        decisions = labels.load(inputs.corrections, base.classes)
    except labels.CorrectionsError as err:
        raise ValidationFailed(str(err)) from None
    files, versioned = list_files(raw_dir), versioned_files(version_file) if version_file else None
    if versioned is not None:  # the data version that will be recorded is the one used: later arrivals wait
        files = [f for f in files if f.as_posix() in versioned]
    manifest = labels.apply(build_manifest(raw_dir, base, settings, files, model_sizes(params)), decisions)
    outputs.manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(outputs.manifest, index=False)
    if outputs.identifiers:  # what the privacy check searches for in everything that leaves; never logged
        privacy.collect(raw_dir, manifest).to_csv(outputs.identifiers, index=False)
    version = data_version(version_file) if version_file and versioned is not None else "untracked"
    from pipeline.expectations import run_suite  # GE is slow to import (and after the worker processes fork)

    failures = run_suite(manifest, base, settings, outputs.docs, run_name=f"data-{version.removesuffix('.dir')[:8]}")
    summary = summarize(manifest, base.classes, failures)
    summary["not_in_data_version"] = len(list_files(raw_dir)) - len(files)
    summary["data_version"] = version
    outputs.summary.parent.mkdir(parents=True, exist_ok=True)
    outputs.summary.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if failures:
        raise ValidationFailed("data validation failed:\n  - " + "\n  - ".join(failures)
                               + f"\nsee {outputs.docs / 'index.html'} and {outputs.manifest}")
    return summary


def main(argv: list[str] | None = None) -> None:
    quiet()
    args = parser(__doc__, Inputs, Outputs).parse_args(argv)
    with one_line_errors("validate"):
        summary = run(load_params(args.params), paths(Inputs, args), paths(Outputs, args))
    print(f"validate: {summary['ok']} usable, {summary['excluded']} excluded of {summary['files']} files; "
          f"{summary['label_decisions_applied']} clinician label decisions applied")
    if summary["not_in_data_version"]:
        print(f"validate: {summary['not_in_data_version']} files in {args.raw} are not in the recorded data version "
              f"({args.version_file}) and wait for the next run (`dvc add {args.raw}` records them)")
    if not datadocs.installed():
        print(f"validate: the Data Docs pages in {args.docs} will look plain (no page assets in "
              f"{datadocs.vendor_dir()}) until `python -m pipeline.datadocs --install` is run")


if __name__ == "__main__":
    main()
