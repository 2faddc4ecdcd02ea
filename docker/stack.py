"""The production stack on one host without Docker: PostgreSQL, SeaweedFS (S3), MLflow and Prefect.

    python docker/stack.py up       # `make stack`: start or resume everything, write $STACK_DIR/env
    python docker/stack.py down     # `make stack-down`: stop every process `up` started
    python docker/stack.py status

Settings: docker/stack.env (shared with docker-compose.yml), each overridable by an environment
variable of the same name. Every byte of data lives under STACK_DIR (default .stack/): the
PostgreSQL cluster, the object store, logs, process ids and the generated secrets. As root, the cluster
runs as the postgres user; when that user cannot reach STACK_DIR (root's home is mode 700) the cluster
lives in /var/lib/oralscan-stack/<hash of STACK_DIR> (or STACK_PG_DIR) and $STACK_DIR/postgres links to it. Clients read
$STACK_DIR/env (MLFLOW_TRACKING_URI, PREFECT_API_URL, the DVC remote); the DVC remote's keys go
to .dvc/config.local, never committed. $STACK_DIR/settings records the settings it runs with
(overrides included) for `make backup` / `make restore`. All services listen on STACK_HOST (default 127.0.0.1) only.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.endpoints import read_env_file  # the one reader of KEY=VALUE files (needs `pip install -e .`)
from pipeline.telemetry import SETTINGS as TELEMETRY_OFF  # every server and worker: nothing calls home

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
DAEMONS = ("s3", "mlflow", "prefect")  # started in their own session: stopping the group stops their children
# PostgreSQL's data when the postgres user cannot reach STACK_DIR (root's home is mode 700): one folder per stack
PG_HOME = Path("/var/lib/oralscan-stack")


def settings() -> dict[str, str]:
    """docker/stack.env, each value overridable from the environment."""
    values = {key: os.environ.get(key, value) for key, value in read_env_file(HERE / "stack.env").items()}
    values["STACK_DIR"] = str(Path(os.environ.get("STACK_DIR", ".stack")).resolve())
    return values


def stack_secrets(d: Path) -> dict[str, str]:
    """The stack's passwords and S3 keys: generated once (mode 600), S3 keys taken from the environment if set."""
    path = d / "secrets"
    if not path.exists():
        fresh = {"POSTGRES_PASSWORD": secrets.token_hex(16),
                 "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "stack-" + secrets.token_hex(6)),
                 "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", secrets.token_hex(20))}
        path.touch(mode=0o600)
        path.write_text("".join(f"{k}={v}\n" for k, v in fresh.items()))
    return read_env_file(path)


def pg_tool(name: str) -> str:
    """A PostgreSQL server binary: Debian keeps them under /usr/lib/postgresql/<version>/bin."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if found:
        return str(found[-1])
    if shutil.which(name):
        return shutil.which(name)
    sys.exit(f"PostgreSQL's {name} not found: apt-get install -y postgresql")


def as_postgres(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """initdb and the server refuse to run as root: run them as the postgres user then."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")
    return done


def postgres_reaches(folder: Path) -> bool:
    """As root, initdb and the server run as the postgres user: can it search `folder` (so every parent too)?"""
    if os.geteuid() != 0:
        return True
    return subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(folder)]).returncode == 0


def pg_data(d: Path) -> Path:
    """The cluster's folder: $STACK_DIR/postgres, or where that link points (recorded by the first `up`)."""
    return (d / "postgres").resolve()


def cluster_place(s: dict, d: Path, reaches=postgres_reaches, home: Path | None = None) -> Path:
    """Where a new cluster goes: STACK_PG_DIR if set, else $STACK_DIR/postgres when the postgres user can
    reach it, else home/<hash of STACK_DIR> (a folder of its own for each stack)."""
    if s.get("STACK_PG_DIR"):
        return Path(s["STACK_PG_DIR"]).resolve()
    if reaches(d):
        return d / "postgres"
    return (home or PG_HOME) / hashlib.sha256(str(d).encode()).hexdigest()[:16]


def start_postgres(s: dict, d: Path, sec: dict) -> None:
    link = d / "postgres"
    if not link.is_symlink() and not (link / "PG_VERSION").exists():  # no cluster recorded yet
        if link.is_dir() and not any(link.iterdir()):
            link.rmdir()  # left by a start that failed before initdb
        place = cluster_place(s, d)
        if place != link:
            if place.parent == PG_HOME:
                PG_HOME.mkdir(mode=0o755, exist_ok=True)
                PG_HOME.chmod(0o755)  # searchable by the postgres user whatever the umask
            link.symlink_to(place, target_is_directory=True)  # the record: `down` and restarts follow it
    data = pg_data(d)
    if not (data / "PG_VERSION").exists():
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
            data.chmod(0o700)
            check = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(data)])
            if check.returncode != 0:
                sys.exit(f"the postgres user cannot write {data}: its parent folders must be searchable by others "
                         "(or set STACK_PG_DIR to a folder it can reach)")
        pwfile = data.with_name(data.name + ".pgpass.tmp")  # initdb reads it: a file its user can open
        pwfile.touch(mode=0o600)
        pwfile.write_text(sec["POSTGRES_PASSWORD"] + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres")
        try:
            as_postgres([pg_tool("initdb"), "-D", str(data), "-U", s["STACK_POSTGRES_USER"], f"--pwfile={pwfile}",
                         "--auth=scram-sha-256", "-E", "UTF8", "--no-locale"])
        finally:
            pwfile.unlink()
    if link.is_symlink():
        print(f"PostgreSQL's data: {data}, outside the stack's folder ({link} links to it)")
    if not pg_running(data):
        options = f"-h {s['STACK_HOST']} -p {s['STACK_POSTGRES_PORT']} -c unix_socket_directories=''"
        as_postgres([pg_tool("pg_ctl"), "start", "-w", "-t", "60", "-D", str(data), "-l", str(data / "server.log"),
                     "-o", options])
    create_databases(s, sec)


def pg_running(data: Path) -> bool:
    cmd = [pg_tool("pg_ctl"), "status", "-D", str(data)]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def postgres_url(s: dict, sec: dict, db: str, driver: str = "postgresql") -> str:
    user, host = f"{s['STACK_POSTGRES_USER']}:{sec['POSTGRES_PASSWORD']}", f"{s['STACK_HOST']}:{s['STACK_POSTGRES_PORT']}"
    return f"{driver}://{user}@{host}/{db}"


def create_databases(s: dict, sec: dict) -> None:
    import psycopg2

    conn = psycopg2.connect(postgres_url(s, sec, "postgres"))
    conn.autocommit = True
    with conn.cursor() as cur:
        for db in (s["STACK_MLFLOW_DB"], s["STACK_PREFECT_DB"]):
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{db}"')
    conn.close()


def pid_of(d: Path, name: str) -> int | None:
    path = d / "run" / f"{name}.pid"
    if not path.exists():
        return None
    import psutil

    pid = int(path.read_text())
    try:  # a server that exited stays a zombie until its parent (maybe this process) reaps it
        return pid if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE else None
    except psutil.NoSuchProcess:
        return None


def start_daemon(d: Path, name: str, cmd: list[str], env: dict, cwd: Path | None = None) -> bool:
    """Start a server in its own session (so its children are stopped with it); False when already running."""
    if pid_of(d, name):
        return False
    (d / "run").mkdir(exist_ok=True)
    (d / "log").mkdir(exist_ok=True)
    with open(d / "log" / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd or d)
    (d / "run" / f"{name}.pid").write_text(str(proc.pid))
    return True


def wait_for(url: str, seconds: int, name: str, d: Path) -> None:
    import httpx

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if not pid_of(d, name):
            break
        time.sleep(0.5)
    log = (d / "log" / f"{name}.log").read_text(errors="replace")[-3000:]
    sys.exit(f"{name} did not answer at {url} within {seconds} s; the end of {d / 'log' / name}.log:\n{log}")


def start_s3(s: dict, d: Path, sec: dict) -> None:
    port = int(s["STACK_S3_PORT"])
    (d / "s3").mkdir(exist_ok=True)
    host = s["STACK_HOST"]
    cmd = [str(BIN / "weed"), "mini", f"-dir={d / 's3'}", f"-ip={host}", f"-ip.bind={host}", f"-s3.port={port}",
           f"-master.port={port + 1}", f"-volume.port={port + 2}", f"-filer.port={port + 3}",
           f"-admin.port={port + 4}", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
           "-master.telemetry=false", f"-bucket={s['STACK_MLFLOW_BUCKET']},{s['STACK_DVC_BUCKET']}"]
    keys = {k: sec[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    start_daemon(d, "s3", cmd, keys)
    wait_for(f"http://{host}:{port}/", 120, "s3", d)
    wait_for_buckets(s, sec, d)


def s3_client(s: dict, sec: dict):
    import boto3

    return boto3.client("s3", endpoint_url=f"http://{s['STACK_HOST']}:{s['STACK_S3_PORT']}", region_name="us-east-1",
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


def mlflow_env(s: dict, sec: dict) -> dict:
    # job execution (huey consumers) serves GenAI features this project does not use
    return {**TELEMETRY_OFF, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PATH": f"{BIN}:{os.environ['PATH']}",
            "MLFLOW_S3_ENDPOINT_URL": f"http://{s['STACK_HOST']}:{s['STACK_S3_PORT']}",
            **{k: sec[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}}


def start_mlflow(s: dict, d: Path, sec: dict) -> None:
    port = s["STACK_MLFLOW_PORT"]
    cmd = [str(BIN / "mlflow"), "server", "--host", s["STACK_HOST"], "--port", port,
           "--workers", s["STACK_MLFLOW_WORKERS"],
           "--backend-store-uri", postgres_url(s, sec, s["STACK_MLFLOW_DB"], "postgresql+psycopg2"),
           "--artifacts-destination", f"s3://{s['STACK_MLFLOW_BUCKET']}", "--serve-artifacts"]
    start_daemon(d, "mlflow", cmd, mlflow_env(s, sec))
    wait_for(f"http://{s['STACK_HOST']}:{port}/health", 240, "mlflow", d)


def prefect_env(s: dict, d: Path) -> dict:
    return {"PREFECT_API_URL": f"http://{s['STACK_HOST']}:{s['STACK_PREFECT_PORT']}/api",
            "PREFECT_HOME": str(d / "prefect"),
            **TELEMETRY_OFF, "PATH": f"{BIN}:{os.environ['PATH']}"}


def start_prefect(s: dict, d: Path, sec: dict) -> None:
    port = s["STACK_PREFECT_PORT"]
    env = {**prefect_env(s, d), "PREFECT_SERVER_API_HOST": s["STACK_HOST"], "PREFECT_SERVER_API_PORT": port,
           "PREFECT_API_DATABASE_CONNECTION_URL": postgres_url(s, sec, s["STACK_PREFECT_DB"], "postgresql+asyncpg")}
    cmd = [str(BIN / "prefect"), "server", "start", "--host", s["STACK_HOST"], "--port", port]
    start_daemon(d, "prefect", cmd, env)
    wait_for(f"http://{s['STACK_HOST']}:{port}/api/health", 240, "prefect", d)
    pool = s["STACK_WORK_POOL"]
    env = {**os.environ, **prefect_env(s, d)}
    if subprocess.run([str(BIN / "prefect"), "work-pool", "inspect", pool], env=env, capture_output=True).returncode:
        subprocess.run([str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process"], env=env,
                       capture_output=True, check=True)
    crash_silent_runs(s)
    for i in range(int(s["STACK_WORKERS"])):
        start_worker(s, d, sec, f"worker-{i}")


def client_values(s: dict) -> dict:
    """What every client needs to find the stack: the contents of $STACK_DIR/env."""
    return {"MLFLOW_TRACKING_URI": f"http://{s['STACK_HOST']}:{s['STACK_MLFLOW_PORT']}",
            "PREFECT_API_URL": f"http://{s['STACK_HOST']}:{s['STACK_PREFECT_PORT']}/api",
            "STACK_DVC_REMOTE": f"s3://{s['STACK_DVC_BUCKET']}/",
            "STACK_S3_ENDPOINT": f"http://{s['STACK_HOST']}:{s['STACK_S3_PORT']}",
            "STACK_WORK_POOL": s["STACK_WORK_POOL"]}


def start_worker(s: dict, d: Path, sec: dict, name: str) -> None:
    """A Prefect worker taking one flow run at a time; each run clones the code into its own folder.
    It holds the S3 keys (for `dvc pull/push`); heartbeats let the server notice when it dies."""
    folder, label = d / "workers" / name, f"{os.uname().nodename}-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    env = {**prefect_env(s, d), **client_values(s), "WORKER_NAME": label, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
           "TF_CPP_MIN_LOG_LEVEL": "2", **{k: sec[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}}
    cmd = [str(BIN / "prefect"), "worker", "start", "--pool", s["STACK_WORK_POOL"], "--name", label, "--limit", "1"]
    if start_daemon(d, name, cmd, env, cwd=folder):
        print(f"worker {name} started (folder {folder})")


def crash_silent_runs(s: dict) -> None:
    """A Prefect automation: a flow run whose heartbeats stop for 90 s (its worker died) is marked Crashed."""
    import httpx

    api = f"http://{s['STACK_HOST']}:{s['STACK_PREFECT_PORT']}/api"
    name = "crash flow runs whose worker died"
    if any(a["name"] == name for a in httpx.post(f"{api}/automations/filter", json={}).json()):
        return
    ends = [f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled", "Crashed")]
    automation = {"name": name, "enabled": True,
                  "trigger": {"type": "event", "posture": "Proactive", "after": ["prefect.flow-run.heartbeat"],
                              "expect": ["prefect.flow-run.heartbeat", *ends],
                              "match": {"prefect.resource.id": ["prefect.flow-run.*"]},
                              "for_each": ["prefect.resource.id"], "threshold": 1, "within": 90},
                  "actions": [{"type": "change-flow-run-state", "state": "CRASHED",
                               "message": "no heartbeat for 90 s: the worker running it died"}]}
    httpx.post(f"{api}/automations/", json=automation).raise_for_status()


def configure_dvc(s: dict, sec: dict, root: Path) -> None:
    """The project's DVC remote becomes the stack's bucket, in .dvc/config.local (keys included, never committed)."""
    if not (root / ".dvc").is_dir():
        return
    dvc = [str(BIN / "dvc"), "remote"]
    steps = [["add", "--local", "-f", "stack", f"s3://{s['STACK_DVC_BUCKET']}/"],
             ["modify", "--local", "stack", "endpointurl", f"http://{s['STACK_HOST']}:{s['STACK_S3_PORT']}"],
             ["modify", "--local", "stack", "access_key_id", sec["AWS_ACCESS_KEY_ID"]],
             ["modify", "--local", "stack", "secret_access_key", sec["AWS_SECRET_ACCESS_KEY"]],
             ["default", "--local", "stack"]]
    for step in steps:
        subprocess.run(dvc + step, cwd=root, check=True, capture_output=True)


def write_env(s: dict, d: Path) -> Path:
    path = d / "env"
    path.write_text("# written by `make stack` (docker/stack.py); removed by `make stack-down`\n"
                    + "".join(f"{k}={v}\n" for k, v in client_values(s).items()))
    return path


def up(root: Path) -> None:
    s, start = settings(), time.time()
    d = Path(s["STACK_DIR"])
    d.mkdir(parents=True, exist_ok=True)
    sec = stack_secrets(d)
    start_postgres(s, d, sec)
    start_s3(s, d, sec)
    start_mlflow(s, d, sec)
    start_prefect(s, d, sec)
    configure_dvc(s, sec, root)
    env = write_env(s, d)
    # the settings this stack runs with (environment overrides included), for tools that reach it later
    # without those overrides (pipeline/backup_stack.py: pg_dump, pg_restore, the buckets)
    (d / "settings").write_text("".join(f"{k}={v}\n" for k, v in s.items() if k.startswith("STACK_")))
    print(f"stack up in {time.time() - start:.0f} s; clients read {env}:")
    print(env.read_text().split("\n", 1)[1], end="")


def stop_group(d: Path, name: str, seconds: int = 30) -> None:
    """SIGTERM the process group, SIGKILL whatever is left after `seconds`."""
    pid = pid_of(d, name)
    if pid:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.time() + seconds
        while time.time() < deadline and group_alive(pid):
            time.sleep(0.3)
        if group_alive(pid):
            os.killpg(pid, signal.SIGKILL)
    (d / "run" / f"{name}.pid").unlink(missing_ok=True)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # a killed leader stays a zombie until reaped; it was started by an earlier `up`, so it is init's to reap
    import psutil

    return any(p.info["status"] != psutil.STATUS_ZOMBIE for p in psutil.process_iter(["status"])
               if _pgid(p.pid) == pgid)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def down(root: Path) -> None:
    s = settings()
    d = Path(s["STACK_DIR"])
    if not d.is_dir():
        print(f"no stack at {d}")
        return
    workers = sorted(p.stem for p in (d / "run").glob("worker-*.pid")) if (d / "run").is_dir() else []
    for name in (*workers, *reversed(DAEMONS)):
        stop_group(d, name)
    if (pg_data(d) / "PG_VERSION").exists() and pg_running(pg_data(d)):
        as_postgres([pg_tool("pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(pg_data(d))])
    if (root / ".dvc" / "config.local").exists():  # back to the committed default remote
        subprocess.run([str(BIN / "dvc"), "remote", "default", "--local", "--unset"], cwd=root, capture_output=True)
    (d / "env").unlink(missing_ok=True)
    print(f"stack stopped; its data stays in {d}" + (f" and {pg_data(d)}" if (d / "postgres").is_symlink() else ""))


def status() -> None:
    s = settings()
    d = Path(s["STACK_DIR"])
    workers = sorted(p.stem for p in (d / "run").glob("worker-*.pid")) if (d / "run").is_dir() else []
    for name in (*DAEMONS, *workers):
        print(f"{name:8} {'running, pid ' + str(pid_of(d, name)) if pid_of(d, name) else 'stopped'}")
    pg = pg_data(d)
    print(f"{'postgres':8} {'running' if (pg / 'PG_VERSION').exists() and pg_running(pg) else 'stopped'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--project", type=Path, default=Path("."), help="the DVC project to point at the stack")
    args = parser.parse_args(argv)
    if args.action == "status":
        status()
    else:
        (up if args.action == "up" else down)(args.project.resolve())


if __name__ == "__main__":
    main()
