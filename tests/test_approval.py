"""flows.approval: the flow pauses for a clinician's form on a real Prefect server; approve, or no answer in time."""
import shutil
import time

import pytest

from tests.conftest import shrink_params


@pytest.mark.slow
def test_clinician_approval_in_a_real_prefect_server(tmp_path, prefect_server, monkeypatch):
    """register.require_approval: the flow pauses with a form; approve moves @champion, no answer in time
    leaves the version @challenger with that reason."""
    import contextvars
    import threading

    from mlflow.tracking import MlflowClient
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.approval import request_approval
    from pipeline.registry import aliases
    from pipeline.registry.client import alias_version
    from pipeline.registry.history import history

    name, uri = "oralscan-classifier", f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("artifact_path: model\n")
    client.create_registered_model(name)
    for _ in range(3):
        client.create_model_version(name, source=str(tmp_path / "model"), tags={"data_version": "d"})
    aliases.move_alias(client, name, "champion", "1", None, "test", "champion", "first")
    for version in ("2", "3"):
        client.set_model_version_tag(name, version, "compared_against", "1")
        aliases.record_decision(client, name, version, "test", "awaiting_approval", "better than v1")
    root = tmp_path / "ws"
    (root / "reports").mkdir(parents=True)
    (root / "reports" / "model_card.md").write_text("# Model card\n")
    shutil.copy(shrink_params(tmp_path, register={"require_approval": True, "approval_timeout_seconds": 6}),
                root / "params.yaml")

    @flow(name="approval-test")
    def ask(version: str) -> str:
        return request_approval(root, {"model_name": name, "version": version, "reason": "better than v1",
                                       "comparison": {"difference": 0.2}})

    with temporary_settings({PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}):
        answer = {}
        worker = threading.Thread(target=contextvars.copy_context().run, args=(lambda: answer.update(out=ask("2")),))
        worker.start()
        with get_client(sync_client=True) as api:
            for _ in range(120):
                paused = [r for r in api.read_flow_runs() if r.state and r.state.is_paused()]
                if paused:
                    break
                time.sleep(0.5)
            else:
                pytest.fail("the flow never paused for approval")
        assert alias_version(client, name) == "1"  # nothing moves while waiting
        resume_flow_run(paused[0].id, run_input={"approve": True, "reviewer": "dr. rao", "note": "reviewed card"})
        worker.join(120)
        assert "approved by dr. rao" in answer["out"]
        assert alias_version(client, name) == "2"
        assert "already decided" in ask("2")  # a later run with the same registry.json never asks twice

        timed_out = ask("3")  # nobody answers within approval_timeout_seconds
    assert "not promoted" in timed_out and "no answer" in timed_out
    assert alias_version(client, name) == "2" and alias_version(client, name, "challenger") == "3"
    moves = [(e["decision"], e["new"]) for e in history(client, name) if e["moved"]]
    assert moves == [("champion", "1"), ("approved", "2"), ("rejected", "3")]
