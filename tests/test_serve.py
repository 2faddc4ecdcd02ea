"""flows.serve: both deployments with their schedules on a real Prefect server; one run through it."""
import os
import subprocess
import sys
import time

import pytest



@pytest.mark.slow
def test_deployments_on_a_real_prefect_server(workspace, prefect_server):
    """flows.serve registers both deployments with their schedules; one is run once through the server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    (workspace / "params.yaml").write_text(
        (workspace / "params.yaml").read_text().replace("quiet_seconds: 0", "quiet_seconds: 3600"))
    serving = subprocess.Popen([sys.executable, "-m", "flows.serve", "--workspace", str(workspace)],
                               cwd=workspace, env={**os.environ, **prefect_server})
    # Prefect reads its settings once per process: point this process's client at the test server
    # explicitly, whatever an earlier test (or prefect_test_harness) left in place.
    try:
        with temporary_settings({PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}):
            with get_client(sync_client=True) as client:
                nightly = wait_for_deployment(client, "retrain/nightly")
                assert nightly.schedules[0].schedule.cron == "0 2 * * *"
                # flows.serve registers the two one after the other: wait for each before reading it
                on_new = wait_for_deployment(client, "retrain/on-new-data")
                assert on_new.schedules[0].schedule.interval.total_seconds() == 300
            run = run_deployment("retrain/on-new-data", timeout=180)
            assert run.state.is_completed(), run.state
            with get_client(sync_client=True) as client:
                for _ in range(60):  # run logs are shipped in the background and may trail the final state
                    logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
                    if any("waiting until data/raw is quiet" in log.message for log in logs):
                        break
                    time.sleep(1)
                else:
                    pytest.fail(f"the run's log never said it was waiting: {[log.message for log in logs]}")
    finally:
        serving.terminate()
        serving.wait(timeout=30)


def wait_for_deployment(client, name: str, seconds: int = 90):
    for _ in range(seconds):
        try:
            return client.read_deployment_by_name(name)
        except Exception:  # not registered yet
            time.sleep(1)
    pytest.fail(f"flows.serve did not register {name} in {seconds} s")
