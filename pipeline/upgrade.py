"""upgrade: bring the MLflow and Prefect databases to the schema the installed versions expect, on a copy first.

    python -m pipeline.upgrade status                 # each database's schema revision
    python -m pipeline.upgrade mlflow [--database F]  # default: the project's mlflow.db
    python -m pipeline.upgrade prefect [--database F] # default: Prefect's local database ($PREFECT_HOME/prefect.db)

A newer MLflow refuses a store made by an older one ("out-of-date database schema ... mlflow db
upgrade"); a Prefect server migrates its database itself when it starts. Either migration is one way.
So: `make backup`, install the new versions (README "Operations" → "Upgrades"), then this command. It
copies the database (SQLite's online backup), runs `mlflow db upgrade` or `prefect server database
upgrade` on the copy, checks that the copy still holds as many registered models, versions, aliases,
tags, experiments and runs (flows, flow runs, deployments) as the original, and only then puts the copy
in its place; the original is kept beside it as `<name>.before-upgrade-<UTC time>`. A failed migration
leaves the original untouched and says so. On the stack (PostgreSQL) the same commands run against the
stack's URLs after `make backup` (whose pg_dump is the copy to go back to): README "Upgrades".
"""
from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

BIN = Path(sys.executable).parent
# tables whose rows must all survive the migration (present in MLflow >= 2.3 and in every Prefect 3 schema)
KEPT = {"mlflow": ("experiments", "runs", "registered_models", "registered_model_tags", "model_versions",
                   "model_version_tags", "registered_model_aliases"),
        "prefect": ("flow", "flow_run", "deployment", "log")}


class UpgradeFailed(RuntimeError):
    """The copy did not migrate, or lost rows; the original database was not touched."""


def default_database(kind: str) -> Path:
    if kind == "mlflow":
        from pipeline import tracking

        uri = tracking.tracking_uri()
        if not uri.startswith("sqlite:///"):
            raise UpgradeFailed(f"the MLflow store is {uri}: on the stack, follow README \"Upgrades\" (PostgreSQL)")
        return Path(uri.removeprefix("sqlite:///"))
    url = os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL", "")
    if url and not url.startswith("sqlite"):
        raise UpgradeFailed(f"Prefect's database is {url.split('@')[-1]}: follow README \"Upgrades\" (PostgreSQL)")
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    return Path(url.split(":///", 1)[1]) if url else home / "prefect.db"


def revision(db: Path) -> str:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return ",".join(r for (r,) in conn.execute("SELECT version_num FROM alembic_version"))


def counts(db: Path, kind: str) -> dict[str, int]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        tables = {t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in KEPT[kind] if t in tables}


def migrate(kind: str, db: Path) -> None:
    """The tool's own migration, on `db`."""
    if kind == "mlflow":
        cmd, env = [str(BIN / "mlflow"), "db", "upgrade", f"sqlite:///{db}"], {}
    else:
        cmd = [str(BIN / "prefect"), "server", "database", "upgrade", "-y"]
        env = {"PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{db}"}
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env, "DO_NOT_TRACK": "true"})
    if done.returncode != 0:
        raise UpgradeFailed(f"{' '.join(cmd[:4])} failed on the copy {db}: "
                            f"{(done.stderr or done.stdout).strip()[-1500:]}; the original was not touched")


def upgrade(kind: str, db: Path) -> str:
    """Copy, migrate the copy, compare, swap. Returns what happened, in one line."""
    if not db.is_file():
        raise UpgradeFailed(f"no database at {db}")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    copy = db.with_name(f"{db.name}.upgrading-{stamp}")
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as src, closing(sqlite3.connect(copy)) as dst:
        src.backup(dst)
    before, old_revision = counts(db, kind), revision(db)
    try:
        migrate(kind, copy)
        after = counts(copy, kind)
        lost = {t: (n, after.get(t, 0)) for t, n in before.items() if after.get(t, 0) < n}
        if lost:
            raise UpgradeFailed(f"the upgraded copy lost rows (table: before, after) {lost}; the original was not touched")
    except UpgradeFailed:
        copy.unlink(missing_ok=True)
        raise
    new_revision = revision(copy)
    if new_revision == old_revision:
        copy.unlink()
        return f"{kind}: {db} is already at the installed schema ({old_revision})"
    kept = db.with_name(f"{db.name}.before-upgrade-{stamp}")
    shutil.copy2(db, kept)  # byte copy, then the migrated copy takes the original's name
    os.replace(copy, db)
    return (f"{kind}: {db} upgraded {old_revision} -> {new_revision} "
            f"({sum(before.values())} rows kept in {len(before)} tables); the original is {kept.name}")


def main(argv: list[str] | None = None) -> None:
    cli = argparse.ArgumentParser(prog="python -m pipeline.upgrade", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("what", choices=["status", "mlflow", "prefect"])
    cli.add_argument("--database", type=Path, help="an SQLite file (default: the project's, see above)")
    args = cli.parse_args(argv)
    try:
        if args.what == "status":
            for kind in ("mlflow", "prefect"):
                db = default_database(kind)
                print(f"{kind}: {db}: " + (f"schema {revision(db)}" if db.is_file() else "none yet"))
        else:
            print(upgrade(args.what, (args.database or default_database(args.what)).resolve()))
    except UpgradeFailed as err:
        raise SystemExit(f"upgrade {args.what}: {err}") from None


if __name__ == "__main__":
    main()
