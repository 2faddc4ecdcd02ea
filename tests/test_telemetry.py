"""Nothing calls home (issue 21, item 6): every process the project starts has MLflow's telemetry and
Prefect's analytics off, asked of the libraries themselves rather than read from our own settings."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# run in a fresh interpreter whose environment holds none of the switches (nor CI markers, which
# both libraries also treat as "off"): the project's import must turn them off before MLflow and
# Prefect read them, at their own import
ASK = """
import json, os, sys
import {entry}
import mlflow
from mlflow.telemetry.client import get_telemetry_client
from mlflow.telemetry.utils import is_telemetry_disabled
from prefect._internal.analytics.enabled import is_telemetry_enabled
from prefect.settings import get_current_settings

answers = {{"mlflow_disabled": is_telemetry_disabled(), "mlflow_client": get_telemetry_client() is not None,
            "prefect_sdk_enabled": is_telemetry_enabled(),
            "prefect_server_analytics": get_current_settings().server.analytics_enabled}}
for key in ("DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY"):  # control: without them MLflow would track here
    os.environ.pop(key)
answers["mlflow_disabled_without_switches"] = is_telemetry_disabled()
print(json.dumps(answers))
"""


@pytest.mark.parametrize("entry", ["pipeline.console", "pipeline.predict", "flows.retrain"])
def test_the_projects_entry_points_switch_telemetry_off_before_the_libraries_read_it(entry, tmp_path):
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           "PREFECT_HOME": str(tmp_path / "prefect"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    done = subprocess.run([sys.executable, "-c", ASK.format(entry=entry)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert answers == {"mlflow_disabled": True, "mlflow_client": False, "prefect_sdk_enabled": False,
                       "prefect_server_analytics": False, "mlflow_disabled_without_switches": False}


def test_the_stack_the_makefile_and_compose_set_the_values_the_libraries_honour():
    spec = importlib.util.spec_from_file_location("stack_launcher", ROOT / "docker" / "stack.py")
    stack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stack)
    s = stack.settings()
    sec = stack.stack_auth.fresh_secrets()
    wanted = {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    for env in (stack.mlflow_env(s, Path("/tmp/x"), sec), stack.prefect_env(s, Path("/tmp/x"), sec)):  # servers, workers
        assert wanted.items() <= env.items()

    makefile = (ROOT / "Makefile").read_text()
    for key, value in wanted.items():
        assert re.search(rf"^export {key} := {value}$", makefile, re.M), key

    services = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())["services"]
    assert services["mlflow"]["environment"]["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert services["prefect"]["environment"]["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert services["prefect"]["environment"]["DO_NOT_TRACK"] == "true"

    readme = (ROOT / "README.md").read_text()
    starts = re.findall(r"^.*bin/prefect server start.*$", readme, re.M)
    assert starts
    for line in starts:
        assert "PREFECT_SERVER_ANALYTICS_ENABLED=false" in line, line
