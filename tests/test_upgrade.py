"""pipeline.upgrade: an MLflow store from an older MLflow (schema of 2.3, the first with aliases) and a
Prefect database a few migrations back are upgraded on a copy first, keep every row, and only then
replace the original (kept beside it); constraints.txt pins the tested environment."""
import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import ROOT

BIN = Path(sys.executable).parent
OLD_MLFLOW = "3500859a5d39"  # "Add Model Aliases table" (MLflow 2.3, 2023)
NAME = "oralscan-classifier"


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.upgrade", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "DO_NOT_TRACK": "true", **(env or {})})


def old_mlflow_store(path: Path) -> None:
    """A store as MLflow 2.3 left it: a champion alias, a decision in the history, two versions."""
    import sqlalchemy
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    url = f"sqlite:///{path}"
    engine = sqlalchemy.create_engine(url)
    InitialBase.metadata.create_all(engine)
    config = _get_alembic_config(url)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, OLD_MLFLOW)
    engine.dispose()
    event = {"seq": 1, "time": "2024-03-01T02:00:00+00:00", "actor": "retrain@host", "alias": "champion", "old": None,
             "new": "2", "moved": True, "decision": "champion", "reason": "better", "data_version": "abc"}
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("INSERT INTO experiments VALUES (1, 'oralscan', '/old/mlruns/1', 'active', 1, 1)")
        db.execute("INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, "
                   "start_time, source_version, lifecycle_stage, artifact_uri, experiment_id) VALUES "
                   "('r1', 'pipeline', 'LOCAL', '', '', 'u', 'FINISHED', 1, '', 'active', '/old/mlruns/1/r1', 1)")
        db.execute("INSERT INTO registered_models VALUES (?, 1, 1, '')", (NAME,))
        db.execute("INSERT INTO registered_model_tags VALUES ('champion_history.000001', ?, ?)", (json.dumps(event), NAME))
        for version in (1, 2):
            db.execute("INSERT INTO model_versions VALUES (?, ?, 1, 1, '', 'u', 'None', '/old/mlruns/1/r1/artifacts/model', "
                       "'r1', 'READY', '', '')", (NAME, version))
            db.execute("INSERT INTO model_version_tags VALUES ('decision', 'champion', ?, ?)", (NAME, version))
        db.execute("INSERT INTO registered_model_aliases VALUES ('champion', 2, ?)", (NAME,))


def revision(path: Path) -> str:
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def test_an_old_mlflow_store_is_upgraded_on_a_copy_and_keeps_the_registry(tmp_path):
    from mlflow.tracking import MlflowClient

    from pipeline.registry.history import history

    store = tmp_path / "mlflow.db"
    old_mlflow_store(store)
    uri = f"sqlite:///{store}"
    # why the backup comes before installing a new MLflow: its first client migrates an SQLite store
    # in place, with no copy (the "out-of-date schema" error only comes when no table is missing)
    opened = tmp_path / "opened-by-a-client.db"
    opened.write_bytes(store.read_bytes())
    MlflowClient(tracking_uri=f"sqlite:///{opened}").search_experiments()
    assert revision(opened) != OLD_MLFLOW and not list(tmp_path.glob("opened-by-a-client.db.*"))
    done = cli("mlflow", "--database", str(store))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"upgraded {OLD_MLFLOW} -> " in done.stdout
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    model = client.get_registered_model(NAME)
    assert model.aliases == {"champion": 2}
    assert [e["reason"] for e in history(client, NAME)] == ["better"]
    assert client.get_model_version(NAME, "1").tags == {"decision": "champion"}
    (kept,) = tmp_path.glob("mlflow.db.before-upgrade-*")
    assert revision(kept) == OLD_MLFLOW and not list(tmp_path.glob("*.upgrading-*"))
    again = cli("mlflow", "--database", str(store))
    assert again.returncode == 0 and "already at the installed schema" in again.stdout


def test_a_failed_migration_leaves_the_original_untouched(tmp_path):
    store = tmp_path / "mlflow.db"
    old_mlflow_store(store)
    with closing(sqlite3.connect(store)) as db, db:
        db.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")  # a revision this MLflow never made
    before = store.read_bytes()
    done = cli("mlflow", "--database", str(store))
    assert done.returncode == 1 and "the original was not touched" in done.stderr
    assert store.read_bytes() == before and not list(tmp_path.glob("mlflow.db.*"))


@pytest.mark.slow
def test_prefects_database_is_upgraded_on_a_copy_and_keeps_its_flows(tmp_path):
    db = tmp_path / "prefect.db"
    env = {"PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{db}", "PREFECT_HOME": str(tmp_path / "home")}

    def prefect(*args: str) -> None:
        done = subprocess.run([str(BIN / "prefect"), "server", "database", *args, "-y"], capture_output=True, text=True,
                              env={**os.environ, **env, "DO_NOT_TRACK": "true"}, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]

    prefect("upgrade")
    head = revision(db)
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("INSERT INTO flow (id, name, tags) VALUES ('0b4e2a5c-1111-4c6f-9a55-3f0e0c2b7a10', 'retrain', '[]')")
    prefect("downgrade", "-r", "-6")  # the database an older Prefect left
    old = revision(db)
    assert old != head
    done = cli("prefect", "--database", str(db), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert revision(db) == head and f"upgraded {old} -> {head}" in done.stdout
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT name FROM flow").fetchall() == [("retrain",)]
    (kept,) = tmp_path.glob("prefect.db.before-upgrade-*")
    assert revision(kept) == old


def installed_closure(name: str = "oralscan-pipeline", extras: tuple = ("dev",)) -> dict[str, str]:
    """name -> version of every distribution the project (with its dev extra) needs, transitively."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    def key(n: str) -> str:
        return n.lower().replace("_", "-").replace(".", "-")

    found, todo = {}, [(name, extras)]
    while todo:
        current, wanted = todo.pop()
        try:
            dist = distribution(current)
        except PackageNotFoundError:
            continue
        first = key(current) not in found
        found[key(current)] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (*wanted, "")):
                if first or req.extras:
                    todo.append((req.name, tuple(req.extras)))
    return found


def test_constraints_pin_the_tested_environment():
    """Everything the project and its tests need is pinned at the version installed (`make constraints`
    rewrites the file after a tested upgrade), and make install uses the file."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not an exact pin: {line!r}"
            pins[name.lower().replace("_", "-").replace(".", "-")] = version
    needed = installed_closure()
    assert len(needed) > 150 and "mlflow" in needed and "pytest" in needed
    tools = {"oralscan-pipeline", "pip", "setuptools", "wheel"}  # the project and the installer's own (pip freeze omits them)
    drift = {n: (v, pins.get(n)) for n, v in needed.items() if n not in tools and pins.get(n) != v}
    assert not drift, f"installed vs constraints.txt differ (run `make constraints` after a tested upgrade): {drift}"
    assert "pip install -q -c constraints.txt -e '.[dev]'" in (ROOT / "Makefile").read_text()
