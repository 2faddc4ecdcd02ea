"""The stack seen from another host (issue 21, items 4 and 5).

The test makes a network namespace joined to this host by a veth pair on addresses of its own
(10.231.<n>.0/30), starts the stack on the host's end of it (so beyond loopback: TLS or no start, with a
local CA), and from inside the namespace, as a worker on another machine would: without credentials every
request to MLflow, Prefect and S3 is refused; plain HTTP to a TLS port fails; the viewer cannot move
@champion and the history shows no move; with the pipeline's credentials an MLflow run, an S3 put and a
Prefect flow run work; the release role rolls @champion back. (The worker side is the project's client
code run in the namespace, tests/remote_client.py, not a Prefect worker training a model.)
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY_STACK
from tests.test_stack import Stack, make_workspace, running_stack

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
def remote(tmp_path_factory, netns):
    ns, host = netns
    project = make_workspace(tmp_path_factory.mktemp("remote-ws") / "ws", tmp_path_factory.mktemp("params"), TINY_STACK)
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
    assert seen["plain_http"] == {"mlflow": [400, True], "prefect": [400, True], "s3": [400, True]}
    assert seen["untrusted"] is True  # clients verify the certificate
    assert seen["postgres_port"] != 0  # PostgreSQL is not reachable from another host at all


def test_from_another_host_the_pipeline_works_the_viewer_cannot_move_champion_the_release_role_can(remote, netns):
    ns, values = netns[0], remote.values()
    done = in_netns(ns, remote, sys.executable, "-m", "tests.remote_client", "pipeline")
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["champion"] == {"champion": "2"} and seen["s3"] == "1" and seen["flow"] == "COMPLETED"

    def champion(*args: str, user: str = "pipeline") -> subprocess.CompletedProcess:
        return in_netns(ns, remote, sys.executable, "-m", "pipeline.champion", *args,
                        env={"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": values[f"MLFLOW_{user.upper()}_PASSWORD"]})

    before = json.loads(champion("history", "--json").stdout)
    refused = champion("rollback", "--to", "1", "--reason", "viewer tries", user="viewer")
    assert refused.returncode != 0 and "403" in refused.stdout + refused.stderr
    assert json.loads(champion("history", "--json").stdout) == before and len(before) == 2  # no move recorded
    done = champion("rollback", "--to", "1", "--reason", "release rolls back", user="release")
    assert done.returncode == 0 and "@champion v2 -> v1" in done.stdout, done.stdout + done.stderr
    after = json.loads(champion("history", "--json").stdout)
    assert len(after) == 3 and after[-1]["new"] == "1" and after[-1]["decision"] == "rollback"
