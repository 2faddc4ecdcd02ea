"""Shared fixtures: a shrunk copy of the real params, image factories, the shared data sets."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DO_NOT_TRACK", "true")  # MLflow honours only "true"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # also prefect_test_harness's server
# flows run without PREFECT_API_URL start Prefect's ephemeral server; its default 20 s start-up
# limit was missed once on 2 busy cores (tests/test_flows.py, kills while training runs)
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# scratch copies of the project validate too: they use this checkout's Data Docs assets (make install)
os.environ.setdefault("DATADOCS_ASSETS", str(ROOT / ".vendor" / "datadocs"))
# never a developer's running stack (.stack/env): the stack tests start their own and set STACK_DIR
os.environ["STACK_DIR"] = str(ROOT / ".stack" / "not-for-tests")


def shrink_params(tmp_path: Path, **overrides) -> Path:
    """A copy of the real params.yaml with sections overridden: {'validate': {'min_images_per_class': 2}}."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in overrides.items():
        params[section].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def shrunk(tmp_path: Path, **overrides):
    """The checked params a stage's run() takes, from a shrunk copy of the real params.yaml."""
    from pipeline.params import load_params

    return load_params(shrink_params(tmp_path, **overrides))


def train_settings(**changes):
    """The real train section with some settings changed, for tests that call the fitting functions."""
    from pipeline.params import load_params

    return dataclasses.replace(load_params(ROOT / "params.yaml").train, **changes)


# the demo-sized image sets of the stage tests (a few images per class) pass validate's suite
SMALL_DATA = {"validate": {"min_images_per_class": 5}}


# A whole pipeline run in about a minute: the flow tests and the browser tests train both architectures.
# No cross-validated estimate (it retrains the chosen candidate once per fold): tests/test_cv.py runs it.
TINY_PIPELINE = {"cv": {"max_images": 0}, "validate": {"min_images_per_class": 8}, "augment": {"target_per_class": 20},
                 "train": {"head_epochs": 1, "finetune_epochs": 1, "batch_size": 16,
                           "architectures": {"MobileNetV2": {"weights": "imagenet", "alpha": 0.35},
                                             "SmallCNN": {"weights": "none", "image_size": 48}}},
                 "evaluate": {"bootstrap": 20}, "export": {"latency_repeats": 2},
                 "register": {"min_sensitivity": {"cancer": 0.0}, "min_specificity": 0.0},
                 "flow": {"quiet_seconds": 0, "retries": 0, "retry_delay_seconds": 1}}
# ... and against the stack, one small architecture without ImageNet weights
TINY_STACK = {"cv": {"max_images": 0}, "validate": {"min_images_per_class": 8}, "augment": {"target_per_class": 16},
              "train": {"head_epochs": 1, "finetune_epochs": 0, "batch_size": 16,
                        "architectures": {"SmallCNN": {"weights": "none", "image_size": 32}}},
              "evaluate": {"bootstrap": 20}, "export": {"latency_repeats": 2},
              "register": {"min_sensitivity": {"cancer": 0.0}, "min_specificity": 0.0, "bootstrap": 20}}


def bench_module(name: str):
    """A script of bench/ as a module, so a test and its benchmark measure one thing."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def noise_image(seed: int, size=(96, 96), mode="RGB") -> Image.Image:
    """A distinct image: smooth random blobs (perceptual hashes of pure noise are unstable)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).convert(mode)


def tree_digest(root: Path) -> dict[str, str]:
    """path -> sha256 of every file under root, to prove a stage left it untouched."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def small_params(tmp_path):
    return shrunk(tmp_path, **SMALL_DATA)


def data_stages(params, raw: Path, work: Path, reports: Path | None = None, corrections: Path | None = None,
                upto: str = "split") -> dict[str, dict]:
    """validate -> dedup -> split (or fewer, `upto`), the real stages, with dvc.yaml's file names in `work`
    and their JSON reports in `reports` (default `work`). Returns each stage's summary by name."""
    from pipeline import dedup, split, validate

    reports = reports or work
    done = {"validate": validate.run(params, validate.Inputs(raw, corrections), validate.Outputs(
        manifest=work / "manifest.csv", docs=work / "docs", summary=reports / "validation.json",
        identifiers=work / "identifiers.csv"))}
    if upto in ("dedup", "split"):
        done["dedup"] = dedup.run(params, dedup.Inputs(raw, work / "manifest.csv"), dedup.Outputs(
            groups=work / "groups.csv", cache=work / "hash_cache.json", quarantine=work / "quarantine",
            report=reports / "dedup.json", sheet=work / "dedup_groups.png"))
    if upto == "split":
        done["split"] = split.run(params, split.Inputs(work / "groups.csv"), split.Outputs(
            out=work / "split.csv", ledger=work / "ledger.csv", report=reports / "split.json"))
    return done


@pytest.fixture(scope="session")
def demo_raw(tmp_path_factory) -> Path:
    """The bundled demo data, generated once per session (small)."""
    from pipeline.demo import generate

    out = tmp_path_factory.mktemp("demo") / "raw"
    generate(out, per_class=30, seed=0)
    return out


@pytest.fixture(scope="session")
def isic_dir() -> Path:
    path = SHARED / "datasets" / "isic-skin-9class-180px"
    if not path.is_dir():
        pytest.skip(f"real image set not found at {path} (../shared is absent on this machine)")
    return path


@pytest.fixture
def keras_home(tmp_path, monkeypatch) -> Path:
    """A writable Keras cache holding the shared ImageNet weights (KERAS_HOME), with downloads refused."""
    source = SHARED / "weights" / "keras"
    if not source.is_dir():
        pytest.skip(f"shared ImageNet weights not found at {source}")
    home = tmp_path / "keras_home"
    shutil.copytree(source, home)
    monkeypatch.setenv("KERAS_HOME", str(home))
    from keras.src.utils import file_utils

    def no_download(*args, **kwargs):
        raise OSError("downloads are disabled in tests")

    monkeypatch.setattr(file_utils, "get_file", no_download)
    return home


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, seconds: int, what: str) -> None:
    """Poll a loopback URL until it answers 200, or fail the test naming the service."""
    import time

    import httpx

    for _ in range(seconds):
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"{what} did not come up in {seconds} s ({url})")


@pytest.fixture(autouse=True)
def isolated_mlflow_uri():
    """mlflow.set_tracking_uri is process-global and writes os.environ itself (behind monkeypatch's
    back): reset it after every test so no test reads or writes another test's store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    import sys

    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)  # also unsets the variable
    if before is not None:
        os.environ["MLFLOW_TRACKING_URI"] = before


def scratch_workspace(tmp_path: Path, overrides: dict, per_class: int = 12, root: Path | None = None,
                      local_remote: bool = True) -> Path:
    """A scratch copy of the project: git + DVC repo (with a local remote unless the test brings its
    own, e.g. the stack's S3), shrunk params, demo images; in tmp_path/ws unless root is given."""
    from pipeline.demo import generate

    root, env = root or tmp_path / "ws", {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    root.mkdir()
    for name in ("pipeline", "flows"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", "data/labels/corrections.csv"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, root / name)
    shutil.copy(shrink_params(tmp_path, **overrides), root / "params.yaml")
    remote = [["dvc", "remote", "add", "-d", "local", str(tmp_path / "remote")]] if local_remote else []
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"], *remote,
                ["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    generate(root / "data" / "raw", per_class=per_class, seed=5)
    return root


@contextmanager
def server(cmd: list[str], health: str, what: str, env: dict | None = None, seconds: int = 120):
    """A server on a loopback port, in its own process group (MLflow leaves workers behind otherwise)."""
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_http(health, seconds, what)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def prefect_server_at(home: Path):
    """A real Prefect server with its own database; yields the environment its clients need."""
    port, bin_dir = free_port(), Path(sys.executable).parent
    env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "DO_NOT_TRACK": "true",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    with server([str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                f"http://127.0.0.1:{port}/api/health", "the Prefect server", env):
        try:
            yield {**os.environ, **env}
        finally:
            drain_prefect_clients()


def drain_prefect_clients() -> None:
    """Send this process's queued Prefect logs and events while their server still runs. Left queued,
    the next flow in this process (e.g. under prefect_test_harness) spends ~65 s retrying a dead server."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all()
    EventsWorker.drain_all()


def pytest_collection_modifyitems(items):
    """Modules with slow tests first: under `make test` (pytest-xdist, whole modules per worker) the
    longest modules start at once instead of one of them running alone at the end."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # stable: order within a module is kept


@pytest.fixture
def prefect_server(tmp_path):
    """A real Prefect server on a loopback port, with its own database."""
    with prefect_server_at(tmp_path / "prefect") as env:
        yield env


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """A scratch copy of the project: git + DVC repo with a local remote, tiny params, demo images."""
    root = scratch_workspace(tmp_path, TINY_PIPELINE)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.chdir(root)
    return root
