"""Reading the project's Keras files, and the one layer of the project's own they may hold.

`Resize` sits in front of an ensemble member whose input size is smaller than the ensemble's
(pipeline/ensemble.py). It is not `keras.layers.Resizing`: with that stock layer in front of a nested
model, the SavedModel export (and so every TFLite file made from it) computed different probabilities
from Keras, off by up to 0.99 (Keras 3.x with TensorFlow 2.x; tests/test_ensemble.py would catch it
again). The same bilinear resize through `keras.ops` exports exactly. Every loader goes through
`load_model` here, so the layer is registered before a file that holds it is read.
"""
from __future__ import annotations

from pathlib import Path

import keras


@keras.saving.register_keras_serializable(package="oralscan")
class Resize(keras.layers.Layer):
    """Bilinear resize (no antialiasing) of a batch of images to size x size."""

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)

    def call(self, images):
        return keras.ops.image.resize(images, (self.size, self.size), interpolation="bilinear")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def ensemble_members(model) -> list:
    """An ensemble's member models, strongest first (pipeline/ensemble.py names them `member_0` to
    `member_<k-1>`); [] for any other model."""
    members = {layer.name: layer for layer in model.layers if layer.name.startswith("member_")}
    return [members[f"member_{i}"] for i in range(len(members))] if "member_0" in members else []


def load_model(path: Path | str):
    return keras.saving.load_model(path)
