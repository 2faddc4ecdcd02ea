"""pipeline.fresh_start: the demo's registry, ledger and outputs go; the hospital's images and labels
stay; the class settings are checked against data/raw's folders, naming what to change."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import TINY_STACK, noise_image, scratch_workspace, tree_digest

BIN = Path(sys.executable).parent


def sh(cwd: Path, *cmd: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(cmd, cwd=cwd, env={**base, "PATH": f"{BIN}{os.pathsep}{base['PATH']}", **(env or {})},
                          capture_output=True, text=True, timeout=900)
    if check:
        assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def fresh(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return sh(root, sys.executable, "-m", "pipeline.fresh_start", *args, check=False, env=env)


def set_params(root: Path, **sections) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture
def demo_project(tmp_path) -> Path:
    """A project after the demo: its images (with the demo's record), a registry, a ledger, outputs."""
    root = tmp_path / "ws"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml", "data/labels/corrections.csv"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(__file__).resolve().parents[1] / name, root / name)
    sh(root, sys.executable, "-m", "pipeline.demo", "--out", "data/raw", "--per-class", "5")
    made = {"mlflow.db": b"SQLite format 3\0", "mlruns/1/meta.yaml": b"x", "mlruns/.gitkeep": b"",
            "data/splits/ledger.csv": b"sha256,split\nab,test\n", "data/interim/hash_cache.json": b"{}",
            "data/pixels/v1/ab.npy": b"0", "models/SmallCNN/model.keras": b"k", "reports/metrics.json": b"{}",
            "reports/train/SmallCNN.json": b"{}", "reports/summary.json": b"{}", "dvc.lock": b"schema: '2.0'\n"}
    for rel, data in made.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_clears_the_demo_and_keeps_what_people_put_in(demo_project):
    root = demo_project
    own = root / "data" / "raw" / "cancer" / "clinic A" / "patient 7.png"
    own.parent.mkdir(parents=True)
    noise_image(3).save(own)
    (root / "data" / "labels" / "corrections.csv").write_text("sha256,correct_label,who,when,note\nab,normal,x,y,z\n")
    labels = tree_digest(root / "data" / "labels")
    done = fresh(root, "--demo-images")
    for gone in ("mlflow.db", "mlruns/1", "data/splits/ledger.csv", "data/interim/hash_cache.json", "data/pixels",
                 "models/SmallCNN", "reports/metrics.json", "reports/train/SmallCNN.json", "dvc.lock",
                 "data/demo-images.json"):
        assert not (root / gone).exists(), gone
    assert (root / "mlruns" / ".gitkeep").exists()
    assert tree_digest(root / "data" / "raw") == {"cancer/clinic A/patient 7.png": tree_digest(own.parent)["patient 7.png"]}
    assert tree_digest(root / "data" / "labels") == labels
    # ... and the check names every setting to change, with the folders as they now are
    assert done.returncode == 1, done.stdout + done.stderr
    message = done.stderr
    assert "base.classes is ['normal', 'precancer', 'cancer'] but the folders in data/raw are ['cancer']" in message
    assert "base.positive_classes names ['precancer']" in message
    assert "register.min_sensitivity has gates for ['precancer']" in message
    assert "data/raw/cancer has 1 files; validate.min_images_per_class is 20" in message


def test_without_the_demo_images_option_they_stay(demo_project):
    before = tree_digest(demo_project / "data" / "raw")
    fresh(demo_project)
    assert tree_digest(demo_project / "data" / "raw") == before and not (demo_project / "mlflow.db").exists()


def test_the_check_passes_once_params_match_the_folders(demo_project):
    root = demo_project
    shutil.rmtree(root / "data" / "raw")
    for i, label in enumerate(["benign"] * 20 + ["malignant"] * 20):
        (root / "data" / "raw" / label).mkdir(parents=True, exist_ok=True)
        noise_image(i).save(root / "data" / "raw" / label / f"{i}.png")
    failing = fresh(root, "--check")
    assert failing.returncode == 1 and "set base.classes: [benign, malignant]" in failing.stderr
    assert "evaluate.select_by" not in failing.stderr  # balanced_accuracy fits any classes
    set_params(root, base={"classes": ["benign", "malignant"], "positive_classes": ["malignant"]},
               register={"min_sensitivity": {"malignant": 0.8}})
    passing = fresh(root, "--check")
    assert passing.returncode == 0 and "params agree with the class folders" in passing.stdout
    assert (root / "mlflow.db").exists()  # --check clears nothing


def test_a_project_without_the_demo_record_is_not_cleared_without_yes(demo_project):
    (demo_project / "data" / "demo-images.json").unlink()
    refused = fresh(demo_project)
    assert refused.returncode == 1 and "nothing was cleared" in refused.stderr and "YES=1" in refused.stderr
    assert (demo_project / "mlflow.db").exists() and (demo_project / "data" / "splits" / "ledger.csv").exists()
    assert "removed mlflow.db" in fresh(demo_project, "--yes").stdout


def test_a_remote_store_is_never_cleared_without_its_flag(demo_project):
    refused = fresh(demo_project, env={"MLFLOW_TRACKING_URI": "http://mlflow.hospital:5000"})
    assert refused.returncode == 1 and "--remote-store" in refused.stderr
    assert (demo_project / "mlflow.db").exists() and (demo_project / "reports" / "metrics.json").exists()


@pytest.mark.slow
def test_the_first_hospital_champion_is_never_compared_with_the_demos(tmp_path):
    """README "Your own images", end to end: after the demo (its champion and a ledger holding its images),
    start fresh, add the hospital's images, run: a first champion, compared with nothing, split afresh."""
    import pandas as pd

    from pipeline.demo import write_clean
    from tests.test_backup import registry_with_three_decisions

    root = scratch_workspace(tmp_path, TINY_STACK, per_class=10)  # the demo's images
    sh(root, sys.executable, "-c", "from pipeline.demo import write_marker; write_marker(__import__('pathlib').Path('data/raw'))")
    demo_content = {d for d in json.loads((root / "data" / "demo-images.json").read_text())["files"].values()}
    registry_with_three_decisions(root)  # the demo's registry: a champion and its history
    ledger = root / "data" / "splits" / "ledger.csv"
    ledger.parent.mkdir(parents=True)
    pd.DataFrame({"sha256": sorted(demo_content), "perceptual_hash": "", "split": "train", "first_split": "train",
                  "path": "x.png", "label": "cancer"}).to_csv(ledger, index=False)

    cleared = fresh(root, "--demo-images")
    assert cleared.returncode == 0 and "next, put the images in data/raw/<class>/" in cleared.stdout, cleared.stderr
    assert not any(p.is_file() for p in (root / "data" / "raw").rglob("*"))
    write_clean(root / "data" / "raw", 10, np.random.default_rng(77))  # the hospital's own images
    assert fresh(root, "--check").returncode == 0
    sh(root, "dvc", "add", "-q", "data/raw")
    sh(root, "dvc", "repro", "-q", "register")
    first = json.loads((root / "reports" / "registry.json").read_text())
    assert (first["version"], first["champion_before"], first["comparison"]) == (1, None, None)
    assert first["alias"] == "champion" and first["history_seq"] == 1
    assert not set(pd.read_csv(ledger).sha256) & demo_content  # the split was not seeded by the demo's ledger
