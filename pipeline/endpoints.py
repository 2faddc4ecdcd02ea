"""Where the services are, for every client: the MLflow server, the Prefect API, the DVC bucket.

A variable set in the environment wins; otherwise the value comes from the env file `make stack`
writes for its clients ($STACK_DIR/env, default .stack/env in the project root, found from any
folder of the project: pipeline/project.py); with neither, the local defaults apply (SQLite for
MLflow, no Prefect server). `read_env_file` is the one reader of KEY=VALUE
files in the project: docker/stack.env, the stack's secrets and its client env file.
No service is contacted here.

The env file (mode 600) also holds the pipeline's own sign-in to each service and, when the stack
serves TLS, the CA file clients verify it with: `use_credentials()` puts those into this process's
environment, where MLflow, requests and boto3 read them (never into a run, a tag or a log line).
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline import project


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and lines starting with # are skipped; a value may contain '='."""
    values = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{path}:{number}: expected KEY=VALUE, got {line!r}")
        values[key.strip()] = value.strip()
    return values


def stack_dir(root: Path | None = None) -> Path:
    """The stack's folder: $STACK_DIR, else .stack/ in the project root."""
    return Path(os.environ.get("STACK_DIR") or Path(root or project.root()) / ".stack")


def stack_env(root: Path | None = None) -> dict[str, str]:
    """What `make stack` wrote for its clients; empty when no stack is up."""
    path = stack_dir(root) / "env"
    return read_env_file(path) if path.is_file() else {}


def endpoint(name: str, root: Path | None = None, default: str | None = None) -> str | None:
    """One setting of the stack's clients: the environment, else the running stack, else `default`."""
    return os.environ.get(name) or stack_env(root).get(name, default)


# what the clients of the stack read from its env file besides addresses: the pipeline account's
# MLflow sign-in and the CA bundle of the stack's TLS front (Prefect's auth string goes through
# flows/prefect_api.py, DVC's keys through .dvc/config.local)
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_SERVER_CERT_PATH",
               "AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE")


def use_credentials(root: Path | None = None) -> None:
    """Each of CREDENTIALS from the running stack's env file into os.environ, unless already set there
    (a person's own account, e.g. the release role's, set in the environment wins)."""
    values = stack_env(root)
    for name in CREDENTIALS:
        if values.get(name) and not os.environ.get(name):
            os.environ[name] = values[name]
