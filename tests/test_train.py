"""Cached training equals plain fit; the train and evaluate stages log real MLflow runs."""
import json
import sqlite3

import numpy as np
import pandas as pd
import pytest

from pipeline.models import build_model
from pipeline.streams import InMemory
from pipeline.tracking import History
from pipeline.train import class_weights, find_cut, fit_cached, fit_plain, fit_scratch
from tests.conftest import train_settings


def tiny_data(size=32, n=24, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.uniform(0, 255, (n, size, size, 3)).astype("float32")
    x[..., 0] += y[:, None, None] * 20  # a learnable signal
    return {"train": InMemory(x[: n * 2 // 3], y[: n * 2 // 3]), "val": InMemory(x[n * 2 // 3:], y[n * 2 // 3:])}


TOLERANCE = 1e-5  # cached and plain training agree to this (bit-identical here); fine-tuning moves >= 100x


def bn_layers(base) -> list:
    """BatchNorm layers found by name, case-insensitively (MobileNetV2 has `block_1_project_BN`
    and `Conv_1_bn`), checked against their type so neither way misses one."""
    import keras

    by_name = [layer for layer in base.layers if "bn" in layer.name.lower().split("_")]
    assert by_name == [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    return by_name


@pytest.mark.parametrize("finetune_layers", [12, 0])
def test_cached_training_matches_plain_fit(finetune_layers, keras_home):
    """Real ImageNet weights (real BatchNorm statistics), dropout on, and a fine-tuning phase that
    moves the unfrozen weights far beyond the tolerance: any difference between the cached and the
    plain path (a BatchNorm in training mode, other dropout masks, a missed layer) shows."""
    import keras

    from pipeline.models import ARCHITECTURES
    from pipeline.train import set_trainable

    weights = keras_home / "models" / ARCHITECTURES["MobileNetV2"].weights_file.format(alpha=0.35, size=224)
    params = train_settings(batch_size=8, head_epochs=2, finetune_epochs=2, finetune_layers=finetune_layers,
                            finetune_learning_rate=1e-3, dropout=0.3, early_stopping_patience=10)
    data = tiny_data(size=96)
    models = [build_model("MobileNetV2", 3, str(weights), size=96, alpha=0.35, dropout=0.3, seed=1) for _ in range(2)]
    models[1].model.set_weights(models[0].model.get_weights())
    start = {w.path: w.numpy().copy() for w in models[0].model.weights}
    for fit, parts in zip((fit_cached, fit_plain), models):
        keras.utils.set_random_seed(7)
        fit(parts, data, params, class_weights(data["train"].y, 3), History())
    cached, plain = (p.model.predict(data["val"].x, verbose=0) for p in models)
    np.testing.assert_allclose(cached, plain, atol=TOLERANCE)
    for a, b in zip(models[0].model.weights, models[1].model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=TOLERANCE, err_msg=a.path)
    bn = bn_layers(models[0].base)
    assert "Conv_1_bn" in {layer.name for layer in bn}
    for layer in bn:  # pretrained statistics and scales untouched by either phase
        for w in layer.weights:
            np.testing.assert_array_equal(w.numpy(), start[w.path], err_msg=w.path)
    set_trainable(models[0].base, find_cut(models[0].base, 12))
    tuned = [w for layer in models[0].base.layers if layer.trainable for w in layer.trainable_weights]
    moved = [np.abs(w.numpy() - start[w.path]).max() for w in tuned]
    if finetune_layers:
        assert tuned and min(moved) > 100 * TOLERANCE  # fine-tuning really moved every unfrozen weight
    else:
        assert max(moved) == 0  # no fine-tuning: the base stays as loaded
    head = models[0].model.get_layer("classes").kernel
    assert np.abs(head.numpy() - start[head.path]).max() > 100 * TOLERANCE


def test_a_reset_optimizer_is_a_new_one():
    """What cross-validation's folds rely on (compile_fit `again`): after a fit and a learning rate lowered
    (as ReduceLROnPlateau does), no steps, zero moments and the learning rate asked for."""
    import keras

    from pipeline.train import reset_optimizer

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(np.ones((8, 4), "float32"), np.arange(8) % 3, epochs=2, verbose=0)
    model.optimizer.learning_rate = 0.0005
    assert int(model.optimizer.iterations.numpy()) == 2
    assert any(np.abs(v.numpy()).max() > 0 for v in model.optimizer.variables if "iteration" not in v.path)
    reset_optimizer(model.optimizer, 0.01)
    assert int(model.optimizer.iterations.numpy()) == 0
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.01)
    assert all(np.abs(v.numpy()).max() == 0 for v in model.optimizer.variables if "learning_rate" not in v.path)


def test_cut_has_one_tensor_crossing():
    import keras

    base = build_model("MobileNetV2", 3, "none", size=32, alpha=0.35).base
    cut = find_cut(base, 12)
    assert len(base.layers) - 1 - cut >= 12
    keras.Model(base.layers[cut].output, base.output)  # builds: nothing skips past the cut


def test_scratch_network_trains_its_batchnorm():
    """SmallCNN has no pretrained statistics to keep: its BatchNorm layers learn during training."""
    import keras

    params = train_settings(batch_size=8, head_epochs=2, finetune_epochs=0, early_stopping_patience=10)
    keras.utils.set_random_seed(3)
    parts = build_model("SmallCNN", 3, "none", size=32, seed=3)
    bn = [layer for layer in parts.base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    before = [layer.moving_mean.numpy().copy() for layer in bn]
    gammas = [layer.gamma.numpy().copy() for layer in bn]
    fit_scratch(parts, tiny_data(), params, None, History())
    assert all(np.abs(layer.moving_mean.numpy() - b).max() > 1e-3 for layer, b in zip(bn, before))  # statistics moved
    assert all(np.abs(layer.gamma.numpy() - g).max() > 0 for layer, g in zip(bn, gammas))           # and scales trained


def test_finetuning_keeps_pretrained_batchnorm_statistics():
    """What freezes BatchNorm in Keras 3 is layer.trainable (the outer training flag reaches nested
    models): after set_trainable, a training-mode call leaves every BatchNorm statistic alone."""
    import keras

    from pipeline.train import set_trainable

    parts = build_model("MobileNetV2", 3, "none", size=32, alpha=0.35)
    set_trainable(parts.base, find_cut(parts.base, 12))
    bn = [layer for layer in parts.base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    before = [layer.moving_mean.numpy().copy() for layer in bn]
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    parts.model(x, training=True)
    for layer, b in zip(bn, before):
        np.testing.assert_array_equal(layer.moving_mean.numpy(), b)


def test_class_weights_balance():
    assert class_weights(np.array([0, 0, 0, 1]), 2) == {0: pytest.approx(4 / 6), 1: 2.0}


@pytest.mark.slow
def test_train_and_evaluate_stages_log_to_a_real_mlflow_store(tmp_path, monkeypatch, keras_home, demo_raw):
    from pipeline import augment, evaluate, train
    from tests.conftest import SMALL_DATA, data_stages, shrunk

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("PIPELINE_RUN_ID", "test-run")
    params = shrunk(tmp_path, **SMALL_DATA, augment={"target_per_class": 30},
                    train={"head_epochs": 2, "finetune_epochs": 1, "batch_size": 16,
                           "architectures": {"MobileNetV2": {"weights": "imagenet", "alpha": 0.35},
                                             "SmallCNN": {"weights": "none", "image_size": 48}}},
                    evaluate={"bootstrap": 50})
    out = tmp_path / "out"
    data_stages(params, demo_raw, out)
    augment.run(params, augment.Inputs(demo_raw, out / "split.csv"), augment.Outputs(out / "aug", out / "aug.csv"))
    inputs = train.Inputs(demo_raw, out / "aug", out / "split.csv", out / "aug.csv")
    runs = {a: train.run(params, inputs, train.Outputs(tmp_path / "models" / a, out / f"{a}.json"), a)
            for a in ("MobileNetV2", "SmallCNN")}
    summary = evaluate.run(params, evaluate.Inputs(demo_raw, out / "split.csv", tmp_path / "models"),
                           evaluate.Outputs(out / "metrics.json", out / "board.csv", out / "fig", out / "plots"))

    db = sqlite3.connect(tmp_path / "mlflow.db")  # the real store, not a mock
    children = db.execute("SELECT r.run_uuid, r.name FROM runs r JOIN tags t ON r.run_uuid = t.run_uuid "
                          "WHERE t.key = 'mlflow.parentRunId'").fetchall()
    assert sorted(name.split(" data ")[0] for _, name in children) == ["MobileNetV2", "SmallCNN"]
    parents = {row[0] for row in db.execute("SELECT value FROM tags WHERE key = 'mlflow.parentRunId'")}
    assert parents == {runs["MobileNetV2"]["parent_run_id"]}  # one parent per pipeline run
    experiments = {str(row[0]) for row in db.execute("SELECT experiment_id FROM runs")}
    assert experiments == {runs["MobileNetV2"]["experiment_id"]}  # children live in the parent's experiment
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for run_id, name in children:
        name = name.split(" data ")[0]
        files = {f.path for f in client.list_artifacts(run_id)} | {f.path for f in client.list_artifacts(run_id, "test")}
        assert {"val_confusion.png", "val_confusion.json", "test/" + f"{name}_test_confusion.png"} <= files
        epochs = json.loads((out / f"{name}.json").read_text())["epochs"]
        assert len(client.get_metric_history(run_id, "val_loss")) == epochs
        assert client.get_run(run_id).data.metrics["test_balanced_accuracy"] >= 0
    import mlflow

    logged = mlflow.pyfunc.load_model(f"runs:/{runs['SmallCNN']['run_id']}/model")  # model, signature, example
    assert logged.metadata.get_input_schema().inputs[0].shape == (-1, 48, 48, 3)
    output = logged.metadata.get_output_schema().inputs[0]
    assert output.shape == (-1, 3) and output.type == np.dtype("float32")
    assert logged.predict(np.zeros((1, 48, 48, 3), "float32")).shape == (1, 3)
    board = pd.read_csv(out / "board.csv")
    assert board.architecture.iloc[0] == summary["best"]["architecture"] and board.chosen.iloc[0]
    results = summary["architectures"]
    assert summary["best"]["chosen_on"] == "val"  # chosen on validation, never on test
    assert summary["best"]["val_value"] == max(r["val"]["balanced_accuracy"] for r in results.values())
    assert results["MobileNetV2"]["test"]["balanced_accuracy"] > 0.8  # ImageNet features on an easy set
    ci = results["MobileNetV2"]["test_report"]["intervals"]["balanced_accuracy"]
    assert ci["low"] < ci["high"] and ci["low"] <= ci["estimate"] <= ci["high"]
    assert json.loads((out / "plots" / "SmallCNN.json").read_text())[0].keys() == {"actual", "predicted"}
