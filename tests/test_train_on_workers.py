"""Training beyond one machine on a real stack: two Prefect workers, each flow run in its own clone.

The retrain flow (flow.train_on: workers) sends each train@<arch> to the work pool; the parent
restores the models from DVC's run-cache and retrains nothing. A worker killed mid-training ends
the flow with a clear message and @champion does not move.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import SHARED, noise_image
from tests.conftest import TINY_STACK
from tests.test_stack import sh, started_stack

BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.stack, pytest.mark.slow]
ARCHS = {"SmallCNN": {"weights": "none", "image_size": 32},
         "MobileNetV2": {"weights": "none", "alpha": 0.35, "image_size": 32}}
DISTRIBUTED = {**TINY_STACK, "train": {**TINY_STACK["train"], "architectures": ARCHS},
               "flow": {"quiet_seconds": 0, "retries": 0, "retry_delay_seconds": 1, "train_on": "workers",
                        "train_retries": 0}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    source = SHARED / "weights" / "keras"  # label_review (run by the parent) needs ImageNet features
    if not source.is_dir():
        pytest.skip(f"shared ImageNet weights not found at {source}")
    home = tmp_path_factory.mktemp("keras")
    shutil.copytree(source, home, dirs_exist_ok=True)
    before = os.environ.get("KERAS_HOME")
    os.environ["KERAS_HOME"] = str(home)  # for the whole module: the workers inherit it from the stack
    try:
        yield from started_stack(tmp_path_factory, DISTRIBUTED, STACK_WORKERS="2")
    finally:
        os.environ.pop("KERAS_HOME") if before is None else os.environ.update(KERAS_HOME=before)


def retrain(stack) -> subprocess.Popen:
    """`python -m flows.retrain` as a person runs it: it finds the stack through STACK_DIR's env file."""
    env = {**os.environ, "STACK_DIR": str(stack.dir), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)
    return subprocess.Popen([sys.executable, "-m", "flows.retrain", "--workspace", str(stack.project)],
                            cwd=stack.project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def train_runs(stack) -> list[dict]:
    import httpx

    api = stack.values()["PREFECT_API_URL"]
    runs = httpx.post(f"{api}/flow_runs/filter", json={"sort": "START_TIME_ASC"}, auth=stack.prefect_auth()).json()
    flows = {f["id"]: f["name"] for f in httpx.post(f"{api}/flows/filter", json={}, auth=stack.prefect_auth()).json()}
    return [r for r in runs if flows[r["flow_id"]] == "train"]


def cmdline(process) -> str:
    import psutil

    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # gone, or a zombie between listing and reading
        return ""


def champion(stack) -> str | None:
    from mlflow.tracking import MlflowClient

    from pipeline.registry.client import alias_version

    return alias_version(MlflowClient(stack.values()["MLFLOW_TRACKING_URI"]), "oralscan-classifier")


def test_two_workers_train_two_architectures_and_the_parent_retrains_nothing(stack):
    from mlflow.tracking import MlflowClient

    start = time.time()
    proc = retrain(stack)
    out = proc.communicate(timeout=1500)[0]
    assert proc.returncode == 0, out[-5000:]
    print(f"distributed retrain: {time.time() - start:.0f} s")
    result = json.loads(out[out.rindex("{\n"):])
    assert result["status"] == "trained", result

    runs = train_runs(stack)
    assert sorted(r["name"].split(" on ")[0] for r in runs) == ["train@MobileNetV2", "train@SmallCNN"]
    assert all(r["state_type"] == "COMPLETED" for r in runs)
    assert len({r["name"].split(" on ")[1] for r in runs}) == 2  # each on its own worker
    first, second = runs
    assert second["start_time"] < first["end_time"]  # at the same time

    for arch in ARCHS:  # DVC's word: restored from the run-cache, not run
        assert f"Stage 'train@{arch}' is cached - skipping run, checking out outputs" in out, out[-5000:]
    client = MlflowClient(stack.values()["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("oralscan")
    trained = [r for r in client.search_runs([experiment.experiment_id]) if "architecture" in r.data.tags]
    per_arch = sorted(r.data.tags["architecture"] for r in trained)
    # one training run each, none by the parent; the ensemble's run (the parent's) averages the two, it trains nothing
    assert per_arch == ["MobileNetV2", "SmallCNN", "ensemble"], per_arch
    parents = {r.data.tags.get("mlflow.parentRunId") for r in trained}
    assert len(parents) == 1 and None not in parents  # both under the pipeline's one parent run
    versions = client.search_model_versions("name = 'oralscan-classifier'")
    assert len(versions) == 1 and champion(stack) == "1"  # one champion decision
    lock = (stack.project / "dvc.lock").read_text()
    assert "train@SmallCNN" in lock and "train@MobileNetV2" in lock  # dvc.lock stays the single record
    assert "retrain: data" in sh(stack.project, "git", "log", "--format=%s")


def test_a_worker_killed_mid_training_fails_the_flow_and_champion_stays(stack):
    import psutil

    before = champion(stack)
    assert before == "1"
    for i in range(6):  # new images: the next run trains again
        noise_image(900 + i, (120, 120)).save(stack.project / "data" / "raw" / "precancer" / f"new {i}.png")
    proc = retrain(stack)
    victim = None
    deadline = time.time() + 900
    while victim is None and time.time() < deadline and proc.poll() is None:
        for pid_file in (stack.dir / "run").glob("worker-*.pid"):
            tree = psutil.Process(int(pid_file.read_text())).children(recursive=True)
            if any("pipeline.train" in cmdline(p) for p in tree):
                victim = pid_file
                break
        time.sleep(0.5)
    assert victim, f"no worker ever trained: {proc.communicate()[0][-3000:]}"
    os.killpg(int(victim.read_text()), signal.SIGKILL)  # the whole worker host dies: worker, flow run, training
    out = proc.communicate(timeout=900)[0]
    assert proc.returncode != 0, out[-3000:]
    assert "did not finish on a worker" in out and "CRASHED" in out and "@champion did not move" in out, out[-4000:]
    assert champion(stack) == before
