"""A backup folder: made (`create`), checked (`verify`: every file against SHA256SUMS) and restored
into a fresh clone (`restore`), from the single machine's parts (local.py) or the stack's (services.py)."""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

from pipeline.backup import BackupError, local, run, services, sha256

SUMS, MANIFEST = "SHA256SUMS", "manifest.json"


def write_sums(folder: Path) -> None:
    lines = [f"{sha256(p)}  {p.relative_to(folder).as_posix()}" for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != SUMS]
    (folder / SUMS).write_text("\n".join(lines) + "\n")


def versions_of_tools() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("mlflow", "prefect", "dvc", "keras", "tensorflow-cpu"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def create(root: Path, dest: Path, allow_missing: bool = False) -> Path:
    from pipeline import tracking
    from pipeline.endpoints import stack_env

    now = datetime.now(timezone.utc)
    final = dest / f"backup-{now:%Y-%m-%dT%H%M%SZ}"
    work = final.with_name(final.name + ".partial")  # renamed when complete: a half backup never looks whole
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, mode=0o700)
    head = run(["git", "rev-parse", "HEAD"], root).strip() if (root / ".git").exists() else ""
    if head:
        run(["git", "bundle", "create", "-q", str(work / "git.bundle"), "--all"], root)
    uri = tracking.tracking_uri(root)
    on_stack = bool(stack_env(root)) and not uri.startswith("sqlite:")
    if not on_stack and not uri.startswith("sqlite:"):
        raise BackupError(f"the MLflow store is {uri}, neither the local SQLite store nor this project's stack: "
                          "back it up with its own tools")
    manifest = {"created": now.isoformat(timespec="seconds"), "project_root": str(root), "git_head": head,
                "tools": versions_of_tools(), "data": local.backup_data(root, work, allow_missing),
                "files": local.backup_files(root, work)}
    manifest["store"] = services.dump(root, work) if on_stack else local.backup_local_store(root, work, uri)
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    write_sums(work)
    work.rename(final)
    return final


def verify(folder: Path) -> dict:
    """The manifest, once every file is listed in SHA256SUMS and matches it; else BackupError."""
    folder = Path(folder)
    if not (folder / SUMS).is_file() or not (folder / MANIFEST).is_file():
        raise BackupError(f"{folder} is not a complete backup (no {SUMS} or {MANIFEST}); nothing was restored")
    listed = {}
    for number, line in enumerate((folder / SUMS).read_text().splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise BackupError(f"backup {folder} is corrupted: {SUMS} line {number} is unreadable; nothing was restored")
        listed[name] = digest
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != SUMS}
    problems = [f"{n} is missing" for n in sorted(set(listed) - present)]
    problems += [f"{n} is not in {SUMS}" for n in sorted(present - set(listed))]
    problems += [f"{n} has checksum {sha256(folder / n)[:12]}…, {SUMS} says {listed[n][:12]}…"
                 for n in sorted(set(listed) & present) if sha256(folder / n) != listed[n]]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise BackupError(f"backup {folder} is corrupted: {'; '.join(problems[:3])}{more}; nothing was restored")
    return json.loads((folder / MANIFEST).read_text())


def restore(root: Path, folder: Path, force: bool = False) -> list[str]:
    """Verify everything first, refuse a target that already has state (unless force), then restore."""
    manifest = verify(folder)
    state = local.existing_state(root)
    if state and not force:
        raise BackupError(f"{root} already has {', '.join(state)}: restore into a fresh clone "
                          "(or --force to replace them; the replaced files are kept with a .before-restore suffix)")
    store = manifest["store"]
    if store["kind"] == "stack":
        services.precheck(root, folder, force)
    notes = local.restore_data(root, folder)
    notes += local.restore_files(root, folder, manifest["files"], force)
    if store["kind"] == "sqlite":
        notes += local.restore_local_store(root, folder, Path(manifest["project_root"]), force)
    elif store["kind"] == "stack":
        notes += services.load(root, folder, store)
    return notes
