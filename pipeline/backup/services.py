"""The stack's part of a backup (pipeline/backup/): what lives in PostgreSQL and S3 instead of files.

Backed up: `pg_dump` (custom format, a consistent snapshot while the servers run) of the MLflow and
the Prefect databases, every object of the MLflow artifact bucket, and the stack's secrets. The DVC
bucket's data objects come through local.py like on a single machine (only what the
versions of data/raw need: the rest of that bucket, stage outputs and run-cache, is recomputed).

Restored into a running stack (a fresh `make stack`): the MLflow and Prefect servers and workers are
stopped, each database is dropped, recreated and `pg_restore`d, the artifact objects are uploaded,
and the stack is started again. The fresh stack keeps its own secrets: nothing stored refers to them
(MLflow serves artifacts itself, DVC's keys are rewritten by `make stack`). When no stack was ever
started here, restore first puts the backup's secrets in place and asks for `make stack`.

The settings, the PostgreSQL tools and the S3 client are docker/stack.py's own (one home for each).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

from pipeline.backup import BackupError
from pipeline.endpoints import read_env_file, stack_dir


def launcher(root: Path):
    """docker/stack.py of this project, as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("stack_launcher", root / "docker" / "stack.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings(root: Path) -> tuple[object, dict, Path]:
    """The launcher and the settings the stack runs with: those it recorded when it started (ports
    overridden from the environment then included), else docker/stack.env and the environment now."""
    d = stack_dir(root).resolve()
    if (d / "settings").is_file():  # the launcher reads os.environ: restarting it must find the same ports
        os.environ.update(read_env_file(d / "settings"))
    os.environ["STACK_DIR"] = str(d)
    stack = launcher(root)
    return stack, stack.settings(), d


def pg(stack, tool: str, values: dict, secrets: dict, *args: str) -> None:
    cmd = [stack.pg_tool(tool), "-h", values["STACK_HOST"], "-p", values["STACK_POSTGRES_PORT"],
           "-U", values["STACK_POSTGRES_USER"], *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PGPASSWORD": secrets["POSTGRES_PASSWORD"]})
    if done.returncode != 0:
        raise BackupError(f"{tool} {' '.join(args[-2:])} failed: {done.stderr.strip()[-1500:]}")


def databases(values: dict) -> dict[str, str]:
    return {"mlflow": values["STACK_MLFLOW_DB"], "prefect": values["STACK_PREFECT_DB"]}


def dump(root: Path, out: Path) -> dict:
    stack, values, d = settings(root)
    secrets = read_env_file(d / "secrets")
    (out / "stack").mkdir(parents=True)
    for role, db in databases(values).items():
        pg(stack, "pg_dump", values, secrets, "-Fc", "-f", str(out / "stack" / f"{role}.dump"), db)
    shutil.copyfile(d / "secrets", out / "stack" / "secrets")
    os.chmod(out / "stack" / "secrets", 0o600)
    bucket, client, count = values["STACK_MLFLOW_BUCKET"], stack.s3_client(values, secrets), 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            target = out / "stack" / "s3" / bucket / item["Key"]
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, item["Key"], str(target))
            count += 1
    return {"kind": "stack", "databases": {role: f"stack/{role}.dump" for role in databases(values)},
            "buckets": {bucket: count}, "postgres_user": values["STACK_POSTGRES_USER"]}


def recreate(stack, values: dict, secrets: dict, db: str) -> None:
    """Drop and create `db`, ending whatever still holds a connection to it."""
    import psycopg2

    conn = psycopg2.connect(stack.postgres_url(values, secrets, "postgres"))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                    (db,))
        cur.execute(f'DROP DATABASE IF EXISTS "{db}"')
        cur.execute(f'CREATE DATABASE "{db}"')
    conn.close()


def registered_models(stack, values: dict, secrets: dict) -> int:
    """How many registered models the stack's MLflow database holds (0 for a fresh stack)."""
    import psycopg2

    conn = psycopg2.connect(stack.postgres_url(values, secrets, values["STACK_MLFLOW_DB"]))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('registered_models') IS NOT NULL")
            if not cur.fetchone()[0]:
                return 0
            cur.execute("SELECT count(*) FROM registered_models")
            return cur.fetchone()[0]
    finally:
        conn.close()


def precheck(root: Path, folder: Path, force: bool = False) -> None:
    """Before anything is restored: a running stack whose MLflow database is still empty (or --force)."""
    stack, values, d = settings(root)
    if not (d / "env").is_file():  # no running stack here
        if not (d / "secrets").exists():
            d.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / "stack" / "secrets", d / "secrets")
            os.chmod(d / "secrets", 0o600)
            raise BackupError(f"the backup's secrets are now in {d / 'secrets'}; start the stack (make stack) and run "
                              "the restore again")
        raise BackupError(f"no running stack at {d}: start it (make stack) and run the restore again")
    held = registered_models(stack, values, read_env_file(d / "secrets"))
    if held and not force:
        raise BackupError(f"the stack at {d} already holds {held} registered models: restore into a fresh stack "
                          "(or --force to replace its databases)")


def load(root: Path, folder: Path, store: dict) -> list[str]:
    """The databases and buckets into the running stack (precheck first), then the stack started again."""
    stack, values, d = settings(root)
    secrets = read_env_file(d / "secrets")
    workers = sorted(p.stem for p in (d / "run").glob("worker-*.pid"))
    for name in (*workers, "prefect", "mlflow"):  # nothing may write while the databases are replaced
        stack.stop_group(d, name)
    for role, db in databases(values).items():
        recreate(stack, values, secrets, db)
        pg(stack, "pg_restore", values, secrets, "--no-owner", "--exit-on-error", "-d", db,
           str(folder / store["databases"][role]))
    client, uploaded = stack.s3_client(values, secrets), 0
    for bucket in store["buckets"]:
        base = folder / "stack" / "s3" / bucket
        for path in sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else []:
            client.upload_file(str(path), bucket, path.relative_to(base).as_posix())
            uploaded += 1
    stack.up(root)  # MLflow, Prefect and the workers again, on the restored databases
    return [f"databases {', '.join(databases(values).values())} restored with pg_restore; {uploaded} artifact "
            f"objects uploaded; this stack kept its own secrets (the backup's are in {folder / 'stack' / 'secrets'})"]
