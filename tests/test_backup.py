"""pipeline.backup: a project with a champion, three decisions and two data versions is backed up,
destroyed, restored into a fresh clone, and comes back whole; a corrupted backup is refused."""
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ROOT, SMALL_DATA, scratch_workspace, tree_digest

BIN = Path(sys.executable).parent
NAME = "oralscan-classifier"


def sh(cwd: Path, *cmd: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the project's own store
    base["PATH"] = f"{BIN}{os.pathsep}{base['PATH']}"
    done = subprocess.run(cmd, cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=900)
    if check:
        assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def commit(root: Path, message: str) -> str:
    sh(root, "git", "add", "-A")
    sh(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)
    return sh(root, "git", "rev-parse", "HEAD").stdout.strip()


def add_data_version(root: Path, message: str, env: dict | None = None) -> tuple[str, dict]:
    sh(root, "dvc", "add", "-q", "data/raw", env=env)
    sh(root, "dvc", "push", "-q", env=env)
    return commit(root, message), tree_digest(root / "data" / "raw")


def registry_with_three_decisions(root: Path, env: dict | None = None) -> None:
    """Three model versions with artifacts in mlruns/, and three decisions: v1 champion, v2 challenger,
    v3 champion (the store the stages write: mlflow.db in the project root)."""
    code = f"""
import os; os.chdir({str(root)!r})
from mlflow.tracking import MlflowClient
from pipeline import tracking
from pipeline.registry import aliases
uri = tracking.tracking_uri()
experiment = tracking.setup("oralscan")
client = MlflowClient(tracking_uri=uri, registry_uri=uri)
client.create_registered_model({NAME!r})
open("weights.bin", "wb").write(bytes(range(256)) * 40)
for i in (1, 2, 3):
    run = client.create_run(experiment)
    client.log_artifact(run.info.run_id, "weights.bin", artifact_path="model")
    client.set_terminated(run.info.run_id)
    client.create_model_version({NAME!r}, source=run.info.artifact_uri + "/model", run_id=run.info.run_id,
                                tags={{"data_version": f"v{{i}}"}})
os.remove("weights.bin")
aliases.move_alias(client, {NAME!r}, "champion", "1", None, "dr.ana", "champion", "first model", "d1")
aliases.move_alias(client, {NAME!r}, "challenger", "2", None, "dr.ana", "challenger", "not better", "d2")
aliases.move_alias(client, {NAME!r}, "champion", "3", "1", "dr.ana", "champion", "better on the same test images", "d2")
"""
    sh(root, sys.executable, "-c", code, env=env)


def registry_state(uri: str, download_to: Path) -> dict:
    """Aliases, the decision history and the champion's files, read from the store at `uri`."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline.registry.history import history

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    model = client.get_registered_model(NAME)
    events = [{k: e[k] for k in ("seq", "time", "actor", "alias", "old", "new", "decision", "reason")}
              for e in history(client, NAME)]
    source = client.get_model_version_by_alias(NAME, "champion").source  # a file URI under mlruns/, or the server's
    local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(download_to), tracking_uri=uri)
    return {"aliases": dict(model.aliases), "history": events, "champion_files": tree_digest(Path(local))}


def local_registry(root: Path) -> dict:
    return registry_state(f"sqlite:///{root / 'mlflow.db'}", root.parent / f"dl-{root.name}")


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory):
    """The project (made, then backed up), what it held, and the backup folder; the project is destroyed."""
    tmp = tmp_path_factory.mktemp("backup")
    root = scratch_workspace(tmp, SMALL_DATA, per_class=6, root=tmp / "hospital")
    first = add_data_version(root, "data v1")
    extra = root / "data" / "raw" / "cancer" / "new batch"
    extra.mkdir()
    shutil.copy(next((root / "data" / "raw" / "normal").glob("*.png")), extra / "later.png")
    second = add_data_version(root, "data v2")
    ledger = root / "data" / "splits" / "ledger.csv"
    ledger.parent.mkdir(parents=True)
    ledger.write_text("sha256,perceptual_hash,split,first_split,path,label\nab12,phash:8:ff,test,test,x.png,cancer\n")
    corrections = root / "data" / "labels" / "corrections.csv"  # an edit not yet committed: only the backup has it
    corrections.write_text(corrections.read_text() + "ab12,normal,dr. ana,2026-01-05,biopsy benign\n")
    registry_with_three_decisions(root)
    before = {"registry": local_registry(root), "versions": [first, second], "ledger": ledger.read_bytes(),
              "corrections": corrections.read_bytes()}
    done = sh(root, sys.executable, "-m", "pipeline.backup", "create", "--to", str(tmp / "backups"))
    print(done.stdout)
    (folder,) = (tmp / "backups").iterdir()
    shutil.rmtree(root)                # the machine is gone: checkout, DVC cache, mlflow.db, mlruns/ ...
    shutil.rmtree(tmp / "remote")      # ... and the DVC remote beside it
    return {"tmp": tmp, "folder": folder, "before": before}


def fresh_clone(backed_up: dict, name: str) -> Path:
    """A fresh clone from the backup's own git bundle (no git server needed)."""
    target = backed_up["tmp"] / name
    sh(backed_up["tmp"], "git", "clone", "-q", str(backed_up["folder"] / "git.bundle"), str(target))
    return target


def test_backup_holds_a_manifest_and_checksums(backed_up):
    folder = backed_up["folder"]
    assert folder.name.startswith("backup-") and not folder.name.endswith(".partial")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(manifest["data"]["versions"]) == 2 and not manifest["data"]["missing"]
    assert manifest["store"]["kind"] == "sqlite" and manifest["files"]["ledger"] == "data/splits/ledger.csv"
    listed = {line.split("  ", 1)[1] for line in (folder / "SHA256SUMS").read_text().splitlines()}
    assert {"manifest.json", "git.bundle", "mlflow/mlflow.db", "files/data/labels/corrections.csv"} <= listed
    assert (folder / "SHA256SUMS").stat().st_size and oct(folder.stat().st_mode)[-3:] == "700"


def test_restore_into_a_fresh_clone_brings_everything_back(backed_up):
    root = fresh_clone(backed_up, "restored")
    done = sh(root, sys.executable, "-m", "pipeline.backup", "restore", str(backed_up["folder"]))
    print(done.stdout)
    assert f"registry: {NAME} @champion v3, 3 decisions in its history" in done.stdout
    before = backed_up["before"]
    assert local_registry(root) == before["registry"]   # same champion, history and model files
    assert (root / "data" / "splits" / "ledger.csv").read_bytes() == before["ledger"]
    assert (root / "data" / "labels" / "corrections.csv").read_bytes() == before["corrections"]
    for commit_id, digest in before["versions"]:       # both data versions, from the cache
        sh(root, "git", "checkout", "-q", commit_id, "--", "data/raw.dvc")
        sh(root, "dvc", "checkout", "-q", "--force", "data/raw.dvc")
        assert tree_digest(root / "data" / "raw") == digest
    sh(root, "git", "checkout", "-q", "HEAD", "--", "data/raw.dvc")
    assert "in sync" in sh(root, "dvc", "status", "--cloud").stdout  # and pushed back to the DVC remote
    again = sh(root, sys.executable, "-m", "pipeline.backup", "restore", str(backed_up["folder"]), check=False)
    assert again.returncode == 1 and "already has mlflow.db" in again.stderr  # never over a live store


@pytest.mark.parametrize("damage", ["flipped byte", "missing file"])
def test_a_corrupted_backup_is_refused_and_nothing_is_restored(backed_up, damage):
    broken = backed_up["tmp"] / f"broken-{damage.replace(' ', '-')}"
    shutil.copytree(backed_up["folder"], broken)
    victim = next(p for p in sorted((broken / "dvc").rglob("*")) if p.is_file())
    if damage == "flipped byte":
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    else:
        victim.unlink()
    root = fresh_clone(backed_up, f"clone-{broken.name}")
    done = sh(root, sys.executable, "-m", "pipeline.backup", "restore", str(broken), check=False)
    rel = victim.relative_to(broken).as_posix()
    assert done.returncode == 1 and "is corrupted" in done.stderr and rel in done.stderr, done.stderr
    assert "nothing was restored" in done.stderr
    assert not (root / "mlflow.db").exists() and not (root / "data" / "splits" / "ledger.csv").exists()
    verify = sh(root, sys.executable, "-m", "pipeline.backup", "verify", str(broken), check=False)
    assert verify.returncode == 1 and "is corrupted" in verify.stderr


# --- the stack: PostgreSQL databases and S3 buckets -----------------------------------------------

def stack_for(project: Path):
    """A stack on free ports pointed at `project`, stopped at the end with every process checked gone."""
    from tests.test_stack import running_stack

    return contextmanager(running_stack)(project)


def flow_names(stack) -> set[str]:
    import httpx

    api = stack.values()["PREFECT_API_URL"]
    return {f["name"] for f in httpx.post(f"{api}/flows/filter", json={}, auth=stack.prefect_auth()).json()}


@pytest.mark.stack
@pytest.mark.slow
def test_stack_backup_restores_into_a_fresh_stack(tmp_path_factory):
    """Runs and registry in PostgreSQL, artifacts and data in S3, flow runs in Prefect's database: backed up,
    the stack and the checkout destroyed, restored into a fresh clone and a fresh stack."""
    from tests.test_stack import make_workspace

    tmp = tmp_path_factory.mktemp("stack-backup")
    (tmp / "params").mkdir()
    root = make_workspace(tmp / "hospital", tmp / "params")
    shutil.copytree(ROOT / "docker", root / "docker", ignore=shutil.ignore_patterns("__pycache__"))  # the launcher
    commit(root, "the stack's launcher")
    with stack_for(root) as first:
        env = {**first.env}  # what `make stack` left: .stack/env, the ports it runs on
        versions = [add_data_version(root, "data v1", env)]
        shutil.copy(next((root / "data" / "raw" / "normal").glob("*.png")), root / "data" / "raw" / "cancer" / "later.png")
        versions.append(add_data_version(root, "data v2", env))
        (root / "data" / "splits").mkdir(parents=True)
        (root / "data" / "splits" / "ledger.csv").write_text("sha256,split\nab12,test\n")
        registry_with_three_decisions(root, env)
        probe = "from prefect import flow\n@flow(name='nightly-probe')\ndef probe():\n    return 1\nprobe()\n"
        sh(root, sys.executable, "-c", probe, env={k: first.values()[k] for k in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")})
        uri = first.values()["MLFLOW_TRACKING_URI"]
        before = {"registry": registry_state(uri, tmp / "dl-before"), "ledger": (root / "data" / "splits" / "ledger.csv").read_bytes(),
                  "flows": flow_names(first)}
        done = sh(root, sys.executable, "-m", "pipeline.backup", "create", "--to", str(tmp / "backups"), env=env)
        print(done.stdout)
    (folder,) = (tmp / "backups").iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["store"]["kind"] == "stack" and manifest["store"]["buckets"]["mlflow"] > 0
    assert {"stack/mlflow.dump", "stack/prefect.dump", "stack/secrets"} <= {
        line.split("  ", 1)[1] for line in (folder / "SHA256SUMS").read_text().splitlines()}
    shutil.rmtree(root)  # the first stack's folder went with stack_for: databases, buckets, secrets

    clone = tmp / "clone"
    sh(tmp, "git", "clone", "-q", str(folder / "git.bundle"), str(clone))
    with stack_for(clone) as second:
        env = {**second.env}
        done = sh(clone, sys.executable, "-m", "pipeline.backup", "restore", str(folder), env=env)
        print(done.stdout)
        values = second.values()
        assert registry_state(values["MLFLOW_TRACKING_URI"], tmp / "dl-after") == before["registry"]
        assert before["flows"] <= flow_names(second) and "nightly-probe" in before["flows"]
        assert (clone / "data" / "splits" / "ledger.csv").read_bytes() == before["ledger"]
        for commit_id, digest in versions:
            sh(clone, "git", "checkout", "-q", commit_id, "--", "data/raw.dvc")
            sh(clone, "dvc", "checkout", "-q", "--force", "data/raw.dvc", env=env)
            assert tree_digest(clone / "data" / "raw") == digest
        sh(clone, "git", "checkout", "-q", "HEAD", "--", "data/raw.dvc")
        assert "in sync" in sh(clone, "dvc", "status", "--cloud", env=env).stdout  # pushed to the new S3 bucket
        (clone / "data" / "splits" / "ledger.csv").unlink()  # even without a ledger: the stack is not fresh
        again = sh(clone, sys.executable, "-m", "pipeline.backup", "restore", str(folder), check=False, env=env)
        assert again.returncode == 1 and "already holds 1 registered models" in again.stderr
        assert not (clone / "data" / "splits" / "ledger.csv").exists()  # refused before restoring anything
