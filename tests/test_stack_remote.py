"""The stack seen from another host (issue 21, items 4 and 5).

The test makes a network namespace joined to this host by a veth pair on addresses of its own
(10.231.<n>.0/30), starts the stack on the host's end of it (so beyond loopback: TLS or no start, with a
local CA), and from inside the namespace, as a worker on another machine would: without credentials every
request to MLflow, Prefect and S3 is refused; plain HTTP to a TLS port fails; the viewer cannot move
@champion and the history shows no move; with the pipeline's credentials an MLflow run, an S3 put and a
Prefect flow run work (the project's client code, tests/remote_client.py); the release role rolls
@champion back; and a real Prefect worker in the namespace trains train@SmallCNN for the retrain flow
run on this host, as tests/test_train_on_workers.py does on loopback.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED, TINY_STACK
from tests.test_stack import Stack, leaks, make_workspace, running_stack

# one architecture, trained by the worker in the namespace (label_review, run by the parent, needs ImageNet features)
REMOTE = {**TINY_STACK, "train": {**TINY_STACK["train"], "architectures": {"SmallCNN": {"weights": "none", "image_size": 32}}},
          "flow": {"quiet_seconds": 0, "retries": 0, "retry_delay_seconds": 1, "train_on": "workers", "train_retries": 0}}

pytestmark = pytest.mark.stack


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def netns():
    """(namespace, host address): a namespace of this test's own and the veth pair that joins it to the host."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("making a network namespace needs root and iproute2")
    n = os.getpid() % 200 + 20
    name, host_end, ns_end, host = f"oscan{n}", f"osh{n}", f"osn{n}", f"10.231.{n}.1"
    try:
        ip("netns", "add", name)
        ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        ip("link", "set", ns_end, "netns", name)
        ip("addr", "add", f"{host}/30", "dev", host_end)
        ip("link", "set", host_end, "up")
        for step in (("addr", "add", f"10.231.{n}.2/30", "dev", ns_end), ("link", "set", ns_end, "up"),
                     ("link", "set", "lo", "up")):
            ip("netns", "exec", name, "ip", *step)
        yield name, host
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)  # takes its end of the pair along
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)


def in_netns(ns: str, stack: Stack, *cmd: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A command on the 'other host': only the env file tells it where the stack is and who it is."""
    base = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin", "HOME": str(stack.dir.parent),
            "PYTHONPATH": str(ROOT), "STACK_DIR": str(stack.dir), "PREFECT_HOME": str(stack.dir.parent / "remote-prefect"),
            "STACK_POSTGRES_PORT": stack.env["STACK_POSTGRES_PORT"], "DO_NOT_TRACK": "true", "USER": "worker"}
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], cwd=stack.project, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def keras_home(tmp_path_factory):
    source = SHARED / "weights" / "keras"
    if not source.is_dir():
        pytest.skip(f"shared ImageNet weights not found at {source}")
    home = tmp_path_factory.mktemp("keras")
    shutil.copytree(source, home, dirs_exist_ok=True)
    return home


@pytest.fixture(scope="module")
def remote(tmp_path_factory, netns):
    ns, host = netns
    project = make_workspace(tmp_path_factory.mktemp("remote-ws") / "ws", tmp_path_factory.mktemp("params"), REMOTE)
    yield from running_stack(project, prepare=lambda s: s.run("ca"), STACK_HOST=host)


def test_beyond_loopback_the_stack_refuses_to_start_without_tls(tmp_path, netns):
    _, host = netns
    stack = Stack(tmp_path / "s", tmp_path, STACK_HOST=host)
    done = subprocess.run([sys.executable, "docker/stack.py", "up", "--project", str(tmp_path)], cwd=ROOT,
                          env={**os.environ, **stack.env}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "starts there only with TLS" in done.stderr, done.stderr
    assert not (stack.dir / "run").exists() and not (stack.dir / "secrets").exists()  # nothing was started


def test_from_another_host_nothing_without_credentials_and_no_plain_http(remote, netns):
    done = in_netns(netns[0], remote, sys.executable, "-m", "tests.remote_client", "anonymous")
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert {k: seen[k] for k in ("mlflow", "mlflow_alias", "prefect")} == {"mlflow": 401, "mlflow_alias": 401,
                                                                           "prefect": 401}
    assert seen["s3_list"] == seen["s3_put"] == 403
    assert seen["plain_http"] == {"mlflow": [400, True], "prefect": [400, True], "s3": [400, True], "clinic": [400, True]}
    assert seen["clinic"] == [200, "/login?next=/approvals"]
    assert seen["untrusted"] is True  # clients verify the certificate
    assert seen["postgres_port"] != 0  # PostgreSQL is not reachable from another host at all


def test_from_another_host_the_pipeline_works_the_viewer_cannot_move_champion_the_release_role_can(remote, netns):
    ns, values = netns[0], remote.values()
    done = in_netns(ns, remote, sys.executable, "-m", "tests.remote_client", "pipeline")
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["champion"] == {"champion": "2"} and seen["s3"] == "1" and seen["flow"] == "COMPLETED"

    def champion(*args: str, user: str = "pipeline") -> subprocess.CompletedProcess:
        return in_netns(ns, remote, sys.executable, "-m", "pipeline.champion", *args, "--name", "remote-probe",
                        env={"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": values[f"MLFLOW_{user.upper()}_PASSWORD"]})

    before = json.loads(champion("history", "--json").stdout)
    refused = champion("rollback", "--to", "1", "--reason", "viewer tries", user="viewer")
    assert refused.returncode != 0 and "403" in refused.stdout + refused.stderr
    assert json.loads(champion("history", "--json").stdout) == before and len(before) == 2  # no move recorded
    done = champion("rollback", "--to", "1", "--reason", "release rolls back", user="release")
    assert done.returncode == 0 and "@champion v2 -> v1" in done.stdout, done.stdout + done.stderr
    after = json.loads(champion("history", "--json").stdout)
    assert len(after) == 3 and after[-1]["new"] == "1" and after[-1]["decision"] == "rollback"


@pytest.mark.slow
def test_a_worker_on_another_host_trains_over_tls(remote, netns, keras_home):
    """A Prefect worker in the namespace, configured only from a copy of the env file, takes train@SmallCNN
    from the retrain flow running on this host: dvc pull/push, MLflow logging and the Prefect API, all
    over TLS with the pipeline's credentials."""
    import httpx

    from pipeline.endpoints import read_env_file

    values, folder = read_env_file(remote.dir / "env"), remote.dir.parent / "remote-worker"
    folder.mkdir()
    bin_dir = Path(sys.executable).parent
    env = {**values, "PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", "HOME": str(folder), "PREFECT_HOME": str(folder / "prefect"),
           "KERAS_HOME": str(keras_home), "WORKER_NAME": "other-host", "TF_CPP_MIN_LOG_LEVEL": "2", "DO_NOT_TRACK": "true",
           "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
    worker = subprocess.Popen(["ip", "netns", "exec", netns[0], str(bin_dir / "prefect"), "worker", "start", "--pool",
                               values["STACK_WORK_POOL"], "--name", "other-host", "--limit", "1"],
                              cwd=folder, env=env, stdout=open(folder / "worker.log", "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        parent = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
        parent.update(STACK_DIR=str(remote.dir), KERAS_HOME=str(keras_home), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        done = subprocess.run([sys.executable, "-m", "flows.retrain", "--workspace", str(remote.project)],
                              cwd=remote.project, env=parent, capture_output=True, text=True, timeout=1500)
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-5000:] + (folder / "worker.log").read_text(errors="replace")[-3000:]
        assert "Stage 'train@SmallCNN' is cached - skipping run" in out, out[-5000:]  # trained by the worker
        api, auth = values["PREFECT_API_URL"], remote.prefect_auth()
        runs = httpx.post(f"{api}/flow_runs/filter", json={}, auth=auth, verify=values["REQUESTS_CA_BUNDLE"]).json()
        assert [(r["name"], r["state_type"]) for r in runs if r["name"].startswith("train@")] == [
            ("train@SmallCNN on other-host", "COMPLETED")]
        # no secret in the flow runs' logs, the worker's log, the databases or the servers' command lines
        assert leaks(remote, {"the worker's log": (folder / "worker.log").read_text(errors="replace"),
                              "the retrain flow's output": out}) == []
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
