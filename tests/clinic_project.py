"""A project for the clinic's page tests and benchmark: dvc.yaml's layout in a temporary folder, colour-coded
images in data/raw with one label conflict, the real validate and dedup outputs (manifest, quarantine sheet),
a label-review list, a SQLite MLflow registry whose v1 is @champion (a tiny hand-set Keras model with
an operating point, logged as the served pyfunc) and v2, v3 awaiting approval, and three accounts."""
from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from tests.colour_project import CLASSES, SIZE, colour_model, write_image
from tests.conftest import ROOT, SMALL_DATA, shrink_params

NAME = "oralscan-classifier"
USERS = {"dr.ana": ("clinician", "ana-password-1"), "vic": ("viewer", "vic-password-1"),
         "root": ("admin", "root-password-1")}


def make_images(raw: Path, per_class: int = 6) -> None:
    for label in CLASSES:
        for i in range(per_class):
            write_image(raw / label / f"{i}.png", label, zlib.crc32(f"{label}{i}".encode()) % 10_000)
    shutil.copy(raw / "normal" / "0.png", raw / "cancer" / "patient 0042 copy.png")  # filed twice: a conflict


def data_outputs(root: Path, params) -> pd.DataFrame:
    """validate and dedup, the real stages, writing where dvc.yaml says; returns the manifest."""
    from pipeline import dedup, validate

    raw, interim = root / "data" / "raw", root / "data" / "interim"
    validate.run(params, validate.Inputs(raw, root / "data" / "labels" / "corrections.csv"), validate.Outputs(
        manifest=interim / "manifest.csv", docs=root / "reports" / "validation", summary=root / "reports" / "validation.json"))
    dedup.run(params, dedup.Inputs(raw, interim / "manifest.csv"), dedup.Outputs(
        groups=interim / "groups.csv", cache=interim / "hash_cache.json", quarantine=root / "data" / "quarantine" / "conflicts",
        report=root / "reports" / "dedup.json", sheet=root / "reports" / "dedup_groups.png"))
    return pd.read_csv(interim / "manifest.csv", dtype=str, keep_default_na=False)


def label_issues(manifest: pd.DataFrame, out: Path, count: int = 2, seed: int = 0) -> None:
    """A label-review list in label_review's columns: `count` images (repeated when more than there are)."""
    rng = np.random.default_rng(seed)
    ok = manifest[manifest.status == "ok"].reset_index(drop=True)
    rows = []
    for rank in range(1, count + 1):
        row = ok.iloc[(rank - 1) % len(ok)]
        p = rng.dirichlet(np.ones(len(CLASSES)))
        suggested = max((c for c in CLASSES if c != row.label), key=lambda c: p[CLASSES.index(c)])
        given, other = CLASSES.index(row.label), CLASSES.index(suggested)
        p[given], p[other] = min(p[given], p[other]), max(p[given], p[other])  # flagged: the model prefers another
        sha = row.sha256 if rank <= len(ok) else f"{rank:064x}"  # beyond the images: distinct contents
        rows.append({"path": row.path, "sha256": sha, "label": row.label, "suggested_label": suggested,
                     "label_quality": round(float(p[CLASSES.index(row.label)]), 4),
                     **{f"p_{c}": round(float(v), 4) for c, v in zip(CLASSES, p)},
                     "split": "train", "group_id": f"g{rank:05d}", "rank": rank, "correct_label": ""})
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out, index=False)


def registry(root: Path, model=None, image_size: int = SIZE) -> None:
    """v1 @champion, v2 and v3 awaiting approval (compared against v1), in root/mlflow.db; run from root."""
    import mlflow

    from pipeline import tracking
    from pipeline.inference import log_serving_model
    from pipeline.registry import aliases
    from pipeline.registry.client import registry_client

    tracking.setup("oralscan")
    export = root / "export"
    export.mkdir(exist_ok=True)
    (model or colour_model("perfect")).save(export / "model.keras")
    (export / "metadata.json").write_text(json.dumps({
        "classes": CLASSES, "image_size": image_size, "variants": {},
        "operating_point": {"threshold": 0.5, "positive_classes": ["cancer"]}}))
    with mlflow.start_run() as run:
        pass
    uri = log_serving_model({"run_id": run.info.run_id}, export / "model.keras", export,
                            root / "data" / "raw" / "cancer" / "1.png")
    client = registry_client()
    for i in (1, 2, 3):
        mlflow.register_model(uri, NAME, tags={"data_version": f"md5data{i}"})
    aliases.move_alias(client, NAME, "champion", "1", None, "pipeline run", "champion", "first model")
    for version in ("2", "3"):
        client.set_model_version_tag(NAME, version, "compared_against", "1")
        client.set_model_version_tag(NAME, version, "op_threshold", "0.5")
        client.update_model_version(NAME, version, description=f"# Model card of v{version}\n\n| metric | v1 | v{version} |\n"
                                    "|---|---|---|\n| balanced accuracy | 0.80 | 0.91 |\n\n<script>alert(1)</script>")
        aliases.record_decision(client, NAME, version, "pipeline run", "awaiting_approval",
                                f"v{version} beats v1 (+0.11 balanced accuracy). Waiting for a clinician's approval.")


def make_project(root: Path, issues: int = 2, **clinic) -> Path:
    """Everything but the registry (call `registry` from inside root: MLflow's default store is the project's)."""
    from clinic import accounts
    from pipeline.params import load_params

    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    (root / "data" / "labels").mkdir(parents=True)
    shutil.copy(ROOT / "data" / "labels" / "corrections.csv", root / "data" / "labels" / "corrections.csv")
    shrink_params(root, **SMALL_DATA, dedup={"max_distance": 0}, clinic=clinic)
    make_images(root / "data" / "raw")
    params = load_params(root / "params.yaml")
    label_issues(data_outputs(root, params), root / "reports" / "label_issues.csv", issues)
    for name, (role, password) in USERS.items():
        accounts.add_user(root / params.clinic.accounts, name, role, password)
    return root


def phone_photos(source: Path, out: Path) -> dict[str, Path]:
    """A 12 MP JPEG (4000x3000, as a phone writes it) and a 12 MP HEIC, upscaled from a real image."""
    import pillow_heif
    from PIL import Image

    pillow_heif.register_heif_opener()
    out.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        big = image.convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
    photos = {"jpeg": out / "phone.jpg", "heic": out / "phone.heic"}
    big.save(photos["jpeg"], format="JPEG", quality=92)
    big.save(photos["heic"], format="HEIF", quality=80, enc_params={"preset": "ultrafast"})  # 4 s, not 25
    return photos
