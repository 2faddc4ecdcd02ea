"""The stack's server processes (docker/stack.py): each started in its own session, so that stopping its
process group also stops the children it started (MLflow's gunicorn workers, Prefect's services);
a pid file per server under $STACK_DIR/run, logs under $STACK_DIR/log."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


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


def wait_for(url: str, seconds: int, name: str, d: Path, verify: str | bool = True) -> None:
    import httpx

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2, verify=verify).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if not pid_of(d, name):
            break
        time.sleep(0.5)
    log = (d / "log" / f"{name}.log").read_text(errors="replace")[-3000:]
    sys.exit(f"{name} did not answer at {url} within {seconds} s; the end of {d / 'log' / name}.log:\n{log}")


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

