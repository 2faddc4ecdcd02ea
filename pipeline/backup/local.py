"""The single machine's part of a backup: the DVC objects of data/raw's versions, the files people own
(the split ledger, the label corrections), and the local MLflow store (mlflow.db and mlruns/)."""
from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import yaml

from pipeline import project
from pipeline.backup import BackupError, run

BIN = Path(sys.executable).parent


def people_files(root: Path) -> dict[str, str]:
    """Files people or the ledger own, by role, as dvc.yaml names them."""
    return {"ledger": project.stage_flags("split", root).get("ledger", "data/splits/ledger.csv"),
            "corrections": project.stage_flags("validate", root).get("corrections", "data/labels/corrections.csv")}


def version_file(root: Path) -> str:
    return project.stage_flags("validate", root).get("version_file", "data/raw.dvc")


def data_versions(root: Path) -> dict[str, str]:
    """md5 of data/raw's .dir object -> the first commit (or 'working tree') that records it."""
    path = version_file(root)
    found: dict[str, str] = {}
    commits = run(["git", "log", "--all", "--format=%H", "--", path], root).split() if (root / ".git").exists() else []
    for commit in commits:
        text = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=root, capture_output=True, text=True).stdout
        outs = (yaml.safe_load(text) or {}).get("outs") or [{}]
        if outs[0].get("md5"):
            found[outs[0]["md5"]] = commit
    if (root / path).is_file():
        outs = (yaml.safe_load((root / path).read_text()) or {}).get("outs") or [{}]
        found.setdefault(outs[0].get("md5", ""), "working tree")
    found.pop("", None)
    return found


def cache_dir(root: Path) -> Path:
    return Path(run([str(BIN / "dvc"), "cache", "dir"], root).strip())


def object_path(cache: Path, digest: str) -> Path:
    """DVC 3's cache layout: files/md5/<first two>/<rest> (`.dir` kept on directory listings)."""
    return cache / "files" / "md5" / digest[:2] / digest[2:]


def needed_objects(cache: Path, versions: dict[str, str]) -> tuple[set[str], list[str]]:
    """Every object the versions need (the listings and their files), and those the cache lacks."""
    needed, missing = set(), []
    for listing in versions:
        needed.add(listing)
        path = object_path(cache, listing)
        if not path.is_file():
            missing.append(listing)
            continue
        needed |= {entry["md5"] for entry in json.loads(path.read_text())}
    missing += sorted(d for d in needed if d not in missing and not object_path(cache, d).is_file())
    return needed, missing


def backup_data(root: Path, out: Path, allow_missing: bool) -> dict:
    versions = data_versions(root)
    cache = cache_dir(root)
    needed, missing = needed_objects(cache, versions)
    if missing:  # not in this cache: ask the DVC remote once for every committed version
        subprocess.run([str(BIN / "dvc"), "fetch", "-q", "--all-commits", version_file(root)], cwd=root,
                       capture_output=True, text=True)
        needed, missing = needed_objects(cache, versions)
    if missing and not allow_missing:
        raise BackupError(f"{len(missing)} DVC objects of data/raw's versions are neither in the cache ({cache}) nor "
                          f"on the DVC remote, e.g. {missing[0]}; `dvc fetch --all-commits {version_file(root)}` "
                          "shows why (or --allow-missing to back up the rest)")
    for digest in sorted(needed - set(missing)):
        target = object_path(out / "dvc", digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(object_path(cache, digest), target)
    return {"versions": versions, "objects": len(needed) - len(missing), "missing": missing}


def restore_data(root: Path, folder: Path) -> list[str]:
    """The DVC objects into this clone's cache, data/raw checked out, every version pushed to the DVC remote."""
    cache = cache_dir(root)
    for path in (folder / "dvc").rglob("*") if (folder / "dvc").is_dir() else []:
        if path.is_file():
            target = cache / path.relative_to(folder / "dvc")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    notes = []
    vfile = version_file(root)
    if (root / vfile).is_file():
        run([str(BIN / "dvc"), "checkout", "-q", vfile], root)
        notes.append(f"{vfile.removesuffix('.dvc')} checked out at the clone's data version")
    if subprocess.run([str(BIN / "dvc"), "remote", "default"], cwd=root, capture_output=True, text=True).stdout.strip():
        pushed = subprocess.run([str(BIN / "dvc"), "push", "-q", "--all-commits", vfile], cwd=root,
                                capture_output=True, text=True)
        notes.append("every data version pushed to the DVC remote" if pushed.returncode == 0 else
                     f"`dvc push` to the DVC remote failed ({pushed.stderr.strip()[-300:]}); the data is in the cache")
    return notes


def backup_files(root: Path, out: Path) -> dict:
    kept = {}
    for role, rel in people_files(root).items():
        if (root / rel).is_file():
            (out / "files" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, out / "files" / rel)
            kept[role] = rel
    return kept


def existing_state(root: Path) -> list[str]:
    found = [rel for rel in ("mlflow.db",) if (root / rel).exists()]
    found += ["mlruns/"] if any(p.name != ".gitkeep" for p in (root / "mlruns").glob("*")) else []
    found += [rel for rel in people_files(root).values() if "ledger" in rel and (root / rel).exists()]
    return found


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def copy_sqlite(src: Path, dst: Path) -> None:
    """A consistent copy of a database that may be in use (SQLite's online backup)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(f"file:{src}?mode=ro", uri=True)) as a, closing(sqlite3.connect(dst)) as b:
        a.backup(b)


def backup_local_store(root: Path, out: Path, uri: str) -> dict:
    db = sqlite_path(uri)
    if db is None or not db.is_file():
        return {"kind": "none", "note": f"no local MLflow store at {uri}"}
    copy_sqlite(db, out / "mlflow" / "mlflow.db")
    mlruns = root / "mlruns"
    if mlruns.is_dir():
        shutil.copytree(mlruns, out / "mlflow" / "mlruns", ignore=shutil.ignore_patterns(".gitkeep"))
    with closing(sqlite3.connect(out / "mlflow" / "mlflow.db")) as conn:
        elsewhere = [loc for (loc,) in conn.execute("SELECT artifact_location FROM experiments")
                     if str(mlruns) not in loc and mlruns.as_uri() not in loc]
    return {"kind": "sqlite", "database": str(db), "artifacts": str(mlruns), "artifacts_elsewhere": elsewhere}


def rewrite_paths(db: Path, old: Path, new: Path) -> int:
    """Artifact locations recorded in the store point at the old checkout's mlruns/: point them here."""
    pairs = [((old / "mlruns").as_uri(), (new / "mlruns").as_uri()), (str(old / "mlruns"), str(new / "mlruns"))]
    changed = 0
    with closing(sqlite3.connect(db)) as conn, conn:  # closed after the transaction commits
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            columns = [c[1] for c in conn.execute(f'PRAGMA table_info("{table}")') if "CHAR" in c[2].upper()
                       or "TEXT" in c[2].upper()]
            for column, (a, b) in ((c, p) for c in columns for p in pairs):
                changed += conn.execute(f'UPDATE "{table}" SET "{column}" = REPLACE("{column}", ?, ?) '
                                        f'WHERE instr("{column}", ?) > 0', (a, b, a)).rowcount
    return changed


def registry_summary(uri: str) -> list[str]:
    """One line per registered model: its champion and how many decisions its history holds."""
    from mlflow.tracking import MlflowClient

    from pipeline.registry.history import history

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    models = [m for m in client.search_registered_models() if not m.name.endswith(".lock")]
    lines = []
    for m in models:
        champion = f"v{m.aliases['champion']}" if "champion" in m.aliases else "unset"
        lines.append(f"registry: {m.name} @champion {champion}, {len(history(client, m.name))} decisions in its history")
    return lines


def restore_files(root: Path, folder: Path, files: dict[str, str], force: bool) -> list[str]:
    notes = []
    for rel in files.values():
        target = root / rel
        if target.exists() and force:
            shutil.copyfile(target, target.with_name(target.name + ".before-restore"))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "files" / rel, target)
        notes.append(f"{rel} restored")
    return notes


def restore_local_store(root: Path, folder: Path, old_root: Path, force: bool) -> list[str]:
    """mlflow.db and mlruns/ into the project root, artifact locations pointed at it."""
    if (root / "mlflow.db").exists() and force:
        (root / "mlflow.db").rename(root / "mlflow.db.before-restore")
    shutil.copyfile(folder / "mlflow" / "mlflow.db", root / "mlflow.db")
    if (folder / "mlflow" / "mlruns").is_dir():
        shutil.copytree(folder / "mlflow" / "mlruns", root / "mlruns", dirs_exist_ok=True)
    moved = rewrite_paths(root / "mlflow.db", old_root, root)
    return [f"mlflow.db and mlruns/ restored ({moved} artifact locations now point at {root / 'mlruns'})",
            *registry_summary(f"sqlite:///{root / 'mlflow.db'}")]
