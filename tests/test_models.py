"""Every entry of the architecture table builds, takes raw pixels, and matches Keras' own preprocessing."""
import numpy as np
import pytest

from pipeline.models import (ARCHITECTURES, WeightsUnavailable, build_model, get_arch, preprocessing_layers,
                             resolve_weights)

TINY = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}  # the smallest inputs they accept


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_forward_pass_on_tiny_input(name):
    size = TINY.get(name, 32)
    model = build_model(name, 3, weights="none", size=size, alpha=0.35 if name == "MobileNetV2" else 1.0).model
    probs = model.predict(np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32"), verbose=0)
    assert probs.shape == (2, 3)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)


@pytest.mark.parametrize("kind, module", [("tf", "mobilenet_v2"), ("torch", "densenet"), ("caffe", "resnet50")])
def test_in_model_preprocessing_matches_keras_applications(kind, module):
    import keras

    x = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    y = x
    for layer in preprocessing_layers(kind):
        y = layer(y)
    expected = getattr(keras.applications, module).preprocess_input(x.copy())
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-4, atol=1e-3)


def test_unknown_architecture_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid names: .*DenseNet121.*MobileNetV2"):
        get_arch("MobileNetV9")


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        resolve_weights("MobileNetV2", str(tmp_path / "nope.h5"), 224, 0.35)


def test_imagenet_weights_load_offline_from_the_shared_cache(keras_home):
    path = resolve_weights("MobileNetV2", "imagenet", 224, 0.35)
    assert path.endswith("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5")
    base = build_model("MobileNetV2", 3, weights="imagenet", alpha=0.35).base
    import h5py
    with h5py.File(path) as f:  # the first conv kernel really came from the file
        kernel = f["Conv1"]["Conv1"]["kernel"][()]
    np.testing.assert_array_equal(base.get_layer("Conv1").get_weights()[0], kernel)


def test_uncached_imagenet_weights_fail_with_the_file_name(keras_home):
    with pytest.raises(WeightsUnavailable, match=r"densenet121_weights_tf_dim_ordering_tf_kernels_notop\.h5"):
        build_model("DenseNet121", 3, weights="imagenet", size=32)
