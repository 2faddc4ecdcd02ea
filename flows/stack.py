"""Prefect clients started by hand (`python -m flows.serve`, `python -m flows.retrain`) find the stack.

`make stack` writes $STACK_DIR/env; Prefect reads its settings once, when it is imported, so the
API URL from that file is applied as a temporary setting around the client's work instead.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

from pipeline.tracking import stack_env


def stack_settings(root: Path = Path(".")):
    """PREFECT_API_URL from the environment, else from the running stack; no server otherwise."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = os.environ.get("PREFECT_API_URL") or stack_env(root).get("PREFECT_API_URL")
    return temporary_settings({PREFECT_API_URL: url}) if url else nullcontext()
