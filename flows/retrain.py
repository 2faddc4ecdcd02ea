"""The retrain flow: version new images, run the DVC stages as Prefect tasks, commit the result.

Each task runs one DVC stage through DVC (`dvc repro --single-item`), so dvc.lock stays the
single record and DVC's cache decides what reruns; the task order is DVC's own stage graph.
Prefect adds the schedule, retries on remote services, timeouts, logs and the UI.

It survives ordinary faults: a killed run leaves DVC locks of dead processes, which DVC clears,
and partial outputs, which the next run rebuilds; a push or commit that failed is finished by
the next run even when the data did not change; every command has a timeout from params.

    python -m flows.retrain [--workspace DIR]     # one run, no server needed
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from pipeline.params import Flow, load_section

BIN = Path(sys.executable).parent
REMOTE_STAGES = {"export", "register", "report"}  # they talk to the MLflow server: retried (register is idempotent)
COMMITTED = ("dvc.lock", ".gitignore", "data", "reports", "models")  # what a run commits to git


class StageFailed(RuntimeError):
    pass


def run_command(cmd: list[str], root: Path, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command; on timeout stop it and everything it started, and say so."""
    import psutil

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for child in psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]:
            child.kill()
        proc.communicate()
        raise StageFailed(f"`{' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))}` did not finish "
                          f"within {timeout:.0f} s (flow timeouts in params.yaml) and was stopped") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def dvc(root: Path, *args: str, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """A DVC command in the workspace; raises with DVC's own output when it fails."""
    done = run_command([str(BIN / "dvc"), *args], root, timeout, env)
    if done.returncode != 0:
        raise StageFailed(f"dvc {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-4000:]}")
    return done


def git(root: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    done = run_command(["git", "-c", "user.name=retrain flow", "-c", "user.email=retrain@localhost", *args],
                       root, timeout)
    if done.returncode != 0:
        raise StageFailed(f"git {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-2000:]}")
    return done


def stage_order(root: Path) -> list[str]:
    """The pipeline's stages in dependency order, read from DVC's graph (dvc.yaml), .dvc files left out."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph
        return [s.addressing for s in reversed(list(nx.topological_sort(graph))) if not s.addressing.endswith(".dvc")]


def newest_change(raw: Path) -> float:
    """When the latest file under data/raw arrived or changed. ctime is set by the kernel when a file
    is created, copied in or renamed (a copy that keeps an old mtime still counts), and unlike mtime it
    cannot be set to the future by a camera or a sync tool; a clock that jumped is clamped to now."""
    stamps = [p.stat().st_ctime for p in raw.rglob("*") if p.is_file()]
    return min(max(stamps, default=0.0), time.time())


def summary_lines(output: str, stage: str) -> list[str]:
    """What a person needs from a stage's output: DVC's verdict and the stage's own summary lines,
    not the pages of TensorFlow start-up notices around them."""
    prefix = stage.split("@")[0]
    keep = ("Running stage", "Stage '", "didn't change", "is cached", "Restored stage")
    return [line for line in output.splitlines()
            if line.startswith(f"{prefix}@") or line.startswith(f"{prefix}:") or any(k in line for k in keep)]


def status_json(done: subprocess.CompletedProcess) -> dict:
    """The JSON DVC prints on stdout; warnings (e.g. locks of killed processes it cleared) go elsewhere."""
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        if not done.stdout.strip():
            return {}
        raise StageFailed(f"dvc status printed no JSON:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])


@contextmanager
def workspace_lock(root: Path, timeout: int):
    from filelock import FileLock, Timeout

    lock = FileLock(root / ".dvc" / "tmp" / "retrain.lock")
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise RuntimeError(f"another retrain run holds the lock on {root}; not starting a second one") from None
    try:
        yield
    finally:
        lock.release()


@task(cache_policy=NO_CACHE)
def version_data(root: Path, timeout: float) -> str:
    """`dvc add data/raw`: records the folder's content hash in data/raw.dvc; returns it."""
    from pipeline.tracking import data_version

    dvc(root, "add", "-q", "data/raw", timeout=timeout)
    version = data_version(root / "data" / "raw.dvc")
    get_run_logger().info("data/raw is version %s", version)
    return version


@task(cache_policy=NO_CACHE)
def pipeline_changed(root: Path, timeout: float) -> bool:
    return bool(status_json(dvc(root, "status", "--json", timeout=timeout)))


def validated_version(root: Path) -> str | None:
    """The data version the last validate ran on (None before the first run)."""
    report = root / "reports" / "validation.json"
    return json.loads(report.read_text()).get("data_version") if report.exists() else None


def pushed_state(root: Path) -> str:
    """What a successful push covered: the data version and every stage's outputs (dvc.lock)."""
    from pipeline.tracking import digest

    return digest(*[root / p for p in ("data/raw.dvc", "dvc.lock") if (root / p).exists()])


PUSHED = Path(".dvc") / "tmp" / "retrain-pushed"  # written after a push succeeds; a cheap check every few minutes


@task(cache_policy=NO_CACHE)
def unfinished(root: Path, params: Flow) -> list[str]:
    """What an earlier run left undone: results not committed, data or outputs not pushed."""
    left = []
    if params.commit and git(root, "status", "--porcelain", "--", *[p for p in COMMITTED if (root / p).exists()],
                             timeout=params.command_timeout_seconds).stdout.strip():
        left.append("commit")
    marker = root / PUSHED
    if params.push and (not marker.exists() or marker.read_text() != pushed_state(root)):
        left.append("push")
    return left


@task(cache_policy=NO_CACHE)
def push(root: Path, timeout: float) -> None:
    dvc(root, "push", "-q", timeout=timeout)
    (root / PUSHED).write_text(pushed_state(root))


@task(cache_policy=NO_CACHE)
def run_stage(root: Path, stage: str, run_id: str, timeout: float, force: bool = False, restore: bool = False) -> None:
    """One DVC stage; DVC skips it when its dependencies did not change. `restore`: the stage ran on a
    worker, so its outputs come from the remote's run-cache and running it here is an error."""
    args = ["repro", "--single-item", *(["--force"] if force else []), *(["--pull"] if restore else []), stage]
    done = dvc(root, *args, timeout=timeout, env={"PIPELINE_RUN_ID": run_id})
    logger = get_run_logger()
    for line in summary_lines(done.stdout + done.stderr, stage) or [f"{stage}: done (no summary printed)"]:
        logger.info(line)
    if restore and f"Running stage '{stage}'" in done.stdout + done.stderr:
        raise StageFailed(f"{stage} trained again here instead of restoring the worker's result from the run-cache "
                          "(did the worker run different code or inputs?)")


@task(cache_policy=NO_CACHE)
def commit(root: Path, version: str, timeout: float) -> str:
    """Commit the data version, dvc.lock and the reports so each data version and its model are tied in history."""
    registry = root / "reports" / "registry.json"
    decision = json.loads(registry.read_text()) if registry.exists() else {}
    # folders, not files: git adds what they hold except what is ignored (DVC's outputs), which
    # takes the .gitignore files DVC writes beside its outputs along with data/raw.dvc and the reports
    git(root, "add", "--", *[p for p in COMMITTED if (root / p).exists()], timeout=timeout)
    if run_command(["git", "diff", "--cached", "--quiet"], root, timeout).returncode == 0:
        return "nothing to commit"
    message = f"retrain: data {version[:8]}, model v{decision.get('version', '?')} @{decision.get('alias', '?')}"
    git(root, "commit", "-q", "-m", message, timeout=timeout)
    return message


def rename_run(name: str) -> None:
    """Put the data version in the flow run's name, where the Prefect UI lists runs."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if flow_run.id:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=name)


def finish(root: Path, version: str, params: Flow, left: list[str], remote: dict) -> str:
    """Push and commit (those asked for by `left` and params); returns what the commit did."""
    if params.push and "push" in left:
        push.with_options(**remote)(root, params.command_timeout_seconds)
    if params.commit and "commit" in left:
        return commit(root, version, params.command_timeout_seconds)
    return "commit disabled in params" if not params.commit else "nothing to commit"


def train_all(root: Path, params: Flow, run_id: str, force_validate: bool, remote: dict) -> None:
    timeout, stages = params.stage_timeout_seconds, stage_order(root)
    if params.train_on not in ("local", "workers"):
        raise StageFailed(f"flow.train_on must be local or workers, not {params.train_on!r}")
    trains = [s for s in stages if s.startswith("train@")] if params.train_on == "workers" else []
    for stage in stages:
        if trains and stage == trains[0]:  # upstream done: every architecture at once on the workers
            from flows.train import train_on_workers

            push.with_options(**remote)(root, params.command_timeout_seconds)
            train_on_workers(root, trains, run_id, timeout, params.train_retries)
        options = remote if stage in REMOTE_STAGES else {"retries": 0}
        run_stage.with_options(name=stage, timeout_seconds=timeout + 60, **options)(
            root, stage, run_id, timeout, force_validate and stage == "validate", stage in trains)


@flow(name="retrain", log_prints=True)
def retrain(workspace: str = ".") -> dict:
    """Version data/raw, rerun what changed, register the model; end early when nothing changed.
    The outcome is also left on the flow run as artifacts (decision summary, leaderboard)."""
    from flows.artifacts import publish

    root = Path(workspace).resolve()
    try:
        outcome = retrain_once(root)
    except Exception as err:  # a failed run says so in its Artifacts tab too
        with suppress(Exception):  # never hide the failure behind a failing summary
            publish(root, {"status": "failed", "message": f"{type(err).__name__}: {str(err)[:1500]}"})
        raise
    publish(root, outcome)
    return outcome


def retrain_once(root: Path) -> dict:
    from prefect.runtime import flow_run

    from flows.approval import request_approval

    params: Flow = load_section("flow", root / "params.yaml")
    logger, wait = get_run_logger(), params.command_timeout_seconds
    remote = {"retries": params.retries,  # for what talks to the DVC remote or the MLflow server
              "retry_delay_seconds": exponential_backoff(backoff_factor=params.retry_delay_seconds)}
    with workspace_lock(root, params.lock_timeout_seconds):
        quiet_for = time.time() - newest_change(root / "data" / "raw")
        if quiet_for < params.quiet_seconds:
            message = f"files arrived {quiet_for:.0f}s ago; waiting until data/raw is quiet for {params.quiet_seconds}s"
            logger.info(message)
            return {"status": "waiting", "message": message}
        version = version_data(root, wait)
        rename_run(f"retrain data {version[:8]}")
        stale = validated_version(root) not in (None, version)  # files arrived during the last run
        if stale:
            logger.info("validate last ran on data %s, not on %s: running it again", validated_version(root), version)
        if not stale and not pipeline_changed(root, wait):
            left = unfinished(root, params)
            if not left:
                message = f"nothing changed since the last successful run (data {version[:8]}); nothing trained"
                logger.info(message)
                return {"status": "unchanged", "data_version": version, "message": message}
            committed = finish(root, version, params, left, remote)
            message = f"nothing changed (data {version[:8]}); finished what an earlier run left undone: {', '.join(left)}"
            logger.info(message)
            return {"status": "finished", "data_version": version, "committed": committed, "message": message}
        if params.push:
            push.with_options(**remote)(root, wait)
        train_all(root, params, f"prefect-{flow_run.id or time.strftime('%Y%m%dT%H%M%S')}", stale, remote)
        committed = finish(root, version, params, ["push", "commit"], remote)
    registry = json.loads((root / "reports" / "registry.json").read_text())
    message = f"model v{registry['version']} is {registry['alias']}: {registry['reason']}"
    if registry["alias"] == "awaiting_approval":
        from flows.artifacts import publish  # the reviewer sees the decision while the run waits for them

        publish(root, {"status": "trained", "data_version": version, "message": message})
        message = request_approval(root, registry)
    return {"status": "trained", "data_version": version, "committed": committed, "message": message}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", default=".")
    args = parser.parse_args(argv)
    from flows.stack import stack_settings

    with stack_settings(Path(args.workspace)):  # runs show in the stack's Prefect server when one is up
        print(json.dumps(retrain(args.workspace), indent=2))


if __name__ == "__main__":
    main()
