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
