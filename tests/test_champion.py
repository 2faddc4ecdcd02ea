"""pipeline.champion, the registry's command line: rollback, history, status, JSON, one-line errors; in new processes too."""
import json
import socket

import pytest

from pipeline import champion
from pipeline.registry import aliases
from pipeline.registry.client import alias_version
from pipeline.registry.history import history
from tests.conftest import ROOT
from tests.registry_store import cli
from tests.registry_store import NAME, empty_store, store  # noqa: F401 (fixtures)


def test_cli_rollback_history_status_in_new_processes(store):
    client, uri = store
    aliases.move_alias(client, NAME, "champion", "1", None, "pipeline run a", "champion", "first", "md5data1")
    aliases.move_alias(client, NAME, "champion", "2", "1", "pipeline run b", "champion", "better", "md5data2")

    rolled = cli(uri, "rollback", "--to", "v1", "--reason", "misses lesions at clinic B")
    assert rolled.returncode == 0, rolled.stderr
    assert "@champion v2 -> v1 (moved), recorded as #3" in rolled.stdout
    assert alias_version(client, NAME) == "1"
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
    aliases.move_alias(client, NAME, "champion", "1", None, "pipeline run a", "champion", "first")
    champion.main(["history", "--json", *params])
    assert [e["new"] for e in json.loads(capsys.readouterr().out)] == ["1"]
    for args, message in [(["rollback", "--to", "99", "--reason", "x"], "v99 does not exist"),
                          (["approve", "1"], "not awaiting approval"),
                          (["history", "--name", NAME, "--params", "missing.yaml"], "missing.yaml")]:
        with pytest.raises(SystemExit) as exit_:
            champion.main(args if "--params" in args else [*args, *params])
        assert message in str(exit_.value.code) and "\n" not in str(exit_.value.code)
    assert alias_version(client, NAME) == "1" and len(history(client, NAME)) == 1
