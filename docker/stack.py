"""The production stack on one host without Docker: PostgreSQL, SeaweedFS (S3), MLflow and Prefect.

    python docker/stack.py up       # `make stack`: start or resume everything, write $STACK_DIR/env
    python docker/stack.py down     # `make stack-down`: stop every process `up` started
    python docker/stack.py status
    python docker/stack.py ca       # a local CA for a trial beyond loopback (docker/stack_tls.py)

Settings: docker/stack.env (shared with docker-compose.yml), each overridable by an environment
variable of the same name. Every byte of data lives under STACK_DIR (default .stack/): the
PostgreSQL cluster, the object store, logs, process ids and the generated secrets. As root, the cluster
runs as the postgres user; when that user cannot reach STACK_DIR (root's home is mode 700) the cluster
lives in /var/lib/oralscan-stack/<hash of STACK_DIR> (or STACK_PG_DIR) and $STACK_DIR/postgres links to it. Clients read
$STACK_DIR/env (MLFLOW_TRACKING_URI, PREFECT_API_URL, the DVC remote); the DVC remote's keys go
to .dvc/config.local, never committed. $STACK_DIR/settings records the settings it runs with
(overrides included) for `make backup` / `make restore`. All services listen on STACK_HOST (default 127.0.0.1) only;
beyond loopback only behind TLS (docker/stack_tls.py). Every service asks who you are: the accounts
and where their secrets live are in docker/stack_auth.py.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pipeline.endpoints import read_env_file  # the one reader of KEY=VALUE files (needs `pip install -e .`)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the launcher's sibling modules, also when it is loaded from a file path
import stack_auth  # noqa: E402
import stack_tls  # noqa: E402
from stack_proc import pid_of, stop_group  # noqa: E402
from stack_servers import (client_values, mlflow_env, postgres_url, prefect_env, s3_client,  # noqa: E402,F401
                           start_clinic, start_mlflow, start_prefect, start_s3, start_tls_front)
from stack_tls import inner_host  # noqa: E402
BIN = Path(sys.executable).parent
DAEMONS = ("s3", "mlflow", "prefect", "clinic", "nginx")  # started in their own session: stopping the group stops their children
# PostgreSQL's data when the postgres user cannot reach STACK_DIR (root's home is mode 700): one folder per stack
PG_HOME = Path("/var/lib/oralscan-stack")


def settings() -> dict[str, str]:
    """docker/stack.env, each value overridable from the environment."""
    values = {key: os.environ.get(key, value) for key, value in read_env_file(HERE / "stack.env").items()}
    values["STACK_DIR"] = str(Path(os.environ.get("STACK_DIR", ".stack")).resolve())
    return values


def stack_secrets(d: Path) -> dict[str, str]:
    """The stack's passwords and keys: generated once (mode 600), S3 admin keys from the environment if set."""
    return stack_auth.stack_secrets(d, read_env_file)


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
    write_pg_hba(data)
    if not pg_running(data):
        options = f"-h {inner_host(s)} -p {s['STACK_POSTGRES_PORT']} -c unix_socket_directories=''"
        as_postgres([pg_tool("pg_ctl"), "start", "-w", "-t", "60", "-D", str(data), "-l", str(data / "server.log"),
                     "-o", options])
    create_databases(s, sec)


def write_pg_hba(data: Path) -> None:
    """Passwords only (scram-sha-256), over TCP from this host: no trust, no peer, no socket (clusters made
    by an older launcher are brought to the same rules)."""
    hba = data / "pg_hba.conf"
    hba.write_text("# written by docker/stack.py on every start: password (scram-sha-256) only, TCP from this host\n"
                   "host all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n")
    if os.geteuid() == 0:
        shutil.chown(hba, "postgres", "postgres")
    hba.chmod(0o600)


def pg_running(data: Path) -> bool:
    cmd = [pg_tool("pg_ctl"), "status", "-D", str(data)]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def create_databases(s: dict, sec: dict) -> None:
    import psycopg2

    conn = psycopg2.connect(postgres_url(s, sec, "postgres"))
    conn.autocommit = True
    with conn.cursor() as cur:
        for db in (s["STACK_MLFLOW_DB"], s["STACK_MLFLOW_AUTH_DB"], s["STACK_PREFECT_DB"]):
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{db}"')
    conn.close()


def configure_dvc(s: dict, d: Path, sec: dict, root: Path) -> None:
    """The project's DVC remote becomes the stack's bucket, in .dvc/config.local (the `dvc` identity's keys,
    never committed; the CA to verify the TLS front with, beyond loopback)."""
    if not (root / ".dvc").is_dir():
        return
    dvc, values = [str(BIN / "dvc"), "remote"], client_values(s, d, sec)
    steps = [["add", "--local", "-f", "stack", values["STACK_DVC_REMOTE"]],
             ["modify", "--local", "stack", "endpointurl", values["STACK_S3_ENDPOINT"]],
             ["modify", "--local", "stack", "access_key_id", values["STACK_DVC_ACCESS_KEY_ID"]],
             ["modify", "--local", "stack", "secret_access_key", values["STACK_DVC_SECRET_ACCESS_KEY"]],
             ["default", "--local", "stack"]]
    if values.get("AWS_CA_BUNDLE"):
        steps.insert(-1, ["modify", "--local", "stack", "ssl_verify", values["AWS_CA_BUNDLE"]])
    for step in steps:
        subprocess.run(dvc + step, cwd=root, check=True, capture_output=True)


def write_env(s: dict, d: Path, sec: dict) -> Path:
    """$STACK_DIR/env, mode 600: it holds the pipeline account's credentials."""
    path = d / "env"
    stack_auth.write_private(path, "# written by `make stack` (docker/stack.py); removed by `make stack-down`; "
                             "holds the pipeline's credentials: keep it mode 600\n"
                             + "".join(f"{k}={v}\n" for k, v in client_values(s, d, sec).items()))
    return path


def up(root: Path) -> None:
    s, start = settings(), time.time()
    d = Path(s["STACK_DIR"])
    d.mkdir(parents=True, exist_ok=True)
    stack_tls.tls_files(s, d)  # beyond loopback: TLS or no start, before anything runs
    sec = stack_secrets(d)
    start_postgres(s, d, sec)
    start_s3(s, d, sec)
    start_mlflow(s, d, sec)
    start_prefect(s, d, sec)
    start_clinic(s, d, sec, root)
    start_tls_front(s, d)
    configure_dvc(s, d, sec, root)
    env = write_env(s, d, sec)
    # the settings this stack runs with (environment overrides included), for tools that reach it later
    # without those overrides (pipeline/backup_stack.py: pg_dump, pg_restore, the buckets)
    (d / "settings").write_text("".join(f"{k}={v}\n" for k, v in s.items() if k.startswith("STACK_")))
    print(f"stack up in {time.time() - start:.0f} s; clients read {env}:")
    shown = {k: v for k, v in read_env_file(env).items() if not k.endswith(("PASSWORD", "AUTH_STRING", "SECRET_ACCESS_KEY"))}
    print("".join(f"{k}={v}\n" for k, v in shown.items()), end="")  # the addresses; the credentials stay in the file


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
    parser.add_argument("action", choices=["up", "down", "status", "ca"])
    parser.add_argument("--project", type=Path, default=Path("."), help="the DVC project to point at the stack")
    args = parser.parse_args(argv)
    if args.action == "status":
        status()
    elif args.action == "ca":
        print(f"local CA: {stack_tls.make_ca(Path(settings()['STACK_DIR']))} (for trials; a hospital sets STACK_TLS_CERT/KEY)")
    else:
        (up if args.action == "up" else down)(args.project.resolve())


if __name__ == "__main__":
    main()
