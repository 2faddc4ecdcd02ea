"""flows.approval: the flow pauses for a clinician's form on a real Prefect server; approve, or no answer in time."""
import shutil
import time

import pytest

from tests.conftest import shrink_params


@pytest.mark.slow
def test_clinician_approval_in_a_real_prefect_server(tmp_path, prefect_server, monkeypatch):
    """register.require_approval: the flow pauses with a form; approve moves @champion, no answer in time
    leaves the version @challenger with that reason; an answer given on the clinic's page resumes the waiting
    run, which applies nothing twice."""
    from mlflow.tracking import MlflowClient
    from prefect import flow
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from clinic import approvals
    from flows.approval import request_approval, resume_waiting_run
    from pipeline.registry import aliases
    from pipeline.registry.client import alias_version
    from pipeline.registry.history import history

    name, uri = "oralscan-classifier", f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("artifact_path: model\n")
    client.create_registered_model(name)
    for _ in range(4):
        client.create_model_version(name, source=str(tmp_path / "model"), tags={"data_version": "d"})
    aliases.move_alias(client, name, "champion", "1", None, "test", "champion", "first")
    for version in ("2", "3", "4"):
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
        worker, paused = wait_paused(answer, ask, "2")
        assert alias_version(client, name) == "1"  # nothing moves while waiting
        resume_flow_run(paused[0].id, run_input={"approve": True, "reviewer": "dr. rao", "note": "reviewed card"})
        worker.join(120)
        assert "approved by dr. rao" in answer["out"]
        assert alias_version(client, name) == "2"
        assert "already decided" in ask("2")  # a later run with the same registry.json never asks twice

        timed_out = ask("3")  # nobody answers within approval_timeout_seconds

        # the clinic's page decides through the registry, then resumes the run waiting for that version
        worker, _ = wait_paused(answer, ask, "4")
        client.set_model_version_tag(name, "4", "compared_against", "2")  # compared with today's champion
        approvals.decide(client, name, "4", True, "dr. ana", "seen on the clinic's page", 10)
        assert resume_waiting_run(root, "3", True, "dr. ana", "") is None  # no run waits for v3
        assert resume_waiting_run(root, "4", True, "dr. ana", "seen on the clinic's page") is not None
        worker.join(120)
        assert "decided outside this flow run" in answer["out"]
    assert "not promoted" in timed_out and "no answer" in timed_out
    assert alias_version(client, name) == "4" and alias_version(client, name, "challenger") == "3"
    moves = [(e["decision"], e["new"], e["actor"]) for e in history(client, name) if e["moved"]]
    assert moves == [("champion", "1", "test"), ("approved", "2", "dr. rao"), ("rejected", "3", "approval timeout"),
                     ("approved", "4", "dr. ana")]  # the page's answer applied once, not again by the flow


def wait_paused(answer: dict, ask, version: str):
    """Run ask(version) in a thread until its flow run is paused; (thread, paused runs)."""
    import contextvars
    import threading

    from prefect.client.orchestration import get_client

    worker = threading.Thread(target=contextvars.copy_context().run, args=(lambda: answer.update(out=ask(version)),))
    worker.start()
    with get_client(sync_client=True) as api:
        for _ in range(120):
            paused = [r for r in api.read_flow_runs() if r.state and r.state.is_paused()]
            if paused:
                return worker, paused
            time.sleep(0.5)
    pytest.fail("the flow never paused for approval")
