"""The ensemble: one Keras model whose output is the mean of its members' probabilities."""
import numpy as np

from pipeline.ensemble import build_ensemble, rank
from pipeline.models import build_model
from pipeline.predict import gradcam, strongest_member


def member(size, seed):
    return build_model("SmallCNN", 3, "none", size=size, seed=seed).model


def test_ensemble_equals_the_mean_of_its_members_after_a_save_and_load(tmp_path):
    """Members of different input sizes: the smaller one sees the image resized (bilinear) inside the model."""
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (5, 32, 32, 3)).astype("float32")
    big, small = member(32, 1), member(24, 2)
    expected = (np.asarray(big.predict_on_batch(x)) +
                np.asarray(small.predict_on_batch(tf.image.resize(x, (24, 24), "bilinear").numpy()))) / 2
    model = build_ensemble([big, small], [32, 24])
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.input.shape[1:] == (32, 32, 3) and loaded.output.shape[-1] == 3  # one input, one output
    np.testing.assert_allclose(loaded.predict_on_batch(x), expected, atol=1e-6)
    assert not np.allclose(expected, big.predict_on_batch(x), atol=1e-3)  # both members count


def test_gradcam_of_an_ensemble_is_its_strongest_members():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (32, 32, 3)).astype("float32")
    small, big = member(24, 3), member(32, 4)
    model = build_ensemble([small, big], [24, 32])  # the strongest member is the smaller one: resized for it
    explained, seen = strongest_member(model, x)
    assert explained is model.get_layer("member_0") and seen.shape == (24, 24, 3)
    cam = gradcam(model, x, 1)
    np.testing.assert_allclose(cam, gradcam(explained, seen, 1), atol=1e-6)
    assert cam.ndim == 2 and 0 <= cam.max() <= 1.0


def test_members_are_ranked_as_the_leaderboard_ranks():
    val = {"B": {"balanced_accuracy": 0.8, "roc_auc": 0.9}, "A": {"balanced_accuracy": 0.8, "roc_auc": 0.9},
           "C": {"balanced_accuracy": 0.9, "roc_auc": 0.5}, "D": {"balanced_accuracy": 0.8, "roc_auc": 0.95},
           "E": {"balanced_accuracy": None, "roc_auc": 1.0}}
    assert rank(val, "balanced_accuracy") == ["C", "D", "A", "B", "E"]


def test_the_ensemble_is_chosen_only_on_a_strictly_higher_validation_score():
    from pipeline.evaluate import leaderboard
    from tests.test_evaluate import result

    def ensemble(val):
        return {**result(val, 0.9), "members": ["A", "B"]}

    tie = leaderboard({"ensemble": {**ensemble(0.9), "val": {"balanced_accuracy": 0.9, "roc_auc": 0.99}},
                       "A": result(0.9, 0.7), "B": result(0.8, 0.7)}, "balanced_accuracy", ["cancer"])
    assert list(tie.architecture) == ["A", "ensemble", "B"]  # a higher ROC-AUC does not break a tie for it
    wins = leaderboard({"ensemble": ensemble(0.91), "A": result(0.9, 0.7)}, "balanced_accuracy", ["cancer"])
    assert wins.architecture.iloc[0] == "ensemble" and wins.chosen.iloc[0]


def test_an_ensembles_temperature_is_fitted_on_what_export_folds_and_its_tflite_agrees(tmp_path):
    """export: T is fitted on the members' own outputs (each softmax(z_i / T), then averaged), so the folded
    ensemble is the model the fit chose; the TFLite conversion of the folded ensemble matches Keras."""
    import keras

    from pipeline.export import convert, fold_temperature, member_probs
    from pipeline.inference import TFLiteModel
    from pipeline.operating_point import fit_temperature, with_temperature
    from pipeline.streams import InMemory

    rng = np.random.default_rng(2)
    members = [member(32, 5), member(24, 6)]
    for m in members:  # confident members, so the temperature matters
        kernel, bias = m.get_layer("classes").get_weights()
        m.get_layer("classes").set_weights([kernel * 6, bias])
    build_ensemble(members, [32, 24]).save(tmp_path / "model.keras")
    model = keras.saving.load_model(tmp_path / "model.keras")  # as export reads it
    x = rng.uniform(0, 255, (40, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, 40)
    each = member_probs(model, InMemory(x, y))
    assert each.shape == (2, 40, 3) and member_probs(members[0], InMemory(x, y)) is None
    np.testing.assert_allclose(each.mean(0), model.predict_on_batch(x), atol=1e-6)

    t = fit_temperature(each, y)
    nll = lambda temp: -np.mean(np.log(np.mean([with_temperature(p, temp) for p in each], 0)[np.arange(40), y]))  # noqa: E731
    assert nll(t) <= min(nll(v) for v in np.linspace(0.5, 10, 96)) + 1e-4  # the optimum of the ensemble's own loss
    fold_temperature(model, t)
    folded = model.predict_on_batch(x)
    np.testing.assert_allclose(folded, np.mean([with_temperature(p, t) for p in each], 0), atol=1e-5)
    np.testing.assert_allclose(TFLiteModel(convert(model)["float32"]).predict(x), folded, atol=1e-5)


def test_members_are_ranked_on_the_val_probabilities_train_recorded_for_this_split(tmp_path):
    import pandas as pd
    import pytest

    from pipeline.ensemble import validation_scores
    from pipeline.params import load_params
    from pipeline.stage import StageError
    from pipeline.train import write_val_probabilities
    from tests.conftest import ROOT

    base = load_params(ROOT / "params.yaml").base
    classes = list(base.classes)
    val = pd.DataFrame({"label": ["normal", "cancer", "precancer", "cancer"]})
    with pytest.raises(StageError, match="rerun its train stage"):
        validation_scores(tmp_path, val, base, 10)
    y = np.array([classes.index(c) for c in val.label])
    write_val_probabilities(y, np.eye(3)[y], classes, tmp_path)
    assert validation_scores(tmp_path, val, base, 10)["balanced_accuracy"] == 1.0
    with pytest.raises(StageError, match="not of this val split"):
        validation_scores(tmp_path, val.iloc[:3], base, 10)
