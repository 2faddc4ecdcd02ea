"""`dvc repro` on a scratch copy of the project: stages run once, then are skipped; data grows stably."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline.demo import generate
from tests.conftest import ROOT, noise_image, shrink_params, tree_digest

BIN = Path(sys.executable).parent


def sh(cwd: Path, *cmd: str) -> str:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture
def project(tmp_path) -> Path:
    repo = tmp_path / "project"
    repo.mkdir()
    shutil.copytree(ROOT / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", "data/labels/corrections.csv"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, repo / name)
    shutil.copy(shrink_params(tmp_path, validate={"min_images_per_class": 10}), repo / "params.yaml")
    sh(repo, "git", "init", "-q")
    sh(repo, "dvc", "init", "-q")
    sh(repo, "dvc", "config", "core.analytics", "false")
    generate(repo / "data" / "raw", per_class=20, seed=3)
    return repo


@pytest.mark.slow
def test_repro_runs_once_then_skips_and_keeps_splits_as_data_grows(project):
    raw_before = tree_digest(project / "data" / "raw")
    first = sh(project, "dvc", "repro", "split")
    assert "Running stage 'split'" in first
    second = sh(project, "dvc", "repro", "split")
    assert "Running stage" not in second
    assert "up to date" in sh(project, "dvc", "status", "split")  # split and everything upstream of it
    assert tree_digest(project / "data" / "raw") == raw_before

    before = pd.read_csv(project / "data" / "splits" / "split.csv")
    for i in range(6):
        noise_image(500 + i, (120, 120)).save(project / "data" / "raw" / "precancer" / f"new {i}.png")
    grown = sh(project, "dvc", "repro", "split")
    assert "hashed 6 new" in grown
    after = pd.read_csv(project / "data" / "splits" / "split.csv").set_index("path")
    assert (after.loc[before.path, "split"].values == before.split.values).all()
    assert len(after) == len(before) + 6


@pytest.mark.slow
def test_a_clinicians_correction_survives_repro_and_takes_effect(project):
    """The decision lives in a git-tracked input people own; dvc repro applies it and never rewrites it."""
    from pipeline import labels

    sh(project, "dvc", "repro", "split")
    conflicts = pd.read_csv(project / "data" / "quarantine" / "conflicts" / "conflicts.csv", keep_default_na=False)
    assert (conflicts.status == "open").any()  # the demo files one image under two classes
    sha = conflicts.sha256.iloc[0]
    decision = {"sha256": sha, "correct_label": "cancer", "who": "dr. ana", "when": "2026-11-22", "note": "biopsy"}
    labels.append(project / "data" / "labels" / "corrections.csv", [decision])
    corrections = (project / "data" / "labels" / "corrections.csv").read_bytes()
    rerun = sh(project, "dvc", "repro", "split")
    assert "Running stage 'validate'" in rerun and "2 clinician label decisions applied" in rerun  # both copies
    assert (project / "data" / "labels" / "corrections.csv").read_bytes() == corrections  # never written by a stage
    split = pd.read_csv(project / "data" / "splits" / "split.csv")
    assert (split[split.sha256 == sha].label == "cancer").all() and (split.sha256 == sha).sum() == 1
    sheet = pd.read_csv(project / "data" / "quarantine" / "conflicts" / "conflicts.csv", keep_default_na=False)
    assert set(sheet[sheet.sha256 == sha].status) == {"resolved"} and "dr. ana" in sheet.decision.iloc[0]
    assert "up to date" in sh(project, "dvc", "status", "split")
    assert "Running stage" not in sh(project, "dvc", "repro", "split")  # and it stays applied


@pytest.mark.slow
def test_files_that_arrive_after_dvc_add_wait_for_the_next_data_version(project):
    sh(project, "dvc", "add", "-q", "data/raw")
    noise_image(700, (120, 120)).save(project / "data" / "raw" / "normal" / "arrived during the run.png")
    out = sh(project, "dvc", "repro", "--single-item", "validate")  # as the retrain flow runs each stage
    manifest = pd.read_csv(project / "data" / "interim" / "manifest.csv")
    assert "normal/arrived during the run.png" not in set(manifest.path)
    assert "1 files in data/raw are not in the recorded data version" in out
    sh(project, "dvc", "add", "-q", "data/raw")
    import json

    report = json.loads((project / "reports" / "validation.json").read_text())
    assert report["not_in_data_version"] == 1 and report["data_version"] != "untracked"
