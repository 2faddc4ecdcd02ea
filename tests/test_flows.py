"""The retrain flow: tasks, the three-run scenario under prefect_test_harness, a real Prefect server."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.demo import generate
from tests.conftest import ROOT, free_port, noise_image, shrink_params, wait_for_http

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
    root = tmp_path / "ws"
    root.mkdir()
    for name in ("pipeline", "flows"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(ROOT / name, root / name)
    shutil.copy(shrink_params(tmp_path, **TINY), root / "params.yaml")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                ["dvc", "remote", "add", "-d", "local", str(tmp_path / "remote")]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    generate(root / "data" / "raw", per_class=12, seed=5)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.chdir(root)
    return root


def test_stage_order_is_dvcs_graph():
    from flows.retrain import stage_order

    order = stage_order(ROOT)
    assert order[:4] == ["validate", "dedup", "split", "augment"]
    assert order[-3:] == ["evaluate", "export", "register"]
    assert sorted(order[4:-3]) == ["train@MobileNetV2", "train@SmallCNN"]  # foreach expanded by DVC


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


@pytest.mark.slow
def test_scenario_champion_then_new_images_then_nothing(workspace, keras_home):
    from mlflow.tracking import MlflowClient
    from prefect.testing.utilities import prefect_test_harness

    from flows.retrain import retrain

    with prefect_test_harness():
        first = retrain(str(workspace))
        assert first["status"] == "trained", first
        client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
        assert str(client.get_model_version_by_alias("oralscan-classifier", "champion").version) == "1"

        for i in range(6):  # the hospital adds images to one class
            noise_image(900 + i, (140, 140)).save(workspace / "data" / "raw" / "precancer" / f"new case {i}.png")
        second = retrain(str(workspace))
        assert second["status"] == "trained" and second["data_version"] != first["data_version"]
        v2 = client.get_model_version("oralscan-classifier", "2")
        assert v2.tags["decision"] in ("champion", "challenger") and v2.tags["reason"]
        assert v2.tags["data_version"] == second["data_version"]
        registry = json.loads((workspace / "reports" / "registry.json").read_text())
        assert registry["champion_before"]["version"] == 1  # compared against the champion on the same test split

        third = retrain(str(workspace))
        assert third["status"] == "unchanged" and "nothing trained" in third["message"]
        assert len(client.search_model_versions("name = 'oralscan-classifier'")) == 2
    log = git(workspace, "log", "--format=%s")
    assert log.count("retrain: data") == 2  # each data version and its model committed together
    assert "data/raw.dvc" in git(workspace, "ls-files")



@pytest.fixture
def prefect_server(tmp_path):
    """A real Prefect server on a loopback port, with its own database."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "DO_NOT_TRACK": "1"}
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/health", 120, "the Prefect server")
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


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
