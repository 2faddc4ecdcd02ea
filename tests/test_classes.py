"""Any number of classes >= 2: the real stages, validate to register, on 2- and 4-class params."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import SMALL_DATA, data_stages, noise_image, shrunk

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

    from pipeline import augment, evaluate, export, register, train
    from pipeline.inference import classify, load_classifier

    classes, positive = CONFIGS[n_classes]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    raw, out, reports = tmp_path / "raw", tmp_path / "out", tmp_path / "reports"
    make_raw(raw, classes)
    params = shrunk(
        tmp_path, **SMALL_DATA, base={"classes": classes, "positive_classes": positive},
        augment={"target_per_class": 12},
        train={"head_epochs": 3, "finetune_epochs": 0, "batch_size": 8,
               "architectures": {"SmallCNN": {"weights": "none", "image_size": 32}}},
        evaluate={"bootstrap": 200}, export={"latency_repeats": 2},
        register={"min_sensitivity": {c: 0.0 for c in positive}, "min_specificity": 0.0})
    data_stages(params, raw, out, reports)
    augment.run(params, augment.Inputs(raw, out / "split.csv"), augment.Outputs(out / "aug", out / "aug.csv"))
    train.run(params, train.Inputs(raw, out / "aug", out / "split.csv", out / "aug.csv"),
              train.Outputs(tmp_path / "models" / "SmallCNN", out / "train.json"), "SmallCNN")
    metrics = evaluate.run(params, evaluate.Inputs(raw, out / "split.csv", tmp_path / "models"), evaluate.Outputs(
        reports / "metrics.json", reports / "board.csv", reports / "evaluate", reports / "confusion"))
    test = metrics["architectures"]["SmallCNN"]["test"]
    assert test["roc_auc"] is not None and 0 <= test["roc_auc"] <= 1  # binary AUC for 2, one-vs-rest for 4
    assert set(metrics["architectures"]["SmallCNN"]["test_report"]["classes"]) == set(classes)
    export.run(params, export.Inputs(raw, out / "split.csv", reports / "metrics.json"),
               export.Outputs(tmp_path / "export", reports / "export.json", reports / "operating_point.json",
                              reports / "operating_point.png"))
    assert (tmp_path / "export" / "labels.txt").read_text().split() == classes
    result = register.run(params, register.Inputs(raw, out / "split.csv", reports / "metrics.json", tmp_path / "export",
                                                  reports, operating_point=reports / "operating_point.json"),
                          register.Outputs(reports / "model_card.md", reports / "registry.json"))
    assert result["alias"] == "champion" and result["version"] == 1
    card = (reports / "model_card.md").read_text()
    assert all(f"| {c} |" in card for c in classes)
    version = MlflowClient().get_model_version("oralscan-classifier", "1")
    assert version.tags["classes"] == ",".join(classes)
    served = load_classifier("models:/oralscan-classifier@champion")
    rows = pd.read_csv(out / "split.csv").query("split == 'test'")
    answer = classify(served, [raw / rows.path.iloc[0]])[0]
    assert list(answer["probabilities"]) == classes and answer["error"] is None
    # one decision in every form that ships: the registry's model, Keras and each exported TFLite variant
    metadata = json.loads((tmp_path / "export" / "metadata.json").read_text())
    assert metadata["operating_point"]["positive_classes"] == list(positive) and metadata["variants"]
    images = [raw / path for path in rows.path]
    decisions = {"registry": [a["refer"] for a in classify(served, images)]}
    for name in ["model.keras", *(v["file"] for v in metadata["variants"].values())]:
        decisions[name] = [a["refer"] for a in classify(load_classifier(str(tmp_path / "export" / name)), images)]
    assert all(d == decisions["registry"] for d in decisions.values()), decisions
    assert all(isinstance(d, bool) for d in decisions["registry"])
    assert json.loads((reports / "registry.json").read_text())["alias"] == "champion"
