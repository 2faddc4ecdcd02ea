"""pipeline.tracking: the commit a model is tagged with says `-dirty` only for a real diff."""
import shutil
import subprocess

from pipeline.tracking import git_commit
from tests.conftest import ROOT


def commit_all(root):
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)


def test_what_dvc_writes_during_a_run_is_not_a_diff(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    written = ["dvc.lock", "data/raw.dvc", "reports/metrics.json", "reports/train/SmallCNN.json",
               "reports/model_card.md", "models/.gitignore", "params.yaml", "pipeline/train.py",
               "data/labels/corrections.csv"]
    for name in written:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("before\n")
    commit_all(tmp_path)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert git_commit(tmp_path) == head
    for name in written[:6]:  # dvc repro rewrites these while the stages run
        (tmp_path / name).write_text("after\n")
    assert git_commit(tmp_path) == head
    for name in written[6:]:  # code, settings and people's label decisions are what made the model
        (tmp_path / name).write_text("after\n")
        assert git_commit(tmp_path) == f"{head}-dirty", name
        subprocess.run(["git", "checkout", "--", name], cwd=tmp_path, check=True)
    assert git_commit(tmp_path / "missing") == "unknown"
