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
import time
from contextlib import suppress
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flows.commands import StageFailed, dvc, git, run_command, status_json, summary_lines
from flows.prefect_api import rename_run, server_settings
from flows.workspace import (COMMITTED, mark_pushed, newest_change, push_pending, stage_order, validated_version,
                             workspace_lock)
from pipeline import project
from pipeline.params import Flow, load_params

# they talk to the MLflow server: retried (register is idempotent)
REMOTE_STAGES = {"shift", "export", "register", "report"}


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


@task(cache_policy=NO_CACHE)
def unfinished(root: Path, params: Flow) -> list[str]:
    """What an earlier run left undone: results not committed, data or outputs not pushed."""
    left = []
    if params.commit and git(root, "status", "--porcelain", "--", *[p for p in COMMITTED if (root / p).exists()],
                             timeout=params.command_timeout_seconds).stdout.strip():
        left.append("commit")
    if params.push and push_pending(root):
        left.append("push")
    return left


@task(cache_policy=NO_CACHE)
def push(root: Path, timeout: float) -> None:
    dvc(root, "push", "-q", timeout=timeout)
    mark_pushed(root)


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


def finish(root: Path, version: str, params: Flow, left: list[str], remote: dict) -> str:
    """Push and commit (those asked for by `left` and params); returns what the commit did."""
    if params.push and "push" in left:
        push.with_options(**remote)(root, params.command_timeout_seconds)
    if params.commit and "commit" in left:
        return commit(root, version, params.command_timeout_seconds)
    return "commit disabled in params" if not params.commit else "nothing to commit"


def train_all(root: Path, params: Flow, run_id: str, force_validate: bool, remote: dict) -> None:
    timeout, stages = params.stage_timeout_seconds, stage_order(root)
    trains = [s for s in stages if s.startswith("train@")] if params.train_on == "workers" else []
    for stage in stages:
        if trains and stage == trains[0]:  # upstream done: every architecture at once on the workers
            from flows.train_on_workers import train_on_workers

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

    params: Flow = load_params(root / "params.yaml").flow
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
    parser.add_argument("--workspace", help="default: the project this command is run in (the folder holding dvc.yaml)")
    args = parser.parse_args(argv)
    workspace = str(args.workspace or project.root())
    with server_settings(Path(workspace)):  # runs show in the stack's Prefect server when one is up
        print(json.dumps(retrain(workspace), indent=2))


if __name__ == "__main__":
    main()
