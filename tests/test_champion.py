"""Moving @champion: compare-and-set, the registry lock, history, rollback, approval; on a real SQLite store."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from pipeline import champion
from pipeline.champion import ChampionMoved, RegistryBusy
from tests.conftest import ROOT

NAME = "oralscan-classifier"  # register.model_name in params.yaml: the CLI's default


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """An initialised MLflow database, built once (migrations take seconds) and copied per test."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_registered_models()
    return path


@pytest.fixture
def store(empty_store, tmp_path, monkeypatch):
    """A fresh registry holding NAME v1..v4 (no aliases); returns (client, tracking URI)."""
    from mlflow.tracking import MlflowClient

    from pipeline import tracking

    shutil.copy(empty_store, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    uri = tracking.tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("artifact_path: model\n")
    client.create_registered_model(NAME)
    for i in range(1, 5):
        client.create_model_version(NAME, source=str(tmp_path / "model"), run_id=None,
                                    tags={"data_version": f"md5data{i}", "run_id": f"run{i}"})
    return client, uri


def start(uri: str, code: str) -> subprocess.Popen:
    """Python in a new process on the same store (imports pipeline from the project root)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def cli(uri: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "USER": "dr.rao"}
    return subprocess.run([sys.executable, "-m", "pipeline.champion", *args, "--params", str(ROOT / "params.yaml")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def wait_for(path, proc, seconds=60):
    for _ in range(seconds * 20):
        if path.exists():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    pytest.fail(f"{path.name} did not appear")


def snapshot(client):
    model = client.get_registered_model(NAME)
    return model.aliases, model.tags, {v.version: v.tags for v in client.search_model_versions(f"name = '{NAME}'")}


def test_first_champion_then_compare_and_set(store):
    client, _ = store
    with pytest.raises(ChampionMoved, match="@champion is unset, not v1"):
        champion.move_alias(client, NAME, "champion", "2", "1", "pipeline run a", "champion", "x")
    first = champion.move_alias(client, NAME, "champion", "1", None, "pipeline run a", "champion",
                                "no champion yet", "md5data1")
    assert first["moved"] and first["old"] is None and first["new"] == "1" and first["seq"] == 1
    assert champion.alias_version(client, NAME) == "1"
    champion.move_alias(client, NAME, "champion", "2", "1", "pipeline run b", "champion", "better")
    before = snapshot(client)
    with pytest.raises(ChampionMoved, match="@champion is v2, not v1 that this decision was made against"):
        champion.move_alias(client, NAME, "champion", "3", "1", "pipeline run c", "champion", "made against v1")
    assert snapshot(client) == before  # alias, version tags and history untouched
    assert len(champion.history(client, NAME)) == 2
    assert client.get_model_version(NAME, "2").tags["decision"] == "champion"
    assert not client.search_registered_models(f"name LIKE '{NAME}.lock%'")  # released after the refusal too


def test_same_version_is_kept_and_recorded(store):
    client, _ = store
    champion.move_alias(client, NAME, "champion", "1", None, "pipeline run a", "champion", "first")
    again = champion.move_alias(client, NAME, "champion", "1", "1", "pipeline run b", "champion",
                                "re-registered the champion's own model")
    assert not again["moved"] and again["old"] == again["new"] == "1"
    events = champion.history(client, NAME)
    assert [e["seq"] for e in events] == [1, 2] and events[-1]["reason"].startswith("re-registered")
    assert "kept" in champion.format_history(events).splitlines()[-1]


def test_challenger_and_decisions_need_no_compare(store):
    client, _ = store
    champion.move_alias(client, NAME, "champion", "1", None, "pipeline run a", "champion", "first")
    event = champion.move_alias(client, NAME, "challenger", "2", None, "pipeline run b", "challenger", "worse")
    assert event["moved"] and champion.alias_version(client, NAME, "challenger") == "2"
    pending = champion.record_decision(client, NAME, "3", "pipeline run c", "awaiting_approval", "sign-off")
    assert pending == {**pending, "alias": "champion", "old": "1", "new": "3", "moved": False}
    assert champion.alias_version(client, NAME) == "1"
    assert client.get_model_version(NAME, "3").tags["decision"] == "awaiting_approval"
    with pytest.raises(ValueError, match="v9 does not exist"):
        champion.move_alias(client, NAME, "champion", "9", "1", "pipeline run d", "champion", "x")
    with pytest.raises(ValueError, match="decision 'promoted'"):
        champion.record_decision(client, NAME, "3", "pipeline run e", "promoted", "x")
    assert len(champion.history(client, NAME)) == 3


def test_long_reason_is_cut_to_the_tag_limit(store):
    client, _ = store
    event = champion.move_alias(client, NAME, "champion", "1", None, "pipeline run a", "champion", "é\n" * 6000)
    stored = client.get_registered_model(NAME).tags["champion_history.000001"]
    assert len(stored) <= champion.TAG_VALUE_LIMIT and json.loads(stored) == event
    assert event["reason"].endswith("…")


def test_approve_and_reject(store):
    client, _ = store
    champion.move_alias(client, NAME, "champion", "1", None, "pipeline run a", "champion", "first")
    for version in ("2", "3"):
        client.set_model_version_tag(NAME, version, "compared_against", "1")
        champion.record_decision(client, NAME, version, "pipeline run b", "awaiting_approval", "needs sign-off")
    event = champion.approve(client, NAME, "2", "dr.rao@clinic", "reviewed 40 cases")
    assert (event["old"], event["new"], event["moved"], event["decision"]) == ("1", "2", True, "approved")
    tags = client.get_model_version(NAME, "2").tags
    assert tags["decision"] == "champion" and tags["reason"] == "approved by dr.rao@clinic: reviewed 40 cases"
    # v3 was compared against v1, but v2 is champion now: its approval would be a blind promotion
    with pytest.raises(ChampionMoved, match="@champion is v2, not v1"):
        champion.approve(client, NAME, "3", "dr.rao@clinic")
    assert champion.alias_version(client, NAME) == "2"
    rejected = champion.reject(client, NAME, "3", "dr.rao@clinic", "champion changed meanwhile")
    assert rejected["alias"] == "challenger" and champion.alias_version(client, NAME, "challenger") == "3"
    assert client.get_model_version(NAME, "3").tags["decision"] == "rejected"
    with pytest.raises(ValueError, match="not awaiting approval"):
        champion.approve(client, NAME, "3", "dr.rao@clinic")
    assert [e["decision"] for e in champion.history(client, NAME)] == [
        "champion", "awaiting_approval", "awaiting_approval", "approved", "rejected"]


def test_cli_rollback_history_status_in_new_processes(store):
    client, uri = store
    champion.move_alias(client, NAME, "champion", "1", None, "pipeline run a", "champion", "first", "md5data1")
    champion.move_alias(client, NAME, "champion", "2", "1", "pipeline run b", "champion", "better", "md5data2")

    rolled = cli(uri, "rollback", "--to", "v1", "--reason", "misses lesions at clinic B")
    assert rolled.returncode == 0, rolled.stderr
    assert "@champion v2 -> v1 (moved), recorded as #3" in rolled.stdout
    assert champion.alias_version(client, NAME) == "1"
    tags = client.get_model_version(NAME, "1").tags
    assert tags["decision"] == "champion"
    assert tags["reason"] == f"rolled back by dr.rao@{socket.gethostname()}: misses lesions at clinic B"

    lines = cli(uri, "history").stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["seq", "time", "(UTC)"] and len(lines) == 4
    assert "pipeline run a" in lines[1] and "unset -> v1" in lines[1] and "moved" in lines[1]
    assert "v2 -> v1" in lines[3] and "rollback" in lines[3] and "md5data1" in lines[3]

    status = cli(uri, "status").stdout
    assert "@champion   v1" in status and "rolled back by dr.rao" in status and "lock: free" in status


def test_cli_in_process_json_empty_and_errors(store, capsys):
    client, _ = store
    params = ["--params", str(ROOT / "params.yaml")]
    champion.main(["history", *params])
    assert capsys.readouterr().out.strip() == "no champion moves recorded yet"
    champion.move_alias(client, NAME, "champion", "1", None, "pipeline run a", "champion", "first")
    champion.main(["history", "--json", *params])
    assert [e["new"] for e in json.loads(capsys.readouterr().out)] == ["1"]
    for args, message in [(["rollback", "--to", "99", "--reason", "x"], "v99 does not exist"),
                          (["approve", "1"], "not awaiting approval"),
                          (["history", "--name", NAME, "--params", "missing.yaml"], "missing.yaml")]:
        with pytest.raises(SystemExit) as exit_:
            champion.main(args if "--params" in args else [*args, *params])
        assert message in str(exit_.value.code) and "\n" not in str(exit_.value.code)
    assert champion.alias_version(client, NAME) == "1" and len(champion.history(client, NAME)) == 1


HOLD = """
import time
from pathlib import Path
from mlflow.tracking import MlflowClient
from pipeline import champion
with champion.registry_lock(MlflowClient(), "{name}", "pipeline run holder", wait_seconds=5):
    Path("{ready}").touch()
    time.sleep(60)
"""


def test_lock_held_elsewhere_then_its_holder_killed(store, tmp_path):
    client, uri = store
    holder = start(uri, HOLD.format(name=NAME, ready=tmp_path / "held"))
    try:
        wait_for(tmp_path / "held", holder)
        began = time.monotonic()
        with pytest.raises(RegistryBusy, match="locked by pipeline run holder since .* gave up after 1 s"):
            champion.move_alias(client, NAME, "champion", "1", None, "pipeline run b", "champion", "x",
                                wait_seconds=1)
        assert 1 <= time.monotonic() - began < 10
        assert champion.alias_version(client, NAME) is None and champion.history(client, NAME) == []
    finally:
        holder.kill()  # a killed holder never releases: its lock stays until it is stale
        holder.wait()
    assert client.get_registered_model(f"{NAME}.lock").tags["holder"] == "pipeline run holder"
    with pytest.raises(RegistryBusy):  # not stale yet
        with champion.registry_lock(client, NAME, "pipeline run c", wait_seconds=0):
            pass
    time.sleep(0.3)
    with champion.registry_lock(client, NAME, "pipeline run c", wait_seconds=0, stale_seconds=0.2) as lock:
        assert client.get_registered_model(f"{NAME}.lock").tags["token"] == lock["token"]
    names = [m.name for m in client.search_registered_models()]
    assert names == [NAME]  # the lock and the break marker are gone


RACE = """
import json, time
from pathlib import Path
from mlflow.tracking import MlflowClient
from pipeline import champion
client = MlflowClient()
client.get_registered_model("{name}")  # connected before the start signal
Path("{ready}").touch()
while not Path("{go}").exists():
    time.sleep(0.005)
try:
    event = champion.move_alias(client, "{name}", "champion", "{version}", "1", "pipeline run {version}",
                                "champion", "beats v1", wait_seconds=30)
    print(json.dumps({{"moved": event["moved"]}}))
except champion.ChampionMoved as err:
    print(json.dumps({{"refused": str(err)}}))
"""


def test_two_processes_race_from_the_same_champion(store, tmp_path):
    client, uri = store
    champion.move_alias(client, NAME, "champion", "1", None, "pipeline run a", "champion", "first")
    procs = {v: start(uri, RACE.format(name=NAME, version=v, ready=tmp_path / f"ready{v}", go=tmp_path / "go"))
             for v in ("2", "3")}
    for v, proc in procs.items():
        wait_for(tmp_path / f"ready{v}", proc)
    (tmp_path / "go").touch()
    results = {}
    for v, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results[v] = json.loads(out.strip().splitlines()[-1])
    winners = [v for v, r in results.items() if r.get("moved")]
    assert len(winners) == 1, results
    loser = next(r for v, r in results.items() if v not in winners)
    assert loser["refused"] == (f"@champion is v{winners[0]}, not v1 that this decision was made against; "
                                "nothing moved")
    assert champion.alias_version(client, NAME) == winners[0]
    moves = [e for e in champion.history(client, NAME) if e["moved"]]
    assert [(e["old"], e["new"]) for e in moves] == [(None, "1"), ("1", winners[0])]
