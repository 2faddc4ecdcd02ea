"""Linear probe: a logistic regression on frozen pretrained features, written back as a Keras Dense layer.

On a few hundred images a linear model on frozen ImageNet features is a baseline that fine-tuning
often fails to beat, at a fraction of the time. The features come from the same frozen network
training uses (pixels -> in-model preprocessing -> base -> global average pooling), scaled to unit
length (a `UnitNormalization` layer: see label_review.fit_head for why not standardized). The
regularisation C is chosen among `train.probe_c` by the class-weighted log-loss of folds made of
whole duplicate groups of the train split (a near copy of an image never helps score it); the
validation split stays for choosing between candidates. The fitted coefficients become the weights
of the model's final Dense softmax layer, so the result is an ordinary model.keras: export, TFLite,
the pyfunc, Grad-CAM and the registry take it unchanged.
"""
from __future__ import annotations

import numpy as np

from pipeline.streams import Subset, predict_rows

MAX_ITER = 5000


def feature_model(parts):
    """Pixels -> the probe's input: everything of the assembled model but its final Dense layer."""
    import keras

    return keras.Model(parts.model.inputs, parts.model.get_layer("classes").input)


def head_model(parts):
    """The probe's input (feature_model's output) -> probabilities: its final Dense layer alone."""
    import keras

    layer = parts.model.get_layer("classes")
    features = keras.Input(layer.input.shape[1:])
    return keras.Model(features, layer(features))


def fit_logistic(features: np.ndarray, y: np.ndarray, c: float, weights: dict | None, seed: int):
    """One thread: lbfgs' small matrix products gain nothing from more, and on 2 busy shared cores OpenMP
    threads made one ISIC fit (1,124 x 1,280, C=10) 15x slower (5.2 s against 0.35 s)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return LogisticRegression(C=c, class_weight=weights, max_iter=MAX_ITER, random_state=seed).fit(features, y)


def probabilities(model, features: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba in the columns of all classes (a class missing from a fold's fit part gets 0)."""
    out = np.full((len(features), n_classes), 1e-7)
    out[:, model.classes_] = np.clip(model.predict_proba(features), 1e-7, 1)
    return out / out.sum(1, keepdims=True)


def choose_c(features, y, groups, cs, folds: int, weights: dict | None, n_classes: int, seed: int):
    """The C of `cs` with the lowest mean out-of-fold log-loss (class-weighted like the fit), folds of
    whole duplicate groups; returns (C, {C: loss}, folds)."""
    from sklearn.metrics import log_loss

    from pipeline.folds import grouped_folds

    splits = grouped_folds(y, np.asarray(groups), folds, seed)
    w = np.array([(weights or {}).get(int(c), 1.0) for c in y])
    losses = {}
    for c in cs:
        losses[c] = float(np.mean([log_loss(y[test], probabilities(fit_logistic(features[fit], y[fit], c, weights, seed),
                                                                   features[test], n_classes),
                                            sample_weight=w[test], labels=list(range(n_classes)))
                                   for fit, test in splits]))
    return min(cs, key=lambda c: (losses[c], c)), losses, splits


def write_dense(layer, model, n_classes: int) -> None:
    """The logistic regression's softmax as the Dense layer's: multinomial coefficients as they are;
    a two-class model's single logit z as the logits (0, z), whose softmax is (1 - s(z), s(z))."""
    coef, intercept = model.coef_, model.intercept_
    if len(model.classes_) != n_classes:
        raise ValueError(f"the probe saw {len(model.classes_)} of {n_classes} classes in training")
    if n_classes == 2:
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    layer.set_weights([coef.T.astype("float32"), intercept.astype("float32")])


def fit_probe(parts, data: dict, params, weights: dict | None, log, seed: int = 0) -> dict:
    """Features once per train image, C by grouped CV on train, the final fit on all of train, written into
    the model. `data` holds the train source, its rows' duplicate groups and how many of its first rows are
    the split's own images (`train_originals`; the rest, augment's copies, are left out: they exist to balance
    classes, which the class weights do here, and cost a forward pass each). Val is not used: it stays for
    choosing between candidates."""
    n_classes = parts.model.output.shape[-1]
    extract = feature_model(parts)
    own = np.arange(data.get("train_originals", len(data["train"])))  # not augment's copies: class weights balance
    features = (data["train_features"].read(own) if "train_features" in data else  # given: cross-validation's
                predict_rows(lambda x: extract.predict_on_batch(x), Subset(data["train"], own)))
    y, groups = data["train"].y[own], np.asarray(data["train_groups"])[own]
    c, losses, _ = choose_c(features, y, groups, params.probe_c, params.probe_folds,
                            weights, n_classes, seed)
    for i, (value, loss) in enumerate(losses.items()):
        log("probe")(i, {"C": value, "cv_log_loss": loss})
    write_dense(parts.model.get_layer("classes"), fit_logistic(features, y, c, weights, seed), n_classes)
    return {"probe_c": c, "probe_cv_log_loss": losses[c]}
