"""A project for the registry and serving tests: real validate/dedup/split outputs over colour-coded
images, and small Keras models with hand-set weights whose quality is known in advance (mediocre,
bad, perfect), put through the real evaluate -> export -> register on a SQLite MLflow store.
"""
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SMALL_DATA, data_stages, shrink_params

CLASSES = ["normal", "precancer", "cancer"]
COLOURS = {"normal": (200, 40, 40), "precancer": (40, 200, 40), "cancer": (40, 40, 200)}
SIZE = 32
WEIGHTS = {  # mean colour (0..1) -> class scores
    "mediocre": np.array([[5, 0, 0], [5, 0, 0], [0, 0, 20]], "float32"),  # red and green both "normal"
    "bad": np.zeros((3, 3), "float32"),                                     # always "normal"
    "perfect": np.eye(3, dtype="float32") * 20,
}


def colour_model(kind: str, weights: np.ndarray | None = None):
    """A hand-set model: WEIGHTS[kind], or `weights` (mean colour -> class scores)."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    features = keras.layers.Conv2D(3, 1, name="features")
    x = features(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    dense = keras.layers.Dense(3, activation="softmax", name="classes")
    out = dense(x)
    model = keras.Model(inputs, out, name=f"Colour{kind}")
    features.set_weights([np.eye(3, dtype="float32").reshape(1, 1, 3, 3), np.zeros(3, "float32")])
    dense.set_weights([WEIGHTS[kind] if weights is None else weights, np.zeros(3, "float32")])
    return model


def write_image(path: Path, label: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(COLOURS[label]) + rng.normal(0, 25, (80, 80, 3)), 0, 255).astype("uint8")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Real validate/dedup/split outputs over colour-coded images; a SQLite MLflow store."""
    from pipeline.params import load_params

    root = tmp_path_factory.mktemp("deploy")
    for label in CLASSES:
        for i in range(40):  # about 6 test images per class: enough for a clear winner to show
            write_image(root / "raw" / label / f"{i}.png", label, zlib.crc32(f"{label}{i}".encode()) % 10_000)
    params = shrink_params(root, **SMALL_DATA, dedup={"max_distance": 0},
                           evaluate={"bootstrap": 20}, export={"latency_repeats": 3},
                           register={"min_sensitivity": {"cancer": 0.5}},
                           # the hand-set models tell cancer (blue) from the rest; precancer only the perfect one
                           operating_point={"positive_classes": ["cancer"]},
                           train={"architectures": {"Colourmediocre": {"weights": "none"}}})
    data_stages(load_params(params), root / "raw", root, reports=root / "reports")
    return root, params


def pipeline_run(root: Path, params: Path, kind: str, before_register=None, retry: bool = False) -> dict:
    """What train leaves behind for one hand-set model, then the real evaluate -> export -> register.
    `retry`: the same training run again (as `dvc repro` after a failed register), not a new one."""
    import mlflow

    from pipeline import evaluate, export, tracking
    from pipeline.params import load_params

    arch = f"Colour{kind}"
    tracking.setup("oralscan")
    model_dir = root / "models" / arch
    if not retry:
        with mlflow.start_run(run_name=arch) as run:
            pass
        model_dir.mkdir(parents=True, exist_ok=True)
        colour_model(kind).save(model_dir / "model.keras")
        (model_dir / "run.json").write_text(json.dumps({
            "architecture": arch, "run_id": run.info.run_id, "parent_run_id": run.info.run_id, "image_size": SIZE,
            "classes": CLASSES, "data_version": "test", "git_commit": "test"}))
    text = params.read_text().replace("Colourmediocre", arch)
    params.write_text(text)
    reports, loaded = root / "reports", load_params(params)
    for d in ("fig", "confusion"):
        (reports / d).mkdir(exist_ok=True)
    evaluate.run(loaded, evaluate.Inputs(raw=root / "raw", split=root / "split.csv", models=root / "models"),
                 evaluate.Outputs(metrics=reports / "metrics.json", leaderboard=reports / "board.csv",
                                  figures=reports / "fig", plots=reports / "confusion"))
    export.run(loaded, export.Inputs(raw=root / "raw", split=root / "split.csv", metrics=reports / "metrics.json"),
               export.Outputs(out=root / "export", report=reports / "export.json",
                              operating_point=reports / "operating_point.json", figure=reports / "operating_point.png"))
    if before_register:
        before_register()
    result = register_again(root, loaded)
    params.write_text(text.replace(arch, "Colourmediocre"))
    return result


def register_again(root: Path, params, shift: Path | None = None) -> dict:
    """The register stage alone on what evaluate and export left (as `dvc repro -f register`)."""
    from pipeline import register

    reports = root / "reports"
    return register.run(params, register.Inputs(raw=root / "raw", split=root / "split.csv",
                                                metrics=reports / "metrics.json", export=root / "export",
                                                reports=reports, operating_point=reports / "operating_point.json",
                                                shift=shift),
                        register.Outputs(card=reports / "model_card.md", out=reports / "registry.json"))
