"""The stack's servers (docker/stack.py): SeaweedFS S3, MLflow (basic-auth app) and Prefect with its
workers, each on loopback (STACK_HOST itself, or 127.0.0.1 behind the TLS front), plus the front
(docker/stack_tls.py) and what clients read to reach them (`client_values`, the env file)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import stack_auth
import stack_tls
from stack_proc import pid_of, start_daemon, wait_for
from stack_tls import inner_host

from pipeline.telemetry import SETTINGS as TELEMETRY_OFF  # every server and worker: nothing calls home

BIN = Path(sys.executable).parent


def postgres_url(s: dict, sec: dict, db: str, driver: str = "postgresql") -> str:
    user, host = f"{s['STACK_POSTGRES_USER']}:{sec['POSTGRES_PASSWORD']}", f"{inner_host(s)}:{s['STACK_POSTGRES_PORT']}"
    return f"{driver}://{user}@{host}/{db}"


def start_s3(s: dict, d: Path, sec: dict) -> None:
    port = int(s["STACK_S3_PORT"])
    (d / "s3").mkdir(exist_ok=True)
    host = inner_host(s)
    config = stack_auth.write_s3_config(s, d, sec)  # its identities; anonymous requests are refused
    cmd = [str(BIN / "weed"), "mini", f"-dir={d / 's3'}", f"-ip={host}", f"-ip.bind={host}", f"-s3.port={port}",
           f"-s3.config={config}",
           f"-master.port={port + 1}", f"-volume.port={port + 2}", f"-filer.port={port + 3}",
           f"-admin.port={port + 4}", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
           "-master.telemetry=false", f"-bucket={s['STACK_MLFLOW_BUCKET']},{s['STACK_DVC_BUCKET']}"]
    start_daemon(d, "s3", cmd, {})
    wait_for(f"http://{host}:{port}/", 120, "s3", d)
    wait_for_buckets(s, sec, d)


def s3_client(s: dict, sec: dict):
    import boto3

    return boto3.client("s3", endpoint_url=f"http://{inner_host(s)}:{s['STACK_S3_PORT']}", region_name="us-east-1",
                        aws_access_key_id=sec["AWS_ACCESS_KEY_ID"], aws_secret_access_key=sec["AWS_SECRET_ACCESS_KEY"])


def wait_for_buckets(s: dict, sec: dict, d: Path, seconds: int = 60) -> None:
    """weed mini answers HTTP before its filer is ready: wait until both buckets are listed."""
    wanted = {s["STACK_MLFLOW_BUCKET"], s["STACK_DVC_BUCKET"]}
    client, deadline = s3_client(s, sec), time.time() + seconds
    while time.time() < deadline:
        try:
            if wanted <= {b["Name"] for b in client.list_buckets()["Buckets"]}:
                return
        except Exception:  # not ready yet
            pass
        time.sleep(1)
    sys.exit(f"the S3 store never listed the buckets {sorted(wanted)}; see {d / 'log' / 's3.log'}")


def mlflow_env(s: dict, d: Path, sec: dict) -> dict:
    """The server's settings; the database URL (it holds a password) in its environment, not its command line."""
    # job execution (huey consumers) serves GenAI features this project does not use
    return {**TELEMETRY_OFF, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PATH": f"{BIN}:{os.environ['PATH']}",
            "MLFLOW_S3_ENDPOINT_URL": f"http://{inner_host(s)}:{s['STACK_S3_PORT']}",
            "MLFLOW_BACKEND_STORE_URI": postgres_url(s, sec, s["STACK_MLFLOW_DB"], "postgresql+psycopg2"),
            "MLFLOW_AUTH_CONFIG_PATH": str(d / "mlflow-auth.ini"), **stack_auth.s3_keys(sec, "mlflow-artifacts"),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": sec["MLFLOW_FLASK_SERVER_SECRET_KEY"]}


def start_mlflow(s: dict, d: Path, sec: dict) -> None:
    port = s["STACK_MLFLOW_PORT"]
    auth_db = postgres_url(s, sec, s["STACK_MLFLOW_AUTH_DB"], "postgresql+psycopg2")
    stack_auth.write_mlflow_auth_ini(d, auth_db, sec)
    if not pid_of(d, "mlflow"):
        stack_auth.ensure_mlflow_accounts(auth_db, sec)
    cmd = [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", inner_host(s), "--port", port,
           "--workers", s["STACK_MLFLOW_WORKERS"], "--allowed-hosts", f"{s['STACK_HOST']},{s['STACK_HOST']}:{port}",
           "--artifacts-destination", f"s3://{s['STACK_MLFLOW_BUCKET']}", "--serve-artifacts"]
    start_daemon(d, "mlflow", cmd, mlflow_env(s, d, sec))
    wait_for(f"http://{inner_host(s)}:{port}/health", 240, "mlflow", d)


def prefect_env(s: dict, d: Path, sec: dict) -> dict:
    """The Prefect CLI's settings on this host: the API on loopback, with the stack's auth string."""
    return {"PREFECT_API_URL": f"http://{inner_host(s)}:{s['STACK_PREFECT_PORT']}/api",
            "PREFECT_API_AUTH_STRING": sec["PREFECT_AUTH_STRING"], "PREFECT_HOME": str(d / "prefect"),
            **TELEMETRY_OFF, "PATH": f"{BIN}:{os.environ['PATH']}"}


def start_prefect(s: dict, d: Path, sec: dict) -> None:
    port = s["STACK_PREFECT_PORT"]
    env = {**prefect_env(s, d, sec), "PREFECT_SERVER_API_HOST": inner_host(s), "PREFECT_SERVER_API_PORT": port,
           "PREFECT_SERVER_API_AUTH_STRING": sec["PREFECT_AUTH_STRING"],
           "PREFECT_UI_API_URL": client_values(s, d, sec)["PREFECT_API_URL"],
           "PREFECT_API_DATABASE_CONNECTION_URL": postgres_url(s, sec, s["STACK_PREFECT_DB"], "postgresql+asyncpg")}
    cmd = [str(BIN / "prefect"), "server", "start", "--host", inner_host(s), "--port", port]
    start_daemon(d, "prefect", cmd, env)
    wait_for(f"http://{inner_host(s)}:{port}/api/health", 240, "prefect", d)
    pool = s["STACK_WORK_POOL"]
    env = {**os.environ, **prefect_env(s, d, sec)}
    if subprocess.run([str(BIN / "prefect"), "work-pool", "inspect", pool], env=env, capture_output=True).returncode:
        subprocess.run([str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process"], env=env,
                       capture_output=True, check=True)
    crash_silent_runs(s, sec)
    for i in range(int(s["STACK_WORKERS"])):
        start_worker(s, d, sec, f"worker-{i}")


def start_clinic(s: dict, d: Path, sec: dict, root: Path) -> None:
    """The clinic's page (clinic/) for `root`: it reads the registry as MLflow's release account (it may move
    @champion, never log runs; the clinic's own roles decide who may ask it to) and resumes waiting flow runs
    with Prefect's auth string. Its users are its own (python -m clinic users add)."""
    port = s.get("STACK_CLINIC_PORT")
    if not port:
        return
    env = {**prefect_env(s, d, sec), **client_values(s, d, sec), "STACK_DIR": str(d),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1]),  # the app's code: the launcher's checkout
           "MLFLOW_TRACKING_USERNAME": "release", "MLFLOW_TRACKING_PASSWORD": sec["MLFLOW_RELEASE_PASSWORD"]}
    cmd = [str(BIN / "python"), "-m", "clinic", "--root", str(root), "serve", "--host", inner_host(s), "--port", port]
    start_daemon(d, "clinic", cmd, env, cwd=root)
    wait_for(f"http://{inner_host(s)}:{port}/health", 240, "clinic", d)


def client_values(s: dict, d: Path, sec: dict) -> dict:
    """What every client needs to find the stack and sign in as the pipeline: the contents of $STACK_DIR/env
    (mode 600). Beyond loopback the addresses are TLS ones, with the CA file clients verify them with."""
    tls = stack_tls.tls_files(s, d)
    web, host = ("https" if tls else "http"), s["STACK_HOST"]
    return {"MLFLOW_TRACKING_URI": f"{web}://{host}:{s['STACK_MLFLOW_PORT']}",
            "MLFLOW_TRACKING_USERNAME": "pipeline", "MLFLOW_TRACKING_PASSWORD": sec["MLFLOW_PIPELINE_PASSWORD"],
            "PREFECT_API_URL": f"{web}://{host}:{s['STACK_PREFECT_PORT']}/api",
            "PREFECT_API_AUTH_STRING": sec["PREFECT_AUTH_STRING"],
            "STACK_DVC_REMOTE": f"s3://{s['STACK_DVC_BUCKET']}/",
            "STACK_S3_ENDPOINT": f"{web}://{host}:{s['STACK_S3_PORT']}",
            "STACK_DVC_ACCESS_KEY_ID": sec["S3_DVC_ACCESS_KEY_ID"],
            "STACK_DVC_SECRET_ACCESS_KEY": sec["S3_DVC_SECRET_ACCESS_KEY"],
            "STACK_WORK_POOL": s["STACK_WORK_POOL"], **stack_tls.client_tls(tls),
            **({"STACK_CLINIC_URL": f"{web}://{host}:{s['STACK_CLINIC_PORT']}/"} if s.get("STACK_CLINIC_PORT") else {})}


def start_worker(s: dict, d: Path, sec: dict, name: str) -> None:
    """A Prefect worker taking one flow run at a time; each run clones the code into its own folder.
    It signs in as the pipeline (the env file's values, DVC's S3 keys included); heartbeats let the server
    notice when it dies."""
    folder, label = d / "workers" / name, f"{os.uname().nodename}-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    env = {**prefect_env(s, d, sec), **client_values(s, d, sec), "WORKER_NAME": label,
           "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30", "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [str(BIN / "prefect"), "worker", "start", "--pool", s["STACK_WORK_POOL"], "--name", label, "--limit", "1"]
    if start_daemon(d, name, cmd, env, cwd=folder):
        print(f"worker {name} started (folder {folder})")


def crash_silent_runs(s: dict, sec: dict) -> None:
    """A Prefect automation: a flow run whose heartbeats stop for 90 s (its worker died) is marked Crashed."""
    import httpx

    api = f"http://{inner_host(s)}:{s['STACK_PREFECT_PORT']}/api"
    auth = httpx.BasicAuth(*sec["PREFECT_AUTH_STRING"].split(":", 1))
    name = "crash flow runs whose worker died"
    if any(a["name"] == name for a in httpx.post(f"{api}/automations/filter", json={}, auth=auth).json()):
        return
    ends = [f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled", "Crashed")]
    automation = {"name": name, "enabled": True,
                  "trigger": {"type": "event", "posture": "Proactive", "after": ["prefect.flow-run.heartbeat"],
                              "expect": ["prefect.flow-run.heartbeat", *ends],
                              "match": {"prefect.resource.id": ["prefect.flow-run.*"]},
                              "for_each": ["prefect.resource.id"], "threshold": 1, "within": 90},
                  "actions": [{"type": "change-flow-run-state", "state": "CRASHED",
                               "message": "no heartbeat for 90 s: the worker running it died"}]}
    httpx.post(f"{api}/automations/", json=automation, auth=auth).raise_for_status()


def start_tls_front(s: dict, d: Path) -> None:
    """Beyond loopback: nginx on STACK_HOST, TLS in front of each server on 127.0.0.1 (docker/stack_tls.py)."""
    tls = stack_tls.tls_files(s, d)
    if tls:
        start_daemon(d, "nginx", stack_tls.nginx_command(s, d, tls), {})
        wait_for(f"https://{s['STACK_HOST']}:{s['STACK_MLFLOW_PORT']}/health", 30, "nginx", d,
                 verify=tls["ca"] or True)

