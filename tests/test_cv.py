"""The cross-validated estimate: grouped folds over train + val only, every image scored once."""
import json

import numpy as np
import pandas as pd
import pytest

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


@pytest.mark.parametrize("head", ["network", "linear", "scratch"])
def test_a_fold_of_a_member_is_the_training_procedure_on_its_rows(tmp_path, keras_home, head):
    """A fold trains the member built once (weights restored, a pretrained network's frozen activations and
    phase 1's features read from the files computed once, the scored rows predicted from the activations; a
    scratch network from pixels, its BatchNorm trained): the same probabilities as a model built afresh,
    trained by train.fit_model on the fold's images and predicted from pixels; and a second fold on the same
    rows gives them again (nothing carried over from the first, the traced steps reused)."""
    import keras

    from pipeline.models import ARCHITECTURES
    from pipeline.streams import Subset, predict_rows
    from pipeline.tracking import History
    from pipeline.train import class_weights, fit_model

    weights = keras_home / "models" / ARCHITECTURES["MobileNetV2"].weights_file.format(alpha=0.35, size=224)
    raw = tiny_project(tmp_path)
    params = shrunk(tmp_path, train={"head_epochs": 2, "finetune_epochs": 2, "finetune_layers": 12, "batch_size": 8,
                                     "finetune_learning_rate": 1e-3, "probe_folds": 2,
                                     "architectures": {"M": {"base": "SmallCNN", "weights": "none", "image_size": 32}
                                                       if head == "scratch" else
                                                       {"base": "MobileNetV2", "weights": str(weights),
                                                        "alpha": 0.35, "image_size": 32, "head": head}}})
    rows = cv.pool_rows(tmp_path / "split.csv", CLASSES)
    pool = cv.images(rows, raw, tmp_path / "aug", pd.DataFrame(columns=["path", "label", "group_id"]), CLASSES, 0)
    groups = rows.group_id.to_numpy()
    member = cv.Member("M", params, pool, len(rows), tmp_path)
    assert (member.pooled is None) == (head != "network") and (member.frozen is None) == (head == "scratch")
    fit, stop, score = np.arange(0, 16), np.arange(16, 20), np.arange(20, 24)
    first = member.train_and_predict(fit, stop, score, groups)
    again = member.train_and_predict(fit, stop, score, groups)

    fresh, spec = member.build(), params.train.architectures["M"]
    data = {"train": Subset(member.pool, fit), "val": Subset(member.pool, stop), "train_groups": groups[fit],
            "train_originals": len(fit)}
    keras.utils.set_random_seed(params.base.seed)
    fit_model(fresh, data, spec, params.train, class_weights(data["train"].y, 3), History(), params.base.seed)
    reference = predict_rows(lambda x: fresh.model.predict_on_batch(x), Subset(member.pool, score))
    np.testing.assert_allclose(first, reference, atol=1e-5)
    np.testing.assert_allclose(again, first, atol=1e-6)
    assert np.abs(first - first.mean(0)).max() > 1e-3  # trained: the rows are told apart


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


def test_the_stage_writes_both_numbers_and_logs_the_estimate_on_the_chosen_run(tmp_path, monkeypatch):
    """cv.run on a small set: cv.json holds the cross-validated interval beside the test split's, the text
    says which question each answers, and the chosen run and the pipeline's parent run carry the metrics."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    raw = tiny_project(tmp_path)
    params = shrunk(tmp_path, train={"head_epochs": 1, "finetune_epochs": 0, "batch_size": 8,
                                     "architectures": {"SmallCNN": {"weights": "none", "image_size": 16}}},
                    cv={"folds": 3, "max_images": 1000}, evaluate={"bootstrap": 50})
    client = MlflowClient()
    experiment = client.create_experiment(params.train.experiment, artifact_location=(tmp_path / "mlruns").as_uri())
    parent = client.create_run(experiment).info.run_id
    child = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "run.json").write_text(json.dumps({"run_id": child, "parent_run_id": parent}))
    metrics = {"best": {"architecture": "SmallCNN", "test_value": 0.5, "test_interval": {"low": 0.2, "high": 0.8},
                        "run_id": child, "model": str(tmp_path / "m" / "model.keras")},
               "architectures": {"SmallCNN": {}}}
    (tmp_path / "m.json").write_text(json.dumps(metrics))

    out = cv.run(params, cv.Inputs(raw, tmp_path / "aug", tmp_path / "split.csv", tmp_path / "aug.csv",
                                   tmp_path / "m.json"), cv.Outputs(tmp_path / "cv.json"))
    written = json.loads((tmp_path / "cv.json").read_text())
    assert written["ran"] and written["folds"] == 3 and written["images"] == 24 and written["procedure"] == ["SmallCNN"]
    ci = written["interval"]
    assert 0 <= ci["low"] <= ci["estimate"] <= ci["high"] <= 1 and len(written["per_fold"]) == 3
    assert "Test split" in out["text"] and "Cross-validated (3 grouped, stratified folds" in out["text"]
    m = params.evaluate.select_by
    for run_id in (child, parent):
        logged = client.get_run(run_id).data
        assert logged.metrics[f"cv_{m}_low"] == ci["low"] and logged.metrics["cv_folds"] == 3
        assert logged.tags["cv_answers"] == written["questions"]["cv"]
