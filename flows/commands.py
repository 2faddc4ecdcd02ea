"""The shell side of the flows: DVC and git commands with timeouts, and what their output says.

Every command runs with this environment's bin folder first on PATH (DVC runs stage commands
through the shell), and is stopped with everything it started when it outlives its timeout.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


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
