"""flows.workspace: DVC's stage order, the lock that keeps two runs apart, when files last arrived."""
import os
import subprocess
import sys
import time

import pytest
import yaml

from flows.workspace import newest_change, stage_order, workspace_lock
from tests.conftest import ROOT


def position_of(order: list[str], stage: str) -> int:
    return order.index(stage)


def test_stage_order_is_dvcs_graph():
    order = stage_order(ROOT)
    trains = [f"train@{arch}" for arch in yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["architectures"]]
    assert order[:3] == ["validate", "dedup", "split"]
    assert sorted(order) == sorted(["validate", "dedup", "split", "shift", "augment", *trains, "ensemble",
                                    "evaluate", "cv", "export", "register", "label_review", "report"])  # foreach expanded
    assert max(position_of(order, t) for t in trains) < position_of(order, "ensemble") < position_of(order, "evaluate")
    assert position_of(order, "evaluate") < position_of(order, "cv") < position_of(order, "register")
    position = {stage: i for i, stage in enumerate(order)}
    assert position["augment"] < min(position[t] for t in trains)
    assert max(position[t] for t in trains) < position["evaluate"]
    assert position["evaluate"] < position["export"] < position["register"] < position["report"]
    assert position["label_review"] < position["report"]
    assert position["split"] < position["shift"] < position["register"]


def test_second_run_on_the_same_workspace_is_refused(tmp_path):
    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from flows.workspace import workspace_lock\n"
        f"with workspace_lock(Path({str(tmp_path)!r}), 0):\n    print('held', flush=True); time.sleep(30)")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match="another retrain run holds the lock"):
            with workspace_lock(tmp_path, 0):
                pass
    finally:
        holder.kill()


def test_a_future_timestamp_does_not_hold_runs_back(tmp_path):
    (tmp_path / "normal").mkdir()
    photo = tmp_path / "normal" / "camera clock wrong.jpg"
    photo.write_bytes(b"x")
    os.utime(photo, (time.time() + 86400 * 365, time.time() + 86400 * 365))  # a year ahead
    assert newest_change(tmp_path) <= time.time()
