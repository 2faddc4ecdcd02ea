"""The retrain flow: tasks, the three-run scenario under prefect_test_harness, a real Prefect server."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, noise_image, prefect_server_at, scratch_workspace, shrink_params

BIN = Path(sys.executable).parent
TINY = {"validate": {"min_images_per_class": 8}, "augment": {"target_per_class": 20},
        "train": {"head_epochs": 1, "finetune_epochs": 1, "batch_size": 16,
                  "architectures": {"MobileNetV2": {"weights": "imagenet", "alpha": 0.35},
                                    "SmallCNN": {"weights": "none", "image_size": 48}}},
        "evaluate": {"bootstrap": 20}, "export": {"latency_repeats": 2},
        "register": {"min_sensitivity": {"cancer": 0.0}},
        "flow": {"quiet_seconds": 0, "retries": 0, "retry_delay_seconds": 1}}


def git(root, *args):
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """A scratch copy of the project: git + DVC repo with a local remote, tiny params, demo images."""
    root = scratch_workspace(tmp_path, TINY)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.chdir(root)
    return root


def test_stage_order_is_dvcs_graph():
    from flows.retrain import stage_order

    order = stage_order(ROOT)
    assert order[:3] == ["validate", "dedup", "split"]
    assert sorted(order) == sorted(["validate", "dedup", "split", "augment", "train@MobileNetV2", "train@SmallCNN",
                                    "evaluate", "export", "register", "label_review", "report"])  # foreach expanded by DVC
    position = {stage: i for i, stage in enumerate(order)}
    assert position["augment"] < min(position["train@MobileNetV2"], position["train@SmallCNN"])
    assert max(position["train@MobileNetV2"], position["train@SmallCNN"]) < position["evaluate"]
    assert position["evaluate"] < position["export"] < position["register"] < position["report"]
    assert position["label_review"] < position["report"]


def test_second_run_on_the_same_workspace_is_refused(tmp_path):
    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from flows.retrain import workspace_lock\n"
        f"with workspace_lock(Path({str(tmp_path)!r}), 0):\n    print('held', flush=True); time.sleep(30)")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        from flows.retrain import workspace_lock

        with pytest.raises(RuntimeError, match="another retrain run holds the lock"):
            with workspace_lock(tmp_path, 0):
                pass
    finally:
        holder.kill()


def test_waits_while_files_are_still_arriving(workspace):
    from prefect.testing.utilities import prefect_test_harness

    from flows.retrain import retrain

    params = (workspace / "params.yaml").read_text().replace("quiet_seconds: 0", "quiet_seconds: 3600")
    (workspace / "params.yaml").write_text(params)
    with prefect_test_harness():
        result = retrain(str(workspace))
    assert result["status"] == "waiting" and "quiet" in result["message"]
    assert not (workspace / "data" / "raw.dvc").exists()  # nothing was versioned or run


def set_params(root: Path, section: str, **values) -> None:
    import yaml

    params = yaml.safe_load((root / "params.yaml").read_text())
    params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def champion_version(client) -> str | None:
    from pipeline.champion import alias_version

    return alias_version(client, "oralscan-classifier")


def kill_during(workspace: Path, module_arg: str, seconds: int = 600) -> str:
    """Start `python -m flows.retrain`, SIGKILL it and everything it started once a stage's process runs."""
    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "flows.retrain", "--workspace", str(workspace)], cwd=workspace,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    def cmdline(p) -> str:
        try:
            return " ".join(p.cmdline())
        except psutil.Error:  # gone or a zombie between listing and reading
            return ""

    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        tree = psutil.Process(proc.pid).children(recursive=True)
        if any(module_arg in cmdline(p) for p in tree):
            for p in tree + [psutil.Process(proc.pid)]:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            return proc.communicate()[0]
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"{module_arg} never started: {proc.communicate()[0][-3000:]}")


@pytest.mark.slow
def test_retraining_loop_survives_kills_and_finishes_what_a_failed_run_left(workspace, keras_home):
    """First run without push/commit (as if both failed): the next run, data unchanged, finishes them.
    A failing commit is finished the same way. New images: runs killed (SIGKILL) during training and
    during register leave @champion alone; the next run recovers, decides, and commits."""
    from mlflow.tracking import MlflowClient
    from prefect.testing.utilities import prefect_test_harness

    from flows.retrain import retrain

    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    # one small architecture: this test is about recovery, and it trains three times
    set_params(workspace, "train", architectures={"SmallCNN": {"weights": "none", "image_size": 32}})
    set_params(workspace, "flow", push=False, commit=False)
    with prefect_test_harness():
        first = retrain(str(workspace))
        assert first["status"] == "trained", first
        assert champion_version(client) == "1" and "retrain: data" not in git(workspace, "log", "--format=%s")

        set_params(workspace, "flow", push=True, commit=True)
        hook = workspace / ".git" / "hooks" / "pre-commit"
        hook.write_text("#!/bin/sh\necho 'commit refused by a hook' >&2\nexit 1\n")
        hook.chmod(0o755)
        with pytest.raises(Exception, match="commit refused by a hook"):
            retrain(str(workspace))  # pushes, then the commit fails
        assert not json.loads(subprocess.run([str(BIN / "dvc"), "status", "--cloud", "--json"], cwd=workspace,
                                             capture_output=True, text=True).stdout or "{}")  # the push happened
        hook.unlink()
        finished = retrain(str(workspace))
        assert finished["status"] == "finished" and "commit" in finished["message"], finished
        assert git(workspace, "log", "--format=%s").count("retrain: data") == 1
        assert retrain(str(workspace))["status"] == "unchanged"

    for i in range(6):  # the hospital adds images to one class
        noise_image(900 + i, (140, 140)).save(workspace / "data" / "raw" / "precancer" / f"new case {i}.png")
    for stage in ("pipeline.train --arch SmallCNN", "pipeline.register"):
        kill_during(workspace, stage)
        assert champion_version(client) == "1", f"@champion moved by a run killed during {stage}"
    with prefect_test_harness():
        second = retrain(str(workspace))
    assert second["status"] == "trained" and second["data_version"] != first["data_version"], second
    versions = client.search_model_versions("name = 'oralscan-classifier'")
    decided = [v for v in versions if v.tags.get("decision") in ("champion", "challenger")]
    assert len(decided) == 2 and all(v.tags["data_version"] in (first["data_version"], second["data_version"])
                                     for v in decided)
    registry = json.loads((workspace / "reports" / "registry.json").read_text())
    assert registry["champion_before"]["version"] == 1 and registry["rule"] == "superiority"
    assert (registry["alias"] == "champion") == (champion_version(client) == str(registry["version"]))
    log = git(workspace, "log", "--format=%s")
    assert log.count("retrain: data") == 2  # each data version and its model committed together
    assert "data/raw.dvc" in git(workspace, "ls-files")


def test_dvc_status_json_survives_warnings_and_rejects_garbage():
    from flows.retrain import StageFailed, status_json

    done = subprocess.CompletedProcess([], 0, '{"train@A": []}\n',
                                       "WARNING: Process 'dvc repro' (Pid 9576) had been killed. Auto removed it\n")
    assert status_json(done) == {"train@A": []}
    assert status_json(subprocess.CompletedProcess([], 0, "", "")) == {}
    with pytest.raises(StageFailed, match="printed no JSON"):
        status_json(subprocess.CompletedProcess([], 0, "Expecting value\n", ""))


def test_a_future_timestamp_does_not_hold_runs_back(tmp_path):
    from flows.retrain import newest_change

    (tmp_path / "normal").mkdir()
    photo = tmp_path / "normal" / "camera clock wrong.jpg"
    photo.write_bytes(b"x")
    os.utime(photo, (time.time() + 86400 * 365, time.time() + 86400 * 365))  # a year ahead
    assert newest_change(tmp_path) <= time.time()


def test_commands_time_out_with_everything_they_started():
    import psutil

    from flows.retrain import StageFailed, run_command

    start = time.time()
    with pytest.raises(StageFailed, match="did not finish within 1 s"):
        run_command(["bash", "-c", "sleep 300 & sleep 300"], ROOT, timeout=1)
    assert time.time() - start < 30
    for _ in range(100):  # a SIGKILLed process can take a moment to go on a loaded machine
        left = [p for p in psutil.process_iter(["cmdline", "status"])
                if p.info["cmdline"] == ["sleep", "300"] and p.info["status"] != psutil.STATUS_ZOMBIE]
        if not left:
            break
        time.sleep(0.1)
    assert not left


def test_stage_log_keeps_the_summary_not_the_noise():
    from flows.retrain import summary_lines

    output = ("Running stage 'train@SmallCNN':\n> python -m pipeline.train --arch SmallCNN\n"
              + "I0000 00:00:17 port.cc:153] oneDNN custom operations are on.\n" * 40
              + "train@SmallCNN: val balanced accuracy 0.900 in 12s (6 epochs); MLflow run abc\n"
              + "E0000 use_unbounded_threadpool\n" * 40)
    lines = summary_lines(output, "train@SmallCNN")
    assert lines == ["Running stage 'train@SmallCNN':",
                     "train@SmallCNN: val balanced accuracy 0.900 in 12s (6 epochs); MLflow run abc"]


@pytest.fixture
def prefect_server(tmp_path):
    """A real Prefect server on a loopback port, with its own database."""
    with prefect_server_at(tmp_path / "prefect") as env:
        yield env


@pytest.mark.slow
def test_deployments_on_a_real_prefect_server(workspace, prefect_server):
    """flows.serve registers both deployments with their schedules; one is run once through the server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    (workspace / "params.yaml").write_text(
        (workspace / "params.yaml").read_text().replace("quiet_seconds: 0", "quiet_seconds: 3600"))
    serving = subprocess.Popen([sys.executable, "-m", "flows.serve", "--workspace", str(workspace)],
                               cwd=workspace, env={**os.environ, **prefect_server})
    # Prefect reads its settings once per process: point this process's client at the test server
    # explicitly, whatever an earlier test (or prefect_test_harness) left in place.
    try:
        with temporary_settings({PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}):
            with get_client(sync_client=True) as client:
                nightly = wait_for_deployment(client, "retrain/nightly")
                assert nightly.schedules[0].schedule.cron == "0 2 * * *"
                on_new = client.read_deployment_by_name("retrain/on-new-data")
                assert on_new.schedules[0].schedule.interval.total_seconds() == 300
            run = run_deployment("retrain/on-new-data", timeout=180)
            assert run.state.is_completed(), run.state
            with get_client(sync_client=True) as client:
                for _ in range(60):  # run logs are shipped in the background and may trail the final state
                    logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
                    if any("waiting until data/raw is quiet" in log.message for log in logs):
                        break
                    time.sleep(1)
                else:
                    pytest.fail(f"the run's log never said it was waiting: {[log.message for log in logs]}")
    finally:
        serving.terminate()
        serving.wait(timeout=30)


def wait_for_deployment(client, name: str, seconds: int = 90):
    for _ in range(seconds):
        try:
            return client.read_deployment_by_name(name)
        except Exception:  # not registered yet
            time.sleep(1)
    pytest.fail(f"flows.serve did not register {name} in {seconds} s")


def test_a_failing_stage_fails_the_flow_with_the_stages_own_error(workspace):
    from prefect.testing.utilities import prefect_test_harness

    from flows.retrain import StageFailed, retrain

    params = (workspace / "params.yaml").read_text().replace("min_images_per_class: 8", "min_images_per_class: 500")
    (workspace / "params.yaml").write_text(params)
    with prefect_test_harness():
        with pytest.raises(StageFailed, match="every class has at least 500 usable images"):
            retrain(str(workspace))
    assert "retrain: data" not in git(workspace, "log", "--format=%s")  # nothing committed


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
    from pipeline import champion

    name, uri = "oralscan-classifier", f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("artifact_path: model\n")
    client.create_registered_model(name)
    for _ in range(3):
        client.create_model_version(name, source=str(tmp_path / "model"), tags={"data_version": "d"})
    champion.move_alias(client, name, "champion", "1", None, "test", "champion", "first")
    for version in ("2", "3"):
        client.set_model_version_tag(name, version, "compared_against", "1")
        champion.record_decision(client, name, version, "test", "awaiting_approval", "better than v1")
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
        assert champion.alias_version(client, name) == "1"  # nothing moves while waiting
        resume_flow_run(paused[0].id, run_input={"approve": True, "reviewer": "dr. rao", "note": "reviewed card"})
        worker.join(120)
        assert "approved by dr. rao" in answer["out"]
        assert champion.alias_version(client, name) == "2"
        assert "already decided" in ask("2")  # a later run with the same registry.json never asks twice

        timed_out = ask("3")  # nobody answers within approval_timeout_seconds
    assert "not promoted" in timed_out and "no answer" in timed_out
    assert champion.alias_version(client, name) == "2" and champion.alias_version(client, name, "challenger") == "3"
    moves = [(e["decision"], e["new"]) for e in champion.history(client, name) if e["moved"]]
    assert moves == [("champion", "1"), ("approved", "2"), ("rejected", "3")]
