"""pipeline.registry.aliases: compare-and-set, challenger, awaiting approval, approve/reject, a race; on a real SQLite store."""
import json

import pytest

from pipeline.registry import aliases
from pipeline.registry.aliases import ChampionMoved
from pipeline.registry.client import alias_version
from pipeline.registry.history import format_history, history
from tests.registry_store import snapshot, start, wait_for
from tests.registry_store import NAME, empty_store, store  # noqa: F401 (fixtures)


def test_first_champion_then_compare_and_set(store):
    client, _ = store
    with pytest.raises(ChampionMoved, match="@champion is unset, not v1"):
        aliases.move_alias(client, NAME, "champion", "2", "1", "pipeline run a", "champion", "x")
    first = aliases.move_alias(client, NAME, "champion", "1", None, "pipeline run a", "champion",
                                "no champion yet", "md5data1")
    assert first["moved"] and first["old"] is None and first["new"] == "1" and first["seq"] == 1
    assert alias_version(client, NAME) == "1"
    aliases.move_alias(client, NAME, "champion", "2", "1", "pipeline run b", "champion", "better")
    before = snapshot(client)
    with pytest.raises(ChampionMoved, match="@champion is v2, not v1 that this decision was made against"):
        aliases.move_alias(client, NAME, "champion", "3", "1", "pipeline run c", "champion", "made against v1")
    assert snapshot(client) == before  # alias, version tags and history untouched
    assert len(history(client, NAME)) == 2
    assert client.get_model_version(NAME, "2").tags["decision"] == "champion"
    assert not client.search_registered_models(f"name LIKE '{NAME}.lock%'")  # released after the refusal too


def test_same_version_is_kept_and_recorded(store):
    client, _ = store
    aliases.move_alias(client, NAME, "champion", "1", None, "pipeline run a", "champion", "first")
    again = aliases.move_alias(client, NAME, "champion", "1", "1", "pipeline run b", "champion",
                                "re-registered the champion's own model")
    assert not again["moved"] and again["old"] == again["new"] == "1"
    events = history(client, NAME)
    assert [e["seq"] for e in events] == [1, 2] and events[-1]["reason"].startswith("re-registered")
    assert "kept" in format_history(events).splitlines()[-1]


def test_challenger_and_decisions_need_no_compare(store):
    client, _ = store
    aliases.move_alias(client, NAME, "champion", "1", None, "pipeline run a", "champion", "first")
    event = aliases.move_alias(client, NAME, "challenger", "2", None, "pipeline run b", "challenger", "worse")
    assert event["moved"] and alias_version(client, NAME, "challenger") == "2"
    pending = aliases.record_decision(client, NAME, "3", "pipeline run c", "awaiting_approval", "sign-off")
    assert pending == {**pending, "alias": "champion", "old": "1", "new": "3", "moved": False}
    assert alias_version(client, NAME) == "1"
    assert client.get_model_version(NAME, "3").tags["decision"] == "awaiting_approval"
    with pytest.raises(ValueError, match="v9 does not exist"):
        aliases.move_alias(client, NAME, "champion", "9", "1", "pipeline run d", "champion", "x")
    with pytest.raises(ValueError, match="decision 'promoted'"):
        aliases.record_decision(client, NAME, "3", "pipeline run e", "promoted", "x")
    assert len(history(client, NAME)) == 3


def test_approve_and_reject(store):
    client, _ = store
    aliases.move_alias(client, NAME, "champion", "1", None, "pipeline run a", "champion", "first")
    for version in ("2", "3"):
        client.set_model_version_tag(NAME, version, "compared_against", "1")
        aliases.record_decision(client, NAME, version, "pipeline run b", "awaiting_approval", "needs sign-off")
    event = aliases.approve(client, NAME, "2", "dr.rao@clinic", "reviewed 40 cases")
    assert (event["old"], event["new"], event["moved"], event["decision"]) == ("1", "2", True, "approved")
    tags = client.get_model_version(NAME, "2").tags
    assert tags["decision"] == "champion" and tags["reason"] == "approved by dr.rao@clinic: reviewed 40 cases"
    # v3 was compared against v1, but v2 is champion now: its approval would be a blind promotion
    with pytest.raises(ChampionMoved, match="@champion is v2, not v1"):
        aliases.approve(client, NAME, "3", "dr.rao@clinic")
    assert alias_version(client, NAME) == "2"
    rejected = aliases.reject(client, NAME, "3", "dr.rao@clinic", "champion changed meanwhile")
    assert rejected["alias"] == "challenger" and alias_version(client, NAME, "challenger") == "3"
    assert client.get_model_version(NAME, "3").tags["decision"] == "rejected"
    with pytest.raises(ValueError, match="not awaiting approval"):
        aliases.approve(client, NAME, "3", "dr.rao@clinic")
    assert [e["decision"] for e in history(client, NAME)] == [
        "champion", "awaiting_approval", "awaiting_approval", "approved", "rejected"]


RACE = """
import json, time
from pathlib import Path
from mlflow.tracking import MlflowClient
from pipeline.registry import aliases
from pipeline.registry.lock import registry_lock
client = MlflowClient()
client.get_registered_model("{name}")  # connected before the start signal
Path("{ready}").touch()
while not Path("{go}").exists():
    time.sleep(0.005)
try:
    event = aliases.move_alias(client, "{name}", "champion", "{version}", "1", "pipeline run {version}",
                                "champion", "beats v1", wait_seconds=30)
    print(json.dumps({{"moved": event["moved"]}}))
except aliases.ChampionMoved as err:
    print(json.dumps({{"refused": str(err)}}))
"""


def test_two_processes_race_from_the_same_champion(store, tmp_path):
    client, uri = store
    aliases.move_alias(client, NAME, "champion", "1", None, "pipeline run a", "champion", "first")
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
    assert alias_version(client, NAME) == winners[0]
    moves = [e for e in history(client, NAME) if e["moved"]]
    assert [(e["old"], e["new"]) for e in moves] == [(None, "1"), ("1", winners[0])]
