"""Nothing calls home: MLflow's telemetry, Prefect's analytics and Great Expectations' usage statistics off.

Each library reads its switch when it is imported (MLflow starts its telemetry client in `import mlflow`,
Prefect its SDK analytics in `import prefect`), so `off()` runs from `pipeline/__init__.py` and
`flows/__init__.py`: before any module of the project imports them. The exact values matter:
MLflow 3 honours `MLFLOW_DISABLE_TELEMETRY=true` or `DO_NOT_TRACK=true` (not `1`); Prefect's client
honours `DO_NOT_TRACK` (`1`, `true` or `yes`), its server `PREFECT_SERVER_ANALYTICS_ENABLED=false`.
The Makefile, docker/stack.py, docker-compose.yml and tests/conftest.py set the same values.
"""
from __future__ import annotations

import os

SETTINGS = {
    "DO_NOT_TRACK": "true",                       # MLflow (only "true") and Prefect's client
    "MLFLOW_DISABLE_TELEMETRY": "true",           # MLflow, even where DO_NOT_TRACK=1 was inherited
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # a Prefect server started from this process
    "GX_ANALYTICS_ENABLED": "False",              # Great Expectations
}


def off() -> None:
    """Set each switch unless the environment already holds a value for it."""
    for key, value in SETTINGS.items():
        os.environ.setdefault(key, value)
