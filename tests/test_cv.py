"""The cross-validated estimate: grouped folds over train + val only, every image scored once."""
import json

import numpy as np
import pandas as pd

from pipeline import cv
from tests.conftest import noise_image, shrunk

CLASSES = ("normal", "precancer", "cancer")


def tiny_project(tmp_path, per_class=8):
    """Images for train and val (pairs of copies in one duplicate group); test and calibration rows whose
    files do not exist, so reading any of them fails the run."""
    raw, rows = tmp_path / "raw", []
    for k, label in enumerate(CLASSES):
        for i in range(per_class):
            path = f"{label}/{i}.png"
            (raw / label).mkdir(parents=True, exist_ok=True)
            image = np.asarray(noise_image(100 * k + i // 2, size=(24, 24))).astype(int)
            image[..., k] = np.clip(image[..., k] + 80, 0, 255)  # a class signal
            from PIL import Image
            Image.fromarray(image.astype("uint8")).save(raw / path)
            rows.append({"path": path, "label": label, "group_id": f"{label}-g{i // 2}",
                         "split": "val" if i >= per_class - 2 else "train", "sha256": ""})
        for split in ("test", "calibration"):
            rows.append({"path": f"{label}/missing-{split}.png", "label": label, "group_id": f"{label}-{split}",
                         "split": split, "sha256": ""})
    pd.DataFrame(rows).to_csv(tmp_path / "split.csv", index=False)
    pd.DataFrame(columns=["path", "label", "source_path", "group_id"]).to_csv(tmp_path / "aug.csv", index=False)
    (tmp_path / "aug").mkdir()
    return raw


def test_pool_rows_hold_train_and_val_only(tmp_path):
    tiny_project(tmp_path)
    rows = cv.pool_rows(tmp_path / "split.csv", CLASSES)
    assert len(rows) == 24 and not rows.path.str.contains("missing").any()


def test_rounds_score_every_fold_once_and_stop_on_another():
    roles = cv.fold_roles(5)
    assert sorted(s for s, _ in roles) == list(range(5)) and all(s != stop for s, stop in roles)


def test_the_estimate_scores_train_and_val_once_and_never_reads_test(tmp_path):
    """The procedure (here an ensemble's: two small networks of different input sizes, averaged) really
    trains, one epoch per round, on folds of whole duplicate groups; the test and calibration images do
    not exist, so touching one would fail the run."""
    members = ["SmallCNN", "Tiny"]
    raw = tiny_project(tmp_path)
    params = shrunk(tmp_path, train={"head_epochs": 1, "finetune_epochs": 0, "batch_size": 8,
                                     "architectures": {"SmallCNN": {"weights": "none", "image_size": 16},
                                                       "Tiny": {"base": "SmallCNN", "weights": "none",
                                                                "image_size": 20}}},
                    ensemble={"top_k": 2}, cv={"folds": 3, "max_images": 1000}, evaluate={"bootstrap": 50})
    inputs = cv.Inputs(raw, tmp_path / "aug", tmp_path / "split.csv", tmp_path / "aug.csv", tmp_path / "m.json")
    rows = cv.pool_rows(inputs.split, CLASSES)
    y, probs, fold_of = cv.out_of_fold(members, params, rows, pd.read_csv(inputs.augmented_csv, dtype=str), inputs)
    assert probs.shape == (24, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)  # every image scored
    for group, folds in pd.Series(fold_of).groupby(rows.group_id.to_numpy()):
        assert folds.nunique() == 1, f"group {group} split across folds"
    assert sorted(set(fold_of)) == [0, 1, 2]


def test_a_large_set_is_not_cross_validated(tmp_path):
    raw = tiny_project(tmp_path)
    metrics = {"best": {"architecture": "SmallCNN", "test_value": 0.5, "test_interval": {"low": 0.2, "high": 0.8},
                        "run_id": "x", "model": str(tmp_path / "m" / "model.keras")},
               "architectures": {"SmallCNN": {}}}
    (tmp_path / "m.json").write_text(json.dumps(metrics))
    params = shrunk(tmp_path, cv={"folds": 3, "max_images": 24})
    out = cv.run(params, cv.Inputs(raw, tmp_path / "aug", tmp_path / "split.csv", tmp_path / "aug.csv",
                                   tmp_path / "m.json"), cv.Outputs(tmp_path / "cv.json"))
    assert not out["ran"] and "24 train + val images" in out["reason"]
    assert json.loads((tmp_path / "cv.json").read_text())["test"]["value"] == 0.5
