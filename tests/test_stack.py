"""The production stack for real: PostgreSQL, SeaweedFS S3, MLflow and Prefect servers (docker/stack.py).

Each test module starts one stack in a fresh folder on free loopback ports; it is stopped at the
end and every process it started must be gone.
"""
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED, TINY_STACK, free_port, scratch_workspace

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.stack


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def s3_port() -> int:
    """SeaweedFS takes the S3 port, the next four, and each of those + 10000 (gRPC)."""
    for _ in range(200):
        port = random.randrange(20000, 30000)
        if all(port_free(p + k) for p in (port, port + 10000) for k in range(5)):
            return port
    raise RuntimeError("no free block of ports for SeaweedFS")


def sh(cwd: Path, *cmd: str, env: dict | None = None, timeout: int = 900) -> str:
    done = subprocess.run(cmd, cwd=cwd, env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                                             **(env or {})}, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def make_workspace(root: Path, tmp: Path, params: dict = TINY_STACK) -> Path:
    """A scratch copy of the project (git + DVC, no remote: the stack brings its S3), tiny params, demo images."""
    return scratch_workspace(tmp, params, root=root, local_remote=False)


class Stack:
    """One stack: its folder, ports and environment; `up`/`down` run docker/stack.py as `make stack` does."""

    def __init__(self, folder: Path, project: Path, **settings: str):
        self.dir, self.project = folder, project
        self.env = {**settings, "STACK_DIR": str(folder), "STACK_POSTGRES_PORT": str(free_port()), "STACK_S3_PORT": str(s3_port()),
                    "STACK_MLFLOW_PORT": str(free_port()), "STACK_PREFECT_PORT": str(free_port()),
                    "STACK_MLFLOW_WORKERS": "1", "STACK_CLINIC_PORT": str(free_port())}

    def run(self, action: str) -> str:
        return sh(ROOT, str(BIN / "python"), "docker/stack.py", action, "--project", str(self.project),
                  env=self.env, timeout=600)

    def values(self) -> dict[str, str]:
        from pipeline.endpoints import read_env_file

        return {**read_env_file(self.dir / "env"), **read_env_file(self.dir / "secrets")}

    def prefect_auth(self):
        """The Prefect API's basic auth (the stack's auth string), for httpx."""
        import httpx

        return httpx.BasicAuth(*self.values()["PREFECT_API_AUTH_STRING"].split(":", 1))

    def processes(self) -> list:
        """Every process the stack runs: each server's process group and the PostgreSQL postmaster's tree."""
        import psutil

        leaders = [int(p.read_text()) for p in (self.dir / "run").glob("*.pid")]
        leaders.append(int((self.dir / "postgres" / "postmaster.pid").read_text().split()[0]))
        found = []
        for pid in leaders:
            try:
                leader = psutil.Process(pid)
                found += [leader, *leader.children(recursive=True)]
            except psutil.NoSuchProcess:  # e.g. a worker a test killed
                pass
        return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    # the retrain flow runs the pipeline here: no waiting for a quiet folder
    yield from started_stack(tmp_path_factory, {**TINY_STACK, "flow": {"quiet_seconds": 0}})


def started_stack(tmp_path_factory, params: dict, **settings: str):
    """A stack pointed at a fresh workspace with `params`; stopped at the end, every process checked gone."""
    project = make_workspace(tmp_path_factory.mktemp("stack-ws") / "ws", tmp_path_factory.mktemp("params"), params)
    yield from running_stack(project, **settings)


def running_stack(project: Path, prepare=None, **settings: str):
    """A stack in a fresh folder on free ports, pointed at `project` (as `make stack` there), after
    `prepare(stack)` if given; stopped at the end with every process checked gone."""
    # PostgreSQL runs as the postgres user when we are root: its folder's parents must be searchable
    folder = Path(tempfile.mkdtemp(prefix="stack-"))
    folder.chmod(0o755)
    running = Stack(folder / "s", project, **settings)
    if prepare:
        prepare(running)
    start = time.time()
    running.run("up")
    running.first_start = time.time() - start
    signed_in = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    before = {k: os.environ.get(k) for k in signed_in}
    os.environ.update({k: running.values()[k] for k in signed_in})  # this process's MLflow clients: the pipeline
    try:
        yield running
    finally:
        for k, v in before.items():
            os.environ.pop(k, None) if v is None else os.environ.update({k: v})
        try:
            left = running.processes() if (running.dir / "env").exists() else []
        finally:
            running.run("down")
        assert_gone(left)
        shutil.rmtree(folder, ignore_errors=True)


def assert_gone(processes: list, seconds: int = 30) -> None:
    import psutil

    def alive(p) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.time() + seconds
    while time.time() < deadline and any(alive(p) for p in processes):
        time.sleep(0.5)
    assert not [p for p in processes if alive(p)], "processes left after stack down"


def test_compose_file_reads_the_same_settings_as_stack_py():
    """No second set of values: every ${VAR} in docker-compose.yml is a setting of stack.env or a secret."""
    settings = {line.split("=")[0] for line in (ROOT / "docker" / "stack.env").read_text().splitlines()
                if "=" in line and not line.startswith("#")}
    used = set(re.findall(r"\$\{(\w+)", (ROOT / "docker" / "docker-compose.yml").read_text()))
    secrets = {"POSTGRES_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_ADMIN_PASSWORD",
               "MLFLOW_FLASK_SERVER_SECRET_KEY", "PREFECT_AUTH_STRING", "MLFLOW_RELEASE_PASSWORD"}
    assert used - secrets <= settings and {"STACK_MLFLOW_PORT", "STACK_S3_PORT"} <= used
    assert not re.search(r"\b(5000|4200|9000|8333)\b", (ROOT / "docker" / "docker-compose.yml").read_text())


def test_stack_starts_from_nothing_stops_cleanly_and_restarts_on_its_data(stack):
    import mlflow

    values = stack.values()
    print(f"stack start-up from nothing: {stack.first_start:.0f} s")
    mlflow.set_tracking_uri(values["MLFLOW_TRACKING_URI"])
    kept = mlflow.create_experiment("kept across restarts")
    initialised = (stack.dir / "postgres" / "PG_VERSION").stat().st_mtime
    running = stack.processes()
    assert {"weed", "postgres"} <= {p.name() for p in running} and len(running) >= 5
    assert any("clinic" in p.cmdline() for p in running)  # the clinic's page is one of the stack's servers

    stack.run("down")
    assert_gone(running)
    assert not (stack.dir / "env").exists()
    assert "remote = stack" not in (stack.project / ".dvc" / "config.local").read_text()  # back to the committed one

    start = time.time()
    stack.run("up")
    print(f"stack restart on its data: {time.time() - start:.0f} s")
    assert (stack.dir / "postgres" / "PG_VERSION").stat().st_mtime == initialised  # no second initdb
    assert mlflow.get_experiment(kept).name == "kept across restarts"
    import httpx

    pools = httpx.post(f"{values['PREFECT_API_URL']}/work_pools/filter", json={}, auth=stack.prefect_auth()).json()
    assert [p["type"] for p in pools if p["name"] == "training"] == ["process"]


def stack_stores(stack) -> dict[str, list[bytes]]:
    """Everything MLflow and Prefect keep on the stack: both PostgreSQL databases (pg_dump: runs, params,
    tags, registry, Prefect's flow runs, logs and artifacts) and every object of MLflow's bucket."""
    values, s = stack.values(), {**launcher().settings(), **stack.env}
    dump = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_dump"), key=lambda p: int(p.parts[-3]))[-1]
    stores = {}
    for db in (s["STACK_MLFLOW_DB"], s["STACK_PREFECT_DB"]):
        done = subprocess.run([str(dump), "-h", "127.0.0.1", "-p", s["STACK_POSTGRES_PORT"], "-U", s["STACK_POSTGRES_USER"],
                               "--data-only", db], env={**os.environ, "PGPASSWORD": values["POSTGRES_PASSWORD"]},
                              capture_output=True, check=True)
        stores[f"postgres:{db}"] = [done.stdout]
    return {**stores, **bucket_objects(s3_of(values), s["STACK_MLFLOW_BUCKET"])}


def bucket_objects(s3, bucket: str) -> dict[str, list[bytes]]:
    """Each object's key and bytes (zips unpacked), and what base64 inside them holds."""
    from pipeline.privacy import contents

    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                local = Path(tmp) / "object"
                s3.download_file(bucket, obj["Key"], str(local))
                blobs = [obj["Key"].encode(), *contents(local)]
                found[f"s3://{bucket}/{obj['Key']}"] = blobs + [d for blob in blobs for d in base64_runs(blob)]
    return found


def base64_runs(blob: bytes) -> list[bytes]:
    """What base64 inside a file holds (an input example's image, an embedded picture): searched too."""
    import base64
    import binascii

    out = []
    for run in re.findall(rb"[A-Za-z0-9+/]{64,}={0,2}", blob):
        try:
            out.append(base64.b64decode(run + b"=" * (-len(run) % 4)))
        except (binascii.Error, ValueError):
            pass
    return out


def s3_of(values: dict):
    import boto3

    return boto3.client("s3", endpoint_url=values["STACK_S3_ENDPOINT"], region_name="us-east-1",
                        aws_access_key_id=values["AWS_ACCESS_KEY_ID"], aws_secret_access_key=values["AWS_SECRET_ACCESS_KEY"])


def test_demo_pipeline_against_the_stack(stack, tmp_path):
    """Unchanged commands (the retrain flow, dvc, pipeline.predict) find the stack through .stack/env; of the
    planted phone photos (tests/planted.py) nothing identifying reaches MLflow, its bucket or Prefect."""
    import httpx
    import psycopg2

    from tests.planted import plant

    if not (SHARED / "weights" / "keras").is_dir():  # label_review needs ImageNet features
        pytest.skip("shared ImageNet weights not found")
    shutil.copytree(SHARED / "weights" / "keras", tmp_path / "keras")
    ws, values = stack.project, stack.values()
    planted = plant(ws / "data" / "raw")
    env = {"STACK_DIR": str(stack.dir), "KERAS_HOME": str(tmp_path / "keras")}  # as `make stack` left .stack/env
    for name in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        os.environ.pop(name, None)
    out = sh(ws, str(BIN / "python"), "-m", "flows.retrain", "--workspace", str(ws), env=env, timeout=1500)
    assert "Running stage 'register'" in out and "report: privacy check passed" in out, out[-3000:]

    # the planted values, names and thumbnails: none in MLflow's database or bucket, nor in Prefect's database
    stores = stack_stores(stack)
    logs = httpx.post(f"{values['PREFECT_API_URL']}/logs/filter", json={"limit": 200}, auth=stack.prefect_auth()).json()
    prefect_artifacts = httpx.post(f"{values['PREFECT_API_URL']}/artifacts/filter", json={}, auth=stack.prefect_auth()).json()
    assert len(logs) > 20 and {"retrain-decision", "leaderboard"} <= {a["key"] for a in prefect_artifacts}  # not a vacuous search
    assert any(k.endswith("report/index.html") for k in stores) and any(k.endswith("_test_predictions.csv") for k in stores)
    secrets = [v.encode() for v in planted["values"] + planted["names"]] + planted["thumbnails"]
    secrets += [b"Exif\x00\x00", b"Photoshop 3.0\x00"]  # any original's EXIF or IPTC block, planted or not
    def found_in(stores: dict) -> set:
        return {(where, secret[:40]) for where, blobs in stores.items() for secret in secrets
                if any(secret in blob for blob in blobs)}

    assert not found_in(stores), sorted(found_in(stores))
    # the same search does see them where they belong: the DVC remote holds data/raw itself
    in_remote = {secret for _, secret in found_in(bucket_objects(s3_of(values), "dvc"))}
    assert {b"SN-77881299", b"Exif\x00\x00", planted["thumbnails"][0][:40]} <= in_remote, in_remote

    with psycopg2.connect(f"postgresql://mlops:{values['POSTGRES_PASSWORD']}@127.0.0.1:"
                          f"{stack.env['STACK_POSTGRES_PORT']}/mlflow") as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE status = 'FINISHED'")
        assert cur.fetchone()[0] >= 2  # the pipeline's parent run and the SmallCNN run
        cur.execute("SELECT alias, version FROM registered_model_aliases WHERE name = 'oralscan-classifier'")
        assert ("champion", 1) in cur.fetchall()
    s3 = s3_of(values)
    artifacts = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow").get("Contents", [])]
    assert any(k.endswith("model.keras") for k in artifacts), artifacts[:20]
    data = s3.list_objects_v2(Bucket="dvc", MaxKeys=1000).get("KeyCount", 0)
    raw = sum(1 for p in (ws / "data" / "raw").rglob("*") if p.is_file())
    assert data >= raw * 0.8  # every readable image and the stages' outputs (a few demo files are duplicates)
    assert "Cache and remote 'stack' are in sync" in sh(ws, "dvc", "status", "--cloud", env=env)

    # the clinic's page `make stack` started reads this registry (as MLflow's release account)
    subprocess.run([str(BIN / "python"), "-m", "clinic", "--root", str(ws), "users", "add", "dr.stack", "--role",
                    "clinician"], input="stack-pass-123\n", text=True, check=True, capture_output=True)
    clinic = httpx.Client(base_url=values["STACK_CLINIC_URL"], follow_redirects=False, timeout=30)
    token = re.search(r'name="token" value="([^"]+)"', clinic.get("/login").text).group(1)
    assert clinic.post("/login", data={"name": "dr.stack", "password": "stack-pass-123", "token": token}).status_code == 303
    assert "@champion v1" in clinic.get("/approvals").text

    image = next((ws / "data" / "raw" / "cancer").glob("*.png"))
    answer = sh(ws, str(BIN / "python"), "-m", "pipeline.predict", "--model", "models:/oralscan-classifier@champion",
                str(image), env=env)
    assert re.search(r"\t(normal|precancer|cancer)\t(refer|no refer) \(P\(cancer\+precancer\) [0-9.]+ (>=|<) [0-9.]+\)\tnormal=",
                     answer), answer


def launcher():
    import importlib.util

    spec = importlib.util.spec_from_file_location("stack_launcher", ROOT / "docker" / "stack.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cluster_goes_where_the_postgres_user_can_reach_it(tmp_path):
    stack, d = launcher(), tmp_path / "stack"
    assert stack.cluster_place({}, d, reaches=lambda folder: True) == d / "postgres"
    away = stack.cluster_place({}, d, reaches=lambda folder: False, home=tmp_path / "home")
    assert away.parent == tmp_path / "home" and away != stack.cluster_place({}, tmp_path / "other",
                                                                           reaches=lambda f: False, home=tmp_path / "home")
    assert stack.cluster_place({"STACK_PG_DIR": str(tmp_path / "pg")}, d, reaches=lambda f: False) == tmp_path / "pg"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None, reason="the root-only path")
def test_postgres_starts_for_root_in_a_mode_700_folder_and_restarts_from_the_link(tmp_path, monkeypatch, capsys):
    """Root's home is mode 700: the postgres user cannot reach `.stack/postgres` there (issue 21, item 7)."""
    stack = launcher()
    private = Path(tempfile.mkdtemp(prefix="private-"))  # mode 700, like /root
    home = Path(tempfile.mkdtemp(prefix="pg-home-"))
    home.chmod(0o755)
    monkeypatch.setattr(stack, "PG_HOME", home / "oralscan-stack")
    d = private / "stack"
    d.mkdir()
    monkeypatch.setenv("STACK_DIR", str(d))
    monkeypatch.setenv("STACK_POSTGRES_PORT", str(free_port()))
    s, sec = stack.settings(), {"POSTGRES_PASSWORD": "pw"}
    try:
        assert not stack.postgres_reaches(d)
        stack.start_postgres(s, d, sec)
        data = stack.pg_data(d)
        assert (d / "postgres").is_symlink() and data.parent == home / "oralscan-stack"
        assert (data / "PG_VERSION").exists() and stack.pg_running(data)
        assert f"PostgreSQL's data: {data}" in capsys.readouterr().out
        initialised = (data / "PG_VERSION").stat().st_mtime
        stack.down(tmp_path)  # `make stack-down` follows the link
        assert not stack.pg_running(data)
        stack.start_postgres(s, d, sec)  # a restart finds the same cluster: no second initdb
        assert stack.pg_running(data) and (data / "PG_VERSION").stat().st_mtime == initialised
    finally:
        if (d / "postgres").exists() and stack.pg_running(stack.pg_data(d)):
            stack.as_postgres([stack.pg_tool("pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(stack.pg_data(d))])
        shutil.rmtree(private, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


SECRET_NAMES = ("PASSWORD", "SECRET_ACCESS_KEY", "AUTH_STRING", "SECRET_KEY")


def leaks(stack, extra: dict[str, str] | None = None) -> list[str]:
    """Where a secret of the stack shows up: its logs, its servers' command lines (`ps` shows them to every
    user), the MLflow and Prefect databases (runs' params and tags, flow runs, logs). Each place names the
    secret, never its value."""
    import psutil

    values = {k: v for k, v in stack.values().items() if k.endswith(SECRET_NAMES) and len(v) >= 8}
    values["the Prefect password"] = values["PREFECT_AUTH_STRING"].split(":", 1)[1]
    places = {f"log {p.name}": p.read_text(errors="replace") for p in (stack.dir / "log").glob("*")} | (extra or {})
    places.update({f"the command line of {p.pid}": " ".join(p.cmdline()) for p in stack.processes()
                   if p.is_running() and p.status() != psutil.STATUS_ZOMBIE})
    sh_env = {"PGPASSWORD": values["POSTGRES_PASSWORD"]}
    pg_dump = launcher().pg_tool("pg_dump")
    for db in ("mlflow", "prefect"):
        places[f"the {db} database"] = sh(stack.dir, pg_dump, "-h", "127.0.0.1", "-p", stack.env["STACK_POSTGRES_PORT"],
                                          "-U", "mlops", "--data-only", db, env=sh_env)
    return [f"{name} in {place}" for name, value in values.items() for place, text in places.items() if value in text]


def test_every_service_asks_who_you_are_and_each_account_does_only_its_job(stack):
    """Issue 21 item 3 on loopback: no request without credentials; S3 identities per purpose; the viewer
    cannot move @champion, the release role can; PostgreSQL takes passwords only; secrets are mode 600."""
    import boto3
    import httpx
    import psycopg2
    from botocore.exceptions import ClientError
    from mlflow.tracking import MlflowClient

    values = stack.values()
    ml, api, s3 = values["MLFLOW_TRACKING_URI"], values["PREFECT_API_URL"], values["STACK_S3_ENDPOINT"]
    assert httpx.get(f"{ml}/api/2.0/mlflow/experiments/search?max_results=1").status_code == 401
    assert httpx.get(f"{ml}/api/2.0/mlflow/experiments/search?max_results=1", auth=("viewer", "wrong")).status_code == 401
    assert httpx.post(f"{api}/flows/filter", json={}).status_code == 401
    assert httpx.post(f"{api}/flows/filter", json={}, auth=("oralscan", "wrong")).status_code == 401
    assert httpx.post(f"{api}/flows/filter", json={}, auth=stack.prefect_auth()).status_code == 200
    assert httpx.get(f"{s3}/dvc").status_code == 403 and httpx.put(f"{s3}/dvc/anonymous", content=b"x").status_code == 403

    def may(identity: str, bucket: str, action: str) -> bool:
        client = boto3.client("s3", endpoint_url=s3, region_name="us-east-1",
                              aws_access_key_id=values[f"S3_{identity}_ACCESS_KEY_ID"],
                              aws_secret_access_key=values[f"S3_{identity}_SECRET_ACCESS_KEY"])
        try:
            client.put_object(Bucket=bucket, Key="probe", Body=b"1") if action == "write" else client.list_objects_v2(Bucket=bucket)
            return True
        except ClientError as e:
            assert e.response["Error"]["Code"] == "AccessDenied"
            return False

    allowed = {(i, b, a) for i in ("DVC", "READER", "MLFLOW") for b in ("dvc", "mlflow") for a in ("read", "write")
               if may(i, b, a)}
    assert allowed == {("DVC", "dvc", "read"), ("DVC", "dvc", "write"), ("READER", "dvc", "read"),
                       ("MLFLOW", "mlflow", "read"), ("MLFLOW", "mlflow", "write")}

    def client(user: str) -> MlflowClient:
        os.environ.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=values[f"MLFLOW_{user.upper()}_PASSWORD"])
        return MlflowClient(ml)

    try:
        pipeline = client("pipeline")
        run = pipeline.create_run(pipeline.create_experiment("roles"))
        pipeline.create_registered_model("roles-model")
        v1, v2 = (pipeline.create_model_version("roles-model", f"runs:/{run.info.run_id}/m", run.info.run_id).version
                  for _ in range(2))
        pipeline.set_registered_model_alias("roles-model", "champion", v1)
        viewer = client("viewer")
        assert viewer.get_registered_model("roles-model").aliases == {"champion": v1}  # may read
        for write in (lambda: viewer.set_registered_model_alias("roles-model", "champion", v2),
                      lambda: viewer.create_run(run.info.experiment_id)):
            with pytest.raises(Exception, match="403"):
                write()
        release = client("release")
        release.set_registered_model_alias("roles-model", "champion", v2)
        assert release.get_registered_model("roles-model").aliases == {"champion": v2}
        with pytest.raises(Exception, match="403"):
            release.create_run(run.info.experiment_id)  # moves aliases, logs nothing
    finally:
        os.environ.update(MLFLOW_TRACKING_USERNAME="pipeline", MLFLOW_TRACKING_PASSWORD=values["MLFLOW_PIPELINE_PASSWORD"])

    rules = [line.split() for line in (stack.dir / "postgres" / "pg_hba.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules and all(r[0] == "host" and r[-1] == "scram-sha-256" for r in rules)
    port = stack.env["STACK_POSTGRES_PORT"]
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(f"postgresql://mlops:wrong@127.0.0.1:{port}/mlflow")
    with pytest.raises(psycopg2.OperationalError, match="no password supplied"):
        psycopg2.connect(f"postgresql://mlops@127.0.0.1:{port}/mlflow", passfile="/dev/null")
    for private in ("secrets", "env", "mlflow-auth.ini", "s3.json"):
        assert (stack.dir / private).stat().st_mode & 0o777 == 0o600, private


def test_no_credential_in_logs_runs_or_command_lines(stack):
    """After the demo pipeline ran against the stack (the test above): no secret in any log, database or `ps`."""
    assert leaks(stack) == []
    planted = stack.dir / "log" / "planted.log"  # the search finds one where it is
    planted.write_text(f"connecting with {stack.values()['MLFLOW_RELEASE_PASSWORD']}\n")
    try:
        assert leaks(stack) == ["MLFLOW_RELEASE_PASSWORD in log planted.log"]
    finally:
        planted.unlink()
