"""The architecture table: name -> Keras constructor, preprocessing, input size, weights file.

Not the MLflow Model Registry (pipeline/registry/): `train.architectures` in params.yaml names
entries of `ARCHITECTURES`, and `get_arch` is where an unknown name is refused.

Preprocessing is built from stock layers inside the model (no Lambda layers, which Keras 3
refuses to load safely), so the saved model, the TFLite file and the registered model all take the
same input: RGB pixels in 0..255, float32, at the architecture's input size.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import project

IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN, TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Arch:
    application: str | None  # attribute of keras.applications; None for the scratch baseline
    preprocess: str          # "tf" (-1..1), "torch" (ImageNet mean/std), "caffe" (BGR, mean), "raw" (0..255), "unit" (0..1)
    size: int
    weights_file: str | None  # file name Keras keeps under $KERAS_HOME/models/ ({alpha} and {size} filled in)


ARCHITECTURES: dict[str, Arch] = {
    "MobileNetV2": Arch("MobileNetV2", "tf", 224, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{size}_no_top.h5"),
    **{f"DenseNet{d}": Arch(f"DenseNet{d}", "torch", 224, f"densenet{d}_weights_tf_dim_ordering_tf_kernels_notop.h5")
       for d in (121, 169, 201)},
    **{f"ResNet{d}": Arch(f"ResNet{d}", "caffe", 224, f"resnet{d}_weights_tf_dim_ordering_tf_kernels_notop.h5")
       for d in (50, 101)},
    **{f"ResNet{d}V2": Arch(f"ResNet{d}V2", "tf", 224, f"resnet{d}v2_weights_tf_dim_ordering_tf_kernels_notop.h5")
       for d in (50, 101)},
    **{f"VGG{d}": Arch(f"VGG{d}", "caffe", 224, f"vgg{d}_weights_tf_dim_ordering_tf_kernels_notop.h5") for d in (16, 19)},
    "InceptionV3": Arch("InceptionV3", "tf", 299, "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "Xception": Arch("Xception", "tf", 299, "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "InceptionResNetV2": Arch("InceptionResNetV2", "tf", 299,
                              "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    **{f"EfficientNetB{i}": Arch(f"EfficientNetB{i}", "raw", s, f"efficientnetb{i}_notop.h5")
       for i, s in enumerate((224, 240, 260, 300))},
    "SmallCNN": Arch(None, "unit", 128, None),
}


class WeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but cannot be had; the message says which file and how to provide it."""


def get_arch(name: str) -> Arch:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; valid names: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name]


def keras_cache() -> Path:
    """$KERAS_HOME/models, with KERAS_HOME defaulting to .keras/ in the project root (pipeline/project.py)."""
    return project.keras_home() / "models"


def resolve_weights(name: str, weights: str, size: int, alpha: float = 1.0) -> str | None:
    """'none' -> None; a path -> that path (checked); 'imagenet' -> the cached file, or Keras' download."""
    arch = get_arch(name)
    if weights == "none":
        return None
    if weights != "imagenet":
        if not Path(weights).is_file():
            raise WeightsUnavailable(f"{name}: weights file {weights} does not exist")
        return str(Path(weights).resolve())
    if arch.weights_file is None:
        raise WeightsUnavailable(f"{name} is trained from scratch: set its weights to 'none'")
    cached = keras_cache() / arch.weights_file.format(alpha=float(alpha), size=size)
    if cached.is_file():
        return str(cached)
    return "imagenet"  # not cached: let Keras download it where the machine can (see build_base)


def preprocessing_layers(kind: str) -> list:
    """Stock Keras layers reproducing keras.applications' preprocess_input for each family."""
    import keras

    if kind == "tf":
        return [keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess_tf")]
    if kind == "unit":
        return [keras.layers.Rescaling(1 / 255.0, name="preprocess_unit")]
    if kind == "torch":
        return [keras.layers.Rescaling(1 / 255.0, name="preprocess_scale"),
                keras.layers.Normalization(mean=TORCH_MEAN, variance=np.square(TORCH_STD), name="preprocess_torch")]
    if kind == "caffe":  # RGB -> BGR and mean subtraction as one fixed 1x1 convolution
        permute = np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3)
        layer = keras.layers.Conv2D(3, 1, name="preprocess_caffe", trainable=False)
        layer.build((None, None, None, 3))
        layer.set_weights([permute, -np.array(IMAGENET_MEAN_BGR, dtype="float32")])
        return [layer]
    return []  # "raw": the application preprocesses inside itself (EfficientNet)


def small_cnn(size: int, seed: int):
    """The from-scratch baseline: four conv blocks, small enough to train on a CPU."""
    import keras

    inputs = keras.Input((size, size, 3))
    x = inputs
    for i, filters in enumerate((16, 32, 64, 128)):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}",
                                kernel_initializer=keras.initializers.HeNormal(seed + i))(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    return keras.Model(inputs, x, name="small_cnn")


def build_base(name: str, weights: str, size: int | None = None, alpha: float = 1.0, seed: int = 0):
    """The feature extractor (no top, no preprocessing) with its weights, or a clear error."""
    import keras

    arch = get_arch(name)
    size = size or arch.size
    if arch.application is None:
        if weights != "none":
            raise WeightsUnavailable(f"{name} has no pretrained weights: set its weights to 'none'")
        return small_cnn(size, seed)
    source = resolve_weights(name, weights, size, alpha)
    kwargs = {"alpha": alpha} if name == "MobileNetV2" else {}
    try:
        return getattr(keras.applications, arch.application)(
            include_top=False, weights=source, input_shape=(size, size, 3), **kwargs)
    except Exception as err:
        if source != "imagenet":
            raise
        needed = arch.weights_file.format(alpha=float(alpha), size=size)
        raise WeightsUnavailable(
            f"{name}: ImageNet weights are not in the Keras cache and could not be downloaded ({err}). "
            f"Needed file: {keras_cache() / needed}. Copy it there (KERAS_HOME sets the cache folder), set "
            f"the architecture's weights to a file path, or to 'none' to train from random weights.") from None


@dataclass
class Parts:
    """The assembled model and its pieces, which training reuses to cache what is frozen."""
    model: object
    prep: list
    base: object
    head: list
    cached: object = None  # train.cached_models' models, built by the first fit and reused by later ones (cv's folds)


def build_model(name: str, n_classes: int, weights: str, size: int | None = None, alpha: float = 1.0,
                dropout: float = 0.0, l2: float = 0.0, seed: int = 0, head: str = "network",
                title: str | None = None) -> Parts:
    """Raw RGB pixels (0..255) in, class probabilities out. head "linear" (a probe, pipeline/probe.py):
    pooled features scaled to unit length, then one Dense softmax layer that a logistic regression fills."""
    import keras

    arch = get_arch(name)
    size = size or arch.size
    base = build_base(name, weights, size, alpha, seed)
    prep = preprocessing_layers(arch.preprocess)
    middle = ([keras.layers.UnitNormalization(name="unit_length")] if head == "linear" else
              [keras.layers.Dropout(dropout, seed=seed, name="dropout")])
    head = [keras.layers.GlobalAveragePooling2D(name="pool"), *middle,
            keras.layers.Dense(n_classes, activation="softmax", name="classes",
                               kernel_regularizer=keras.regularizers.L2(l2) if l2 and head != "linear" else None,
                               kernel_initializer=keras.initializers.GlorotUniform(seed))]
    inputs = keras.Input((size, size, 3), name="image")
    x = inputs
    for layer in prep:
        x = layer(x)
    # Keras 3 passes the outer call's `training` flag through nested functional calls, so this
    # `training=False` does not freeze anything by itself: a BatchNorm layer runs in inference mode
    # when it is not trainable. Training freezes the pretrained base (phase 1) and keeps its BatchNorm
    # layers frozen when fine-tuning (train.set_trainable); a scratch network trains all of them.
    x = base(x, training=False)
    for layer in head:
        x = layer(x)
    return Parts(keras.Model(inputs, x, name=title or name), prep, base, head)
