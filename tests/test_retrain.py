"""flows.retrain: waiting for a copy to finish, the three-run recovery scenario, a failing stage."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import noise_image

BIN = Path(sys.executable).parent


def git(root, *args):
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def test_waits_while_files_are_still_arriving(workspace):
    from prefect.testing.utilities import prefect_test_harness

    from flows.retrain import retrain

    params = (workspace / "params.yaml").read_text().replace("quiet_seconds: 0", "quiet_seconds: 3600")
    (workspace / "params.yaml").write_text(params)
    with prefect_test_harness():
        result = retrain(str(workspace))
    assert result["status"] == "waiting" and "quiet" in result["message"]
    assert not (workspace / "data" / "raw.dvc").exists()  # nothing was versioned or run


def set_params(root: Path, section: str, **values) -> None:
    import yaml

    params = yaml.safe_load((root / "params.yaml").read_text())
    params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def champion_version(client) -> str | None:
    from pipeline.registry.client import alias_version

    return alias_version(client, "oralscan-classifier")


def kill_during(workspace: Path, module_arg: str, seconds: int = 600) -> str:
    """Start `python -m flows.retrain`, SIGKILL it and everything it started once a stage's process runs."""
    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "flows.retrain", "--workspace", str(workspace)], cwd=workspace,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    def cmdline(p) -> str:
        try:
            return " ".join(p.cmdline())
        except psutil.Error:  # gone or a zombie between listing and reading
            return ""

    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        tree = psutil.Process(proc.pid).children(recursive=True)
        if any(module_arg in cmdline(p) for p in tree):
            for p in tree + [psutil.Process(proc.pid)]:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            return proc.communicate()[0]
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"{module_arg} never started: {proc.communicate()[0][-3000:]}")


@pytest.mark.slow
def test_retraining_loop_survives_kills_and_finishes_what_a_failed_run_left(workspace, keras_home):
    """First run without push/commit (as if both failed): the next run, data unchanged, finishes them.
    A failing commit is finished the same way. New images: runs killed (SIGKILL) during training and
    during register leave @champion alone; the next run recovers, decides, and commits."""
    from mlflow.tracking import MlflowClient
    from prefect.testing.utilities import prefect_test_harness

    from flows.retrain import retrain

    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    # one small architecture: this test is about recovery, and it trains three times
    set_params(workspace, "train", architectures={"SmallCNN": {"weights": "none", "image_size": 32}})
    set_params(workspace, "flow", push=False, commit=False)
    with prefect_test_harness():
        first = retrain(str(workspace))
        assert first["status"] == "trained", first
        assert champion_version(client) == "1" and "retrain: data" not in git(workspace, "log", "--format=%s")

        set_params(workspace, "flow", push=True, commit=True)
        hook = workspace / ".git" / "hooks" / "pre-commit"
        hook.write_text("#!/bin/sh\necho 'commit refused by a hook' >&2\nexit 1\n")
        hook.chmod(0o755)
        with pytest.raises(Exception, match="commit refused by a hook"):
            retrain(str(workspace))  # pushes, then the commit fails
        assert not json.loads(subprocess.run([str(BIN / "dvc"), "status", "--cloud", "--json"], cwd=workspace,
                                             capture_output=True, text=True).stdout or "{}")  # the push happened
        hook.unlink()
        finished = retrain(str(workspace))
        assert finished["status"] == "finished" and "commit" in finished["message"], finished
        assert git(workspace, "log", "--format=%s").count("retrain: data") == 1
        assert retrain(str(workspace))["status"] == "unchanged"

    for i in range(6):  # the hospital adds images to one class
        noise_image(900 + i, (140, 140)).save(workspace / "data" / "raw" / "precancer" / f"new case {i}.png")
    for stage in ("pipeline.train --arch SmallCNN", "pipeline.register"):
        kill_during(workspace, stage)
        assert champion_version(client) == "1", f"@champion moved by a run killed during {stage}"
    with prefect_test_harness():
        second = retrain(str(workspace))
    assert second["status"] == "trained" and second["data_version"] != first["data_version"], second
    versions = client.search_model_versions("name = 'oralscan-classifier'")
    decided = [v for v in versions if v.tags.get("decision") in ("champion", "challenger")]
    assert len(decided) == 2 and all(v.tags["data_version"] in (first["data_version"], second["data_version"])
                                     for v in decided)
    registry = json.loads((workspace / "reports" / "registry.json").read_text())
    assert registry["champion_before"]["version"] == 1 and registry["rule"] == "superiority"
    assert (registry["alias"] == "champion") == (champion_version(client) == str(registry["version"]))
    log = git(workspace, "log", "--format=%s")
    assert log.count("retrain: data") == 2  # each data version and its model committed together
    assert "data/raw.dvc" in git(workspace, "ls-files")


def test_a_failing_stage_fails_the_flow_with_the_stages_own_error(workspace):
    from prefect.testing.utilities import prefect_test_harness

    from flows.retrain import StageFailed, retrain

    params = (workspace / "params.yaml").read_text().replace("min_images_per_class: 8", "min_images_per_class: 500")
    (workspace / "params.yaml").write_text(params)
    with prefect_test_harness():
        with pytest.raises(StageFailed, match="every class has at least 500 usable images"):
            retrain(str(workspace))
    assert "retrain: data" not in git(workspace, "log", "--format=%s")  # nothing committed
