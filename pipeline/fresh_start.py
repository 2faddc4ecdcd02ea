"""fresh_start: from the demo to a hospital's own images, with nothing of the demo left behind.

    python -m pipeline.fresh_start                  # make start-fresh: clear, then check params against data/raw
    python -m pipeline.fresh_start --demo-images    # ... and delete the demo's generated images (only those)
    python -m pipeline.fresh_start --check          # only the check (after editing params.yaml)

Cleared: every output dvc.yaml declares (derived data, the split ledger and split, the hash cache,
models, export, reports), dvc.lock, the pixel cache, and the local registry and tracking store
(mlflow.db, mlruns/). Otherwise the hospital's first model would be compared with the demo's champion
and its split seeded by the demo's ledger. Never touched: data/raw (except, with --demo-images, the
files the demo generator wrote and listed in data/demo-images.json, when their bytes are unchanged),
data/labels, the Keras cache, the DVC cache and remote. A remote MLflow store (the stack, or
MLFLOW_TRACKING_URI) is cleared only with --remote-store: the registered model is deleted and the
experiment renamed aside, so its runs stay readable.

The check names every setting that disagrees with the class folders in data/raw: base.classes,
base.positive_classes, register.min_sensitivity, evaluate.select_by, and validate.min_images_per_class.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

import yaml

from pipeline import project

MARKER = "demo-images.json"  # beside data/raw, written by pipeline.demo


def declared_outputs(root: Path) -> list[Path]:
    """Every out, metric and plot of every stage in dvc.yaml that exists (`${key}` matched by glob)."""
    stages = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {})
    found = set()
    for stage in stages.values():
        body = stage.get("do", stage)
        for entry in (e for kind in ("outs", "metrics", "plots") for e in body.get(kind) or []):
            name = re.sub(r"\$\{[^}]*\}", "*", entry if isinstance(entry, str) else next(iter(entry)))
            found |= set(root.glob(name))
    return sorted(found)


def remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def demo_files(raw: Path) -> list[Path]:
    """The demo generator's files still in data/raw with the bytes it wrote."""
    marker = raw.parent / MARKER
    if not marker.is_file():
        return []
    listed = json.loads(marker.read_text())["files"]
    return [raw / rel for rel, digest in listed.items()
            if (raw / rel).is_file() and hashlib.sha256((raw / rel).read_bytes()).hexdigest() == digest]


def clear_local_store(root: Path) -> list[str]:
    gone = []
    if (root / "mlflow.db").exists():
        (root / "mlflow.db").unlink()
        gone.append("mlflow.db")
    for path in (root / "mlruns").glob("*"):
        if path.name != ".gitkeep":
            remove(path)
            gone.append(f"mlruns/{path.name}")
    return gone


def clear_remote_store(uri: str, model_name: str, experiment: str) -> list[str]:
    """Delete the registered model (and its lock); rename the experiment aside, keeping its runs."""
    from mlflow.tracking import MlflowClient

    from pipeline.registry.client import registered_model

    client, gone = MlflowClient(tracking_uri=uri, registry_uri=uri), []
    for name in (model_name, f"{model_name}.lock"):
        if registered_model(client, name) is not None:
            client.delete_registered_model(name)
            gone.append(f"registered model {name}")
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        aside = f"{experiment}-before-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
        client.rename_experiment(found.experiment_id, aside)
        gone.append(f"experiment {experiment} (renamed {aside})")
    return gone


def clear(root: Path, demo_images: bool, remote_store: bool, sure: bool = False) -> list[str]:
    from pipeline import tracking

    raw_params = yaml.safe_load((root / "params.yaml").read_text())
    uri = tracking.tracking_uri(root)
    local = uri.startswith("sqlite:")
    raw = root / project.stage_flags("validate", root).get("raw", "data/raw")
    if not (raw.parent / MARKER).is_file() and not sure:
        raise SystemExit(f"fresh_start: no {raw.parent.relative_to(root) / MARKER} (the demo's record): this may be "
                         "a project in use, whose registry and ledger would be deleted; nothing was cleared. "
                         "Make a backup first (make backup), then pass --yes (make start-fresh YES=1)")
    if not local and not remote_store:
        raise SystemExit(f"fresh_start: the registry is {uri}, not this project's local store; nothing was cleared. "
                         "Pass --remote-store to delete its registered model and rename its experiment aside "
                         "(make a backup first: make backup)")
    gone = [p.relative_to(root).as_posix() for p in declared_outputs(root)]
    for path in declared_outputs(root):
        remove(path)
    for path in (root / "dvc.lock", raw.parent / "pixels"):  # the pixel cache (a PIXEL_CACHE elsewhere is shared: kept)
        if path.exists():
            remove(path)
            gone.append(path.relative_to(root).as_posix())
    gone += clear_local_store(root) if local else clear_remote_store(
        uri, raw_params["register"]["model_name"], raw_params["train"]["experiment"])
    if demo_images:
        files = demo_files(raw)
        for path in files:
            path.unlink()
        for folder in sorted((p for p in raw.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            if not any(folder.iterdir()):
                folder.rmdir()
        (raw.parent / MARKER).unlink(missing_ok=True)
        gone.append(f"{len(files)} demo images in {raw.relative_to(root)}")
    return gone


def class_folders(raw: Path) -> dict[str, int]:
    """Top-level folders of data/raw (not hidden) and the files each holds, at any depth."""
    if not raw.is_dir():
        return {}
    return {d.name: sum(1 for p in d.rglob("*") if p.is_file() and not p.name.startswith("."))
            for d in sorted(raw.iterdir()) if d.is_dir() and not d.name.startswith(".")}


def check(root: Path) -> list[str]:
    """What to change so params agree with data/raw's class folders; empty when all agree."""
    from pipeline.params import ParamsError, load_params

    raw = root / project.stage_flags("validate", root).get("raw", "data/raw")
    p = yaml.safe_load((root / "params.yaml").read_text())
    folders, classes = class_folders(raw), list(p["base"]["classes"])
    todo = []
    if not folders:  # nothing to compare with yet: the README's next step, not an error
        return []
    wanted = [c for c in classes if c in folders] + [f for f in folders if f not in classes]
    if set(folders) != set(classes):
        extra = [f for f in folders if f not in classes]
        todo.append(f"base.classes is {classes} but the folders in {raw.relative_to(root)} are {list(folders)}: "
                    f"set base.classes: [{', '.join(wanted)}] (the order is every model's output order)"
                    + (f", or move {extra} out of {raw.relative_to(root)} if they are not classes" if extra else ""))
    positive = [c for c in p["base"]["positive_classes"] if c not in folders]
    if positive:
        todo.append(f"base.positive_classes names {positive}, which no folder holds: list the classes whose "
                    "sensitivity matters clinically (the ones a missed case harms)")
    gates = [c for c in p["register"]["min_sensitivity"] if c not in folders]
    if gates:
        todo.append(f"register.min_sensitivity has gates for {gates}: one minimum test sensitivity per positive "
                    "class, e.g. {" + ", ".join(f"{c}: 0.8" for c in wanted[-1:]) + "}")
    select = p["evaluate"]["select_by"]
    if select.startswith("sensitivity_") and select.removeprefix("sensitivity_") not in folders:
        todo.append(f"evaluate.select_by is {select}: name a positive class that exists, or balanced_accuracy")
    minimum = p["validate"]["min_images_per_class"]
    todo += [f"{raw.relative_to(root)}/{name} has {n} files; validate.min_images_per_class is {minimum} (the run "
             "fails below it): add images, or lower it knowing every estimate gets wider"
             for name, n in folders.items() if name in classes and n < minimum]
    if not todo:
        try:
            load_params(root / "params.yaml")
        except ParamsError as err:
            todo.append(str(err))
    return todo


def main(argv: list[str] | None = None) -> None:
    cli = argparse.ArgumentParser(prog="python -m pipeline.fresh_start", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--check", action="store_true", help="only check params against data/raw; clear nothing")
    cli.add_argument("--demo-images", action="store_true", help="also delete the demo's own images from data/raw")
    cli.add_argument("--remote-store", action="store_true", help="also clear a remote MLflow store (the stack's)")
    cli.add_argument("--yes", action="store_true", help="clear although this project holds no demo record")
    args = cli.parse_args(argv)
    root = project.root()
    if not args.check:
        for item in clear(root, args.demo_images, args.remote_store, args.yes):
            print(f"fresh_start: removed {item}")
    todo = check(root)
    if todo:
        raise SystemExit("fresh_start: before the first run, change:\n  - " + "\n  - ".join(todo)
                         + "\nthen check again: python -m pipeline.fresh_start --check")
    raw = project.stage_flags("validate", root).get("raw", "data/raw")
    if not class_folders(root / raw):
        print(f"fresh_start: next, put the images in {raw}/<class>/ (one folder per class), then "
              "python -m pipeline.fresh_start --check")
    else:
        print("fresh_start: params agree with the class folders; next: make demo (or dvc add data/raw && dvc repro)")


if __name__ == "__main__":
    main()
