"""The linear probe: C chosen by grouped CV on train, its logistic regression written back as a Dense layer."""
import numpy as np
import pytest

from pipeline.models import build_model
from pipeline.probe import choose_c, feature_model, fit_logistic, fit_probe, write_dense
from pipeline.streams import InMemory
from pipeline.tracking import History
from pipeline.train import class_weights
from tests.conftest import train_settings


def tiny_images(n=36, size=32, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.uniform(0, 255, (n, size, size, 3)).astype("float32")
    x[..., 1] += y[:, None, None] * 25  # a signal a linear head can find
    groups = np.array([f"g{i // 2}" for i in range(n)], dtype=object)  # pairs of near copies
    return x, y, groups


@pytest.mark.parametrize("classes", [3, 2])
def test_dense_write_back_reproduces_scikit_learn(classes):
    """The saved Keras model's probabilities equal predict_proba of the fitted regression (1e-5),
    multinomial and two-class (one logit in scikit-learn, two softmax outputs in Keras)."""
    x, y, groups = tiny_images(classes=classes)
    parts = build_model("SmallCNN", classes, "none", size=32, head="linear", seed=3)
    features = np.asarray(feature_model(parts).predict_on_batch(x))
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)  # unit length, in the model
    lr = fit_logistic(features, y, 10.0, class_weights(y, classes), seed=0)
    write_dense(parts.model.get_layer("classes"), lr, classes)
    np.testing.assert_allclose(parts.model.predict_on_batch(x), lr.predict_proba(features), atol=1e-5)


def test_c_is_chosen_by_grouped_folds_of_train():
    """No duplicate group is split across a fold's fit and score parts, every image is scored once, and the
    chosen C is the one with the lowest out-of-fold loss of those tried."""
    rng = np.random.default_rng(1)
    y = np.arange(60) % 3
    features = rng.normal(size=(60, 8)) + np.eye(3)[y] @ rng.normal(size=(3, 8))
    groups = np.array([f"g{i // 3}" for i in range(60)], dtype=object)
    c, losses, splits = choose_c(features, y, groups, (0.01, 1.0, 100.0), 4, class_weights(y, 3), 3, seed=0)
    for fit, score in splits:
        assert not set(groups[fit]) & set(groups[score])
    assert sorted(np.concatenate([s for _, s in splits]).tolist()) == list(range(60))
    assert set(losses) == {0.01, 1.0, 100.0} and losses[c] == min(losses.values())
    assert len(set(losses.values())) == 3  # the grid matters: the losses differ


def test_fit_probe_fills_the_model_and_reports_its_choice():
    x, y, groups = tiny_images()
    parts = build_model("SmallCNN", 3, "none", size=32, head="linear", seed=3)
    data = {"train": InMemory(x[:24], y[:24]), "val": InMemory(x[24:], y[24:]), "train_groups": groups[:24]}
    history = History()
    extra = fit_probe(parts, data, train_settings(probe_c=(0.1, 10.0), probe_folds=3), class_weights(y[:24], 3),
                      history, seed=0)
    assert extra["probe_c"] in (0.1, 10.0) and [r["C"] for r in history.rows] == [0.1, 10.0]
    probs = parts.model.predict_on_batch(x)
    assert probs.shape == (36, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs[:24].argmax(1) == y[:24]).mean() > 0.9  # the training images' signal was learnt
