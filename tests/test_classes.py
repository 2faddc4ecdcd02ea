"""Any number of classes >= 2: the real stages, validate to register, on 2- and 4-class params."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import noise_image, shrink_params

CONFIGS = {
    2: (["non-cancer", "cancer"], ["cancer"]),
    4: (["normal", "benign", "precancer", "cancer"], ["cancer", "precancer"]),
}
COLOURS = [(220, 60, 60), (60, 200, 60), (60, 60, 220), (220, 220, 40)]


def make_raw(raw, classes, per_class=14):
    for k, label in enumerate(classes):
        for i in range(per_class):
            blobs = np.asarray(noise_image(1000 * k + i, (72, 72)), dtype=float)
            pixels = 0.35 * blobs + 0.65 * np.array(COLOURS[k])  # the class is the tint: learnable in 2 epochs
            (raw / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype("uint8")).save(raw / label / f"{i}.png")


@pytest.mark.slow
@pytest.mark.parametrize("n_classes", sorted(CONFIGS))
def test_real_stages_on_other_class_counts(n_classes, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline import augment, dedup, evaluate, export, register, split, train, validate
    from pipeline.inference import classify, load_classifier

    classes, positive = CONFIGS[n_classes]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    raw, out, reports = tmp_path / "raw", tmp_path / "out", tmp_path / "reports"
    make_raw(raw, classes)
    params = shrink_params(
        tmp_path, base={"classes": classes, "positive_classes": positive},
        validate={"min_images_per_class": 5}, augment={"target_per_class": 12},
        train={"head_epochs": 3, "finetune_epochs": 0, "batch_size": 8,
               "architectures": {"SmallCNN": {"weights": "none", "image_size": 32}}},
        evaluate={"bootstrap": 200}, export={"latency_repeats": 2},
        register={"min_sensitivity": {c: 0.0 for c in positive}})
    validate.run(params, raw, out / "manifest.csv", out / "docs", reports / "validation.json")
    paths = {"groups": out / "g.csv", "cache": out / "c.json", "quarantine": out / "q",
             "report": reports / "dedup.json", "sheet": out / "s.png"}
    dedup.run(params, raw, out / "manifest.csv", paths)
    split.run(params, paths["groups"], out / "split.csv", reports / "split.json")
    augment.run(params, raw, out / "split.csv", out / "aug", out / "aug.csv")
    inputs = {"raw": raw, "augmented": out / "aug", "split": out / "split.csv", "augmented_csv": out / "aug.csv"}
    train.run(params, "SmallCNN", inputs, tmp_path / "models" / "SmallCNN", out / "train.json")
    figures = {"models": tmp_path / "models", "metrics": reports / "metrics.json", "leaderboard": reports / "board.csv",
               "figures": reports / "evaluate", "plots": reports / "confusion"}
    for d in ("evaluate", "confusion"):
        (reports / d).mkdir(parents=True, exist_ok=True)
    metrics = evaluate.run(params, raw, out / "split.csv", figures)
    test = metrics["architectures"]["SmallCNN"]["test"]
    assert test["roc_auc"] is not None and 0 <= test["roc_auc"] <= 1  # binary AUC for 2, one-vs-rest for 4
    assert set(metrics["architectures"]["SmallCNN"]["test_report"]["classes"]) == set(classes)
    export.run(params, raw, out / "split.csv", reports / "metrics.json", tmp_path / "export", reports / "export.json")
    assert (tmp_path / "export" / "labels.txt").read_text().split() == classes
    result = register.run(params, raw, out / "split.csv", reports / "metrics.json", tmp_path / "export", reports,
                          reports / "model_card.md", reports / "registry.json")
    assert result["alias"] == "champion" and result["version"] == 1
    card = (reports / "model_card.md").read_text()
    assert all(f"| {c} |" in card for c in classes)
    version = MlflowClient().get_model_version("oralscan-classifier", "1")
    assert version.tags["classes"] == ",".join(classes)
    served = load_classifier("models:/oralscan-classifier@champion")
    rows = pd.read_csv(out / "split.csv").query("split == 'test'")
    answer = classify(served, [raw / rows.path.iloc[0]])[0]
    assert list(answer["probabilities"]) == classes and answer["error"] is None
    assert json.loads((reports / "registry.json").read_text())["alias"] == "champion"
