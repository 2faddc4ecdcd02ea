"""Training beyond one machine: each `train@<arch>` as its own flow run on a worker of the work pool.

With `flow.train_on: workers` the retrain flow deploys `train_one` from git at the exact commit of
its workspace (the deployment's pull step clones it on the worker), pushes the stage inputs to
the DVC remote and starts one flow run per architecture with `run_deployment`. A worker's run
`dvc pull`s the stage's dependencies from the S3 remote, runs `dvc repro --single-item
train@<arch>` (logging to MLflow under the pipeline's parent run) and pushes the model and DVC's
run-cache. The parent then restores each model from the run-cache instead of training it, so
dvc.lock stays the single record. Workers need, in their environment, what `make stack` writes
to .stack/env plus the S3 keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.commands import StageFailed, dvc, git, summary_lines
from flows.prefect_api import rename_run
from pipeline.endpoints import endpoint

ENTRYPOINT = "flows/train_on_workers.py:train_one"
CODE = ("pipeline", "flows", "dvc.yaml", "params.yaml")  # what a worker takes from git, so must be committed


def stage_inputs(root: Path, stage: str) -> list[str]:
    """The stage's dependencies that DVC tracks (data and upstream outputs), not the code git carries."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        (target,) = repo.stage.collect(stage)
        tracked = {out.fs_path for s in repo.index.stages for out in s.outs}
        return sorted(os.path.relpath(dep.fs_path, root) for dep in target.deps if dep.fs_path in tracked)


def use_stack_remote(root: Path, timeout: float) -> None:
    """This clone's DVC remote: the stack's bucket (keys from the environment or the env file, never from git)."""
    remote, s3 = endpoint("STACK_DVC_REMOTE", root), endpoint("STACK_S3_ENDPOINT", root)
    if not remote:
        raise StageFailed("no DVC remote for this worker: set STACK_DVC_REMOTE and STACK_S3_ENDPOINT (.stack/env)")
    dvc(root, "remote", "add", "--local", "-f", "-d", "stack", remote, timeout=timeout)
    dvc(root, "remote", "modify", "--local", "stack", "endpointurl", s3, timeout=timeout)
    if endpoint("AWS_CA_BUNDLE", root):  # the CA of the stack's TLS front
        dvc(root, "remote", "modify", "--local", "stack", "ssl_verify", endpoint("AWS_CA_BUNDLE", root), timeout=timeout)
    # the stack's `dvc` S3 identity, for the dvc commands this process starts: through their environment,
    # never a command line (a failed command's line goes into the flow's log)
    for name, key in (("AWS_ACCESS_KEY_ID", "STACK_DVC_ACCESS_KEY_ID"), ("AWS_SECRET_ACCESS_KEY", "STACK_DVC_SECRET_ACCESS_KEY")):
        if endpoint(key, root) and not os.environ.get(name):
            os.environ[name] = endpoint(key, root)


@flow(name="train", log_prints=True)
def train_one(stage: str, run_id: str, lock: str, data_version_file: str, timeout: float) -> dict:
    """On a worker: one `train@<arch>` in this clone, inputs pulled from and results pushed to the remote."""
    root = Path(__file__).resolve().parents[1]  # the clone the deployment's pull step made
    worker = os.environ.get("WORKER_NAME") or socket.gethostname()
    rename_run(f"{stage} on {worker}")
    logger, start = get_run_logger(), time.time()
    (root / "dvc.lock").write_text(lock)  # the parent's record of the upstream stages it ran
    (root / "data" / "raw.dvc").write_text(data_version_file)
    use_stack_remote(root, timeout)
    dvc(root, "pull", "-q", *stage_inputs(root, stage), timeout=timeout)
    done = dvc(root, "repro", "--single-item", stage, timeout=timeout, env={"PIPELINE_RUN_ID": run_id})
    for line in summary_lines(done.stdout + done.stderr, stage):
        logger.info(line)
    dvc(root, "push", "-q", "--run-cache", stage, timeout=timeout)
    push_uncached_outputs(root, stage)
    logger.info("%s trained on %s in %.0f s; model and run-cache pushed", stage, worker, time.time() - start)
    return {"stage": stage, "worker": worker, "seconds": round(time.time() - start, 1)}


def push_uncached_outputs(root: Path, stage: str) -> None:
    """`dvc push --run-cache` sends the run-cache entry and the cached outputs but not the objects of
    outputs marked `cache: false` (the metrics JSON; DVC 3.67), without which the parent cannot
    restore the stage: push those objects too (the run-cache save put them in this clone's cache)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        (target,) = repo.stage.collect(stage)
        result = repo.cloud.push([out.hash_info for out in target.outs if not out.use_cache and out.hash_info])
    if result.failed:
        raise StageFailed(f"{stage}: could not push {len(result.failed)} output objects to the DVC remote")


def code_commit(root: Path, timeout: float) -> str:
    """The commit workers check out; refused while the code or params differ from it."""
    dirty = git(root, "status", "--porcelain", "--untracked-files=no", "--", *CODE, timeout=timeout).stdout
    if dirty.strip():
        raise StageFailed(f"train_on: workers runs the committed code, but these differ from HEAD:\n{dirty}"
                          "commit them first (and push to the repository the workers clone)")
    return git(root, "rev-parse", "HEAD", timeout=timeout).stdout.strip()


def git_url(root: Path, timeout: float) -> str:
    """The repository workers clone: the workspace's `origin`, else the workspace itself (one host)."""
    done = git(root, "remote", "-v", timeout=timeout).stdout.split()
    return done[done.index("origin") + 1] if "origin" in done else root.as_uri()


def deploy(root: Path, commit: str, timeout: float) -> str:
    """The train flow deployed on the work pool from git at `commit`; returns its name."""
    from prefect.runner.storage import GitRepository

    pool = endpoint("STACK_WORK_POOL", root, "training")
    source = GitRepository(url=git_url(root, timeout), commit_sha=commit)
    name = f"commit-{commit[:12]}"
    train_one.from_source(source, entrypoint=ENTRYPOINT).deploy(name=name, work_pool_name=pool,
                                                               print_next_steps=False)
    return f"train/{name}"


@task(cache_policy=NO_CACHE)
def train_remotely(deployment: str, stage: str, parameters: dict, timeout: float, retries: int) -> str:
    """One architecture as a flow run on any worker; started again up to `retries` times; raises if it fails."""
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    for attempt in range(retries + 1):
        run = run_deployment(deployment, parameters={"stage": stage, **parameters}, timeout=timeout,
                             as_subflow=True)
        if run.state.is_completed():
            logger.info("%s done by flow run '%s'", stage, run.name)
            return run.name
        logger.warning("%s: flow run '%s' ended %s: %s (attempt %d of %d)", stage, run.name, run.state.type.value,
                       run.state.message, attempt + 1, retries + 1)
    raise StageFailed(f"{stage} did not finish on a worker: flow run '{run.name}' ended {run.state.type.value} "
                      f"({run.state.message}); nothing after training ran, so @champion did not move")


def open_parent_run(root: Path, run_id: str, commit: str) -> None:
    """The pipeline's MLflow parent run, made before the workers start (they would race to make it)."""
    from pipeline import tracking
    from pipeline.params import load_params

    tracking.tracking_uri(root)
    experiment = tracking.setup(load_params(root / "params.yaml").train.experiment)
    tracking.parent_run(experiment, run_id, {"data_version": tracking.data_version(root / "data" / "raw.dvc"),
                                             "git_commit": commit})


def train_on_workers(root: Path, stages: list[str], run_id: str, timeout: float, retries: int) -> list[str]:
    """All architectures at once, each on whichever worker takes it; returns the flow runs' names."""
    commit = code_commit(root, timeout)
    open_parent_run(root, run_id, commit)
    deployment = deploy(root, commit, timeout)
    parameters = {"run_id": run_id, "lock": (root / "dvc.lock").read_text(), "timeout": timeout,
                  "data_version_file": (root / "data" / "raw.dvc").read_text()}
    futures = [train_remotely.with_options(name=f"{stage} on a worker").submit(
        deployment, stage, parameters, timeout + 600, retries) for stage in stages]
    return [f.result() for f in futures]
