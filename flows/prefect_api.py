"""The flows' side of the Prefect API: which server (the environment, else the running stack's
env file, else none: Prefect's ephemeral mode), and naming the current flow run.

Prefect reads its settings once, when it is imported, so the API URL found in the stack's env file
is applied as a temporary setting around the client's work.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from pipeline.endpoints import endpoint


def server_settings(root: Path | None = None):
    """A context with PREFECT_API_URL from the environment or the running stack, with the stack's
    API auth string and the CA its TLS front is verified with; no server otherwise."""
    from prefect.settings import (PREFECT_API_AUTH_STRING, PREFECT_API_SSL_CERT_FILE, PREFECT_API_URL,
                                  temporary_settings)

    url = endpoint("PREFECT_API_URL", root)
    if not url:
        return nullcontext()
    values = {PREFECT_API_URL: url}
    for setting in (PREFECT_API_AUTH_STRING, PREFECT_API_SSL_CERT_FILE):
        if endpoint(setting.name, root):
            values[setting] = endpoint(setting.name, root)
    return temporary_settings(values)


def server_available() -> bool:
    """Whether this process talks to a real Prefect server (pauses and deployments need one)."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def rename_run(name: str) -> None:
    """Put a name (e.g. the data version) on the current flow run, where the Prefect UI lists runs."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if flow_run.id:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=name)
