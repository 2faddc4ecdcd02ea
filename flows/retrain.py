"""The retrain flow: version new images, run the DVC stages as Prefect tasks, commit the result.

Each task runs one DVC stage through DVC (`dvc repro --single-item`), so dvc.lock stays the
single record and DVC's cache decides what reruns; the task order is DVC's own stage graph.
Prefect adds the schedule, retries on remote services, logs and the UI.

    python -m flows.retrain [--workspace DIR]     # one run, no server needed
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from pipeline.params import Flow, load_section

BIN = Path(sys.executable).parent
REMOTE_STAGES = {"export", "register"}  # they talk to the MLflow server: retried


class StageFailed(RuntimeError):
    pass


def dvc(root: Path, *args: str, env: dict | None = None) -> str:
    """Run a DVC command in the workspace; raise with DVC's own output when it fails."""
    done = subprocess.run([str(BIN / "dvc"), *args], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})})
    if done.returncode != 0:
        raise StageFailed(f"dvc {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-4000:]}")
    return done.stdout + done.stderr


def stage_order(root: Path) -> list[str]:
    """The pipeline's stages in dependency order, read from DVC's graph (dvc.yaml), .dvc files left out."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph
        return [s.addressing for s in reversed(list(nx.topological_sort(graph))) if not s.addressing.endswith(".dvc")]


def newest_change(raw: Path) -> float:
    """Latest creation or modification time under data/raw (ctime catches copies that keep old mtimes)."""
    stamps = [max(p.stat().st_mtime, p.stat().st_ctime) for p in raw.rglob("*") if p.is_file()]
    return max(stamps, default=0.0)


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
def version_data(root: Path) -> str:
    """`dvc add data/raw`: records the folder's content hash in data/raw.dvc; returns it."""
    from pipeline.tracking import data_version

    dvc(root, "add", "-q", "data/raw")
    version = data_version(root / "data" / "raw.dvc")
    get_run_logger().info("data/raw is version %s", version)
    return version


@task(cache_policy=NO_CACHE)
def pipeline_changed(root: Path) -> bool:
    lines = dvc(root, "status", "--json").strip().splitlines()  # warnings may precede the JSON line
    return bool(json.loads(lines[-1] if lines else "{}"))


@task(cache_policy=NO_CACHE)
def push(root: Path) -> None:
    dvc(root, "push", "-q")


@task(cache_policy=NO_CACHE)
def run_stage(root: Path, stage: str, run_id: str) -> None:
    """One DVC stage; DVC skips it when its dependencies did not change."""
    out = dvc(root, "repro", "--single-item", stage, env={"PIPELINE_RUN_ID": run_id})
    get_run_logger().info(out[-3000:])


@task(cache_policy=NO_CACHE)
def commit(root: Path, version: str) -> str:
    """Commit the data version, dvc.lock and the reports so each data version and its model are tied in history."""
    registry = root / "reports" / "registry.json"
    decision = json.loads(registry.read_text()) if registry.exists() else {}
    # folders, not files: git adds what they hold except what is ignored (DVC's outputs), which
    # takes the .gitignore files DVC writes beside its outputs along with data/raw.dvc and the reports
    paths = [p for p in ("dvc.lock", ".gitignore", "data", "reports", "models") if (root / p).exists()]
    git = ["git", "-c", "user.name=retrain flow", "-c", "user.email=retrain@localhost"]
    subprocess.run([*git, "add", "--", *paths], cwd=root, check=True, capture_output=True)
    if subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=root).returncode == 0:
        return "nothing to commit"
    message = f"retrain: data {version[:8]}, model v{decision.get('version', '?')} @{decision.get('alias', '?')}"
    subprocess.run([*git, "commit", "-q", "-m", message], cwd=root, check=True, capture_output=True)
    return message


def rename_run(name: str) -> None:
    """Put the data version in the flow run's name, where the Prefect UI lists runs."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if flow_run.id:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=name)


@flow(name="retrain", log_prints=True)
def retrain(workspace: str = ".") -> dict:
    """Version data/raw, rerun what changed, register the model; end early when nothing changed."""
    from prefect.runtime import flow_run

    root = Path(workspace).resolve()
    params: Flow = load_section("flow", root / "params.yaml")
    logger = get_run_logger()
    with workspace_lock(root, params.lock_timeout_seconds):
        quiet_for = time.time() - newest_change(root / "data" / "raw")
        if quiet_for < params.quiet_seconds:
            message = f"files arrived {quiet_for:.0f}s ago; waiting until data/raw is quiet for {params.quiet_seconds}s"
            logger.info(message)
            return {"status": "waiting", "message": message}
        version = version_data(root)
        rename_run(f"retrain data {version[:8]}")
        if not pipeline_changed(root):
            message = f"nothing changed since the last successful run (data {version[:8]}); nothing trained"
            logger.info(message)
            return {"status": "unchanged", "data_version": version, "message": message}
        remote = {"retries": params.retries,  # for what talks to the DVC remote or the MLflow server
                  "retry_delay_seconds": exponential_backoff(backoff_factor=params.retry_delay_seconds)}
        if params.push:
            push.with_options(**remote)(root)
        run_id = f"prefect-{flow_run.id or time.strftime('%Y%m%dT%H%M%S')}"
        for stage in stage_order(root):
            run_stage.with_options(name=stage, **(remote if stage in REMOTE_STAGES else {"retries": 0}))(
                root, stage, run_id)
        if params.push:
            push.with_options(**remote)(root)
        committed = commit(root, version) if params.commit else "commit disabled in params"
    registry = json.loads((root / "reports" / "registry.json").read_text())
    return {"status": "trained", "data_version": version, "committed": committed,
            "message": f"model v{registry['version']} is @{registry['alias']}: {registry['reason']}"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", default=".")
    args = parser.parse_args(argv)
    print(json.dumps(retrain(args.workspace), indent=2))


if __name__ == "__main__":
    main()
