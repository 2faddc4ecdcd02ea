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
