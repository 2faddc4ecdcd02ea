"""pipeline.project: the defaults the README names hold wherever a command runs, not only under `make`:
the project root, the Keras cache, the local MLflow store, the stack's env file and the stage paths
dvc.yaml passes."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A project folder (dvc.yaml, params.yaml) and a working directory two levels below its root."""
    root = tmp_path / "hospital"
    (root / "data" / "raw").mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, root / name)
    monkeypatch.chdir(root / "data" / "raw")
    for name in ("KERAS_HOME", "MLFLOW_TRACKING_URI", "STACK_DIR"):
        monkeypatch.delenv(name, raising=False)
    return root


def test_the_root_is_found_by_walking_up_to_dvc_yaml(project, tmp_path, monkeypatch):
    from pipeline import project as p

    assert p.root() == project.resolve()
    monkeypatch.chdir(tmp_path)  # outside any project: the working directory, as before
    assert p.root() == tmp_path.resolve()


def test_keras_cache_defaults_to_the_project_not_the_home_folder(project, monkeypatch):
    from pipeline.models import keras_cache

    assert keras_cache() == project.resolve() / ".keras" / "models"
    monkeypatch.setenv("KERAS_HOME", "/opt/weights")
    assert keras_cache() == Path("/opt/weights/models")


def test_keras_itself_downloads_into_the_project_cache(project):
    """Keras fixes its folder when TensorFlow is imported: a stage's quiet() sets it first."""
    code = ("from pipeline.console import quiet; quiet(tensorflow=True)\n"
            "from keras.src.backend import config; print(config.keras_home())")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_HOME"}
    done = subprocess.run([sys.executable, "-c", code], cwd=project / "data", env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.stdout.strip().splitlines()[-1] == str(project.resolve() / ".keras"), done.stderr[-2000:]


def test_the_local_mlflow_store_is_the_projects_from_any_folder(project):
    from pipeline import tracking

    assert tracking.tracking_uri() == f"sqlite:///{project.resolve() / 'mlflow.db'}"


def test_the_stacks_env_file_is_found_from_any_folder(project):
    from pipeline.endpoints import endpoint, stack_dir

    (project / ".stack").mkdir()
    (project / ".stack" / "env").write_text("MLFLOW_TRACKING_URI=http://127.0.0.1:15000\n")
    assert stack_dir() == project.resolve() / ".stack"
    assert endpoint("MLFLOW_TRACKING_URI") == "http://127.0.0.1:15000"


def test_the_stacks_sign_in_reaches_mlflow_unless_a_person_set_their_own(project, monkeypatch):
    """tracking_uri() puts the env file's pipeline account into the environment MLflow reads; a release
    manager's own account, set in the environment, wins; the SQLite store takes none."""
    import os

    from pipeline import tracking

    (project / ".stack").mkdir()
    (project / ".stack" / "env").write_text("MLFLOW_TRACKING_URI=https://10.0.0.5:15000\nMLFLOW_TRACKING_USERNAME=pipeline\n"
                                            "MLFLOW_TRACKING_PASSWORD=pw\nMLFLOW_TRACKING_SERVER_CERT_PATH=/ca.pem\n")
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_SERVER_CERT_PATH"):
        monkeypatch.setenv(name, "")  # recorded, so that what tracking_uri() sets is undone after the test
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "release")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "rpw")
    assert tracking.tracking_uri() == "https://10.0.0.5:15000"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("release", "rpw")
    assert os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"] == "/ca.pem"
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    tracking.tracking_uri()
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("pipeline", "pw")


def test_stage_flags_default_to_the_paths_dvc_yaml_passes(project):
    from pipeline import dedup, train, validate
    from pipeline.stage import parser, paths

    args = parser(None, validate.Inputs, validate.Outputs).parse_args([])
    inputs = paths(validate.Inputs, args)  # relative to the working directory, data/raw here
    assert inputs.raw == Path(".") and inputs.version_file == Path("../raw.dvc")
    assert args.params.resolve() == project.resolve() / "params.yaml"
    explicit = parser(None, dedup.Inputs, dedup.Outputs).parse_args(["--groups", "elsewhere.csv"])
    assert explicit.groups == Path("elsewhere.csv") and explicit.manifest == Path("../interim/manifest.csv")
    cli = parser(None, train.Inputs, train.Outputs)  # a foreach stage: models/${key} from --arch
    cli.add_argument("--arch", required=True)
    args = cli.parse_args(["--arch", "SmallCNN"])
    assert args.out == Path("../../models/SmallCNN") and args.metrics == Path("../../reports/train/SmallCNN.json")


def test_every_stage_cli_defaults_to_exactly_what_dvc_yaml_passes(project):
    """For every stage, each flag left out resolves to the path in its dvc.yaml command."""
    import dataclasses
    import importlib

    import yaml

    from pipeline.project import stage_flags
    from pipeline.stage import parser

    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]:
        module = importlib.import_module(f"pipeline.{stage}")
        cli = parser(None, module.Inputs, module.Outputs)
        key = [f"--{cli.key_flag}", "SmallCNN"] if cli.key_flag else []  # train@<arch>: its main adds --arch
        if key:
            cli.add_argument(key[0])
        args = cli.parse_args(key)
        flags = stage_flags(stage)
        for field in (f for group in (module.Inputs, module.Outputs) for f in dataclasses.fields(group)):
            wanted = project.resolve() / flags[field.name].replace("${key}", "SmallCNN")
            assert (Path.cwd() / getattr(args, field.name)).resolve() == wanted, (stage, field.name)


def test_a_stage_runs_from_a_subfolder_on_the_projects_files(project):
    """`python -m pipeline.split` with no flags, from data/raw: reads and writes what dvc.yaml names."""
    import pandas as pd

    groups = project / "data" / "interim" / "groups.csv"
    groups.parent.mkdir(parents=True)
    rows = [{"path": f"{c}/{i}.png", "label": c, "group_id": f"{c}{i}", "conflict": False, "sha256": f"{c}{i:060d}",
             "duplicate_of": "", "mixed_labels": False, "perceptual_hash": f"phash:8:{i:016x}"}
            for c in ("normal", "precancer", "cancer") for i in range(20)]
    pd.DataFrame(rows).to_csv(groups, index=False)
    done = subprocess.run([sys.executable, "-m", "pipeline.split"], cwd=project / "data" / "raw",
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (project / "data" / "splits" / "split.csv").is_file() and (project / "reports" / "split.json").is_file()


def test_the_cron_reads_an_explicit_time_zone(tmp_path):
    import yaml

    from flows.serve import deployments
    from pipeline.params import ParamsError, load_params

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["flow"]["timezone"] = "Europe/Madrid"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    nightly = deployments(tmp_path)[0].schedules[0].schedule
    assert (nightly.cron, nightly.timezone) == (params["flow"]["cron"], "Europe/Madrid")
    params["flow"]["timezone"] = "CEST"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match="flow.timezone is 'CEST', not an IANA time zone"):
        load_params(tmp_path / "params.yaml")
