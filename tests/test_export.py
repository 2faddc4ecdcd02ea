"""The mobile contract: an app that follows export/metadata.json feeds the model what training fed it."""
import numpy as np
from PIL import Image

from pipeline.export import input_contract
from pipeline.images import load_rgb, model_input
from tests.conftest import noise_image

SIZE = 224
# Largest probability difference allowed between the two inputs. Measured here: 0.0002 (float
# resize, rounded); PIL's 8-bit resize, off by 1 grey level almost everywhere, gave 0.019.
PREDICTION_TOLERANCE = 0.002


def contract_images(folder):
    """Shrinking a lot (striped and photo-like), shrinking a little, enlarging, odd aspect."""
    stripes = np.zeros((900, 1200, 3), np.uint8)
    stripes[:, ::2] = 255
    stripes[::3, :, 1] = 128
    images = {"stripes.png": Image.fromarray(stripes), "photo.jpg": noise_image(1, (3000, 2000)),
              "wide.jpg": noise_image(5, (2000, 1000)), "jpeg_small.jpg": noise_image(6, (400, 300)),
              "small.png": noise_image(2, (300, 260)), "tiny.png": noise_image(3, (150, 120)),
              "odd.png": noise_image(4, (97, 301))}
    for name, image in images.items():
        image.save(folder / name, quality=90)
    return [folder / name for name in images]


def tf_decode(path, resize: dict) -> np.ndarray:
    """The decode the metadata states, with TensorFlow's own JPEG decoder (not Pillow)."""
    import tensorflow as tf

    if path.suffix != ".jpg":
        return np.asarray(load_rgb(path))  # no DCT: decoded at full size (the test images carry no EXIF)
    assert "8, 4, 2" in resize["decode"] and "shorter_side // s >= size" in resize["decode"]
    data = path.read_bytes()
    shorter = int(min(tf.image.extract_jpeg_shape(data).numpy()[:2]))
    ratio = next((s for s in (8, 4, 2) if shorter // s >= SIZE), 1)
    return tf.io.decode_jpeg(data, channels=3, ratio=ratio, dct_method="INTEGER_ACCURATE").numpy()


def tf_resize(path, resize: dict) -> np.ndarray:
    """An independent implementation, driven only by the metadata's words."""
    import tensorflow as tf

    assert resize["half_pixel_centers"]  # tf.image.resize always uses half-pixel centres
    out = tf.image.resize(tf_decode(path, resize)[None].astype("float32"), (SIZE, SIZE),
                          method=resize["method"], antialias=resize["antialias"])[0].numpy()
    return np.clip(np.round(out), 0, 255)


def test_tensorflow_reproduces_the_stated_resize(tmp_path):
    resize = input_contract(SIZE)["resize"]
    for path in contract_images(tmp_path):
        ours, theirs = model_input(path, SIZE).astype(float), tf_resize(path, resize)
        assert np.abs(ours - theirs).max() <= resize["max_pixel_difference"], path.name
        if path.name != "stripes.png":  # stripes average to exact .5 ties everywhere
            assert (ours != theirs).mean() < 1e-3, path.name  # off by one only on rare ties
    # the old wording ("bilinear", no antialiasing) is caught: far off on the striped image
    plain = tf_resize(tmp_path / "stripes.png", {**resize, "antialias": False})
    assert np.abs(model_input(tmp_path / "stripes.png", SIZE) - plain).mean() > 20


def test_app_following_the_metadata_gets_the_same_predictions(tmp_path, keras_home):
    from pipeline.models import build_model

    resize = input_contract(SIZE)["resize"]
    model = build_model("MobileNetV2", 3, "imagenet", size=SIZE, alpha=0.35).model
    paths = contract_images(tmp_path)
    ours = model.predict(np.stack([model_input(p, SIZE) for p in paths]).astype("float32"), verbose=0)
    app = model.predict(np.stack([tf_resize(p, resize) for p in paths]).astype("float32"), verbose=0)
    assert np.abs(ours - app).max() <= PREDICTION_TOLERANCE
    assert (ours.argmax(1) == app.argmax(1)).all()
    assert ours.std(axis=0).max() > 1e-3  # the images really are told apart (not a constant model)


def test_tflite_parity_on_a_real_architecture():
    from pipeline.export import VARIANTS, convert
    from pipeline.inference import TFLiteModel
    from pipeline.models import build_model

    model = build_model("MobileNetV2", 3, "none", size=64, alpha=0.35, seed=0).model
    x = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    reference = model.predict(x, verbose=0)
    blobs = convert(model)
    assert set(blobs) == set(VARIANTS)
    np.testing.assert_allclose(TFLiteModel(blobs["float32"]).predict(x), reference, atol=1e-5)
    np.testing.assert_allclose(TFLiteModel(blobs["float16"]).predict(x), reference, atol=2e-2)
    assert len(blobs["dynamic_range"]) < len(blobs["float32"]) / 2


def test_parity_check_rejects_a_variant_that_disagrees():
    from pipeline.export import parity
    from pipeline.params import load_params
    from tests.conftest import ROOT

    params = load_params(ROOT / "params.yaml").export
    ref = np.eye(3)[[0, 1, 2, 0]]
    assert parity(ref, ref, "float32", params)["accepted"]
    bad = parity(ref, np.eye(3)[[0, 1, 2, 1]], "dynamic_range", params)
    assert not bad["accepted"] and "top-1 agreement 0.7500" in bad["reason"]


def test_the_temperature_is_folded_into_the_last_layer_exactly():
    import keras

    from pipeline.export import fold_temperature
    from pipeline.operating_point import with_temperature

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255.0)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="classes")(x))
    model.get_layer("classes").set_weights([np.random.default_rng(0).normal(0, 4, (3, 3)), np.zeros(3)])
    x = np.random.default_rng(1).uniform(0, 255, (16, 8, 8, 3)).astype("float32")
    before = model.predict_on_batch(x)
    fold_temperature(model, 2.5)
    after = model.predict_on_batch(x)
    np.testing.assert_allclose(after, with_temperature(before, 2.5), atol=1e-5)
    assert (after.argmax(1) == before.argmax(1)).all() and after.max() < before.max()


def test_a_variant_that_changes_one_refer_decision_is_rejected():
    from pipeline.export import parity
    from pipeline.params import load_params
    from tests.conftest import ROOT

    params = load_params(ROOT / "params.yaml").export
    ref = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    near = ref + np.array([[0.0006, -0.0006, 0], [0, 0, 0]])  # within every tolerance, top-1 unchanged ...
    refer = lambda p: p[:, 1:].sum(1) >= 0.3995  # noqa: E731  ... but the first image crosses the threshold
    assert parity(ref, near, "float32", params)["accepted"]
    rejected = parity(ref, near, "float32", params, refer)
    assert not rejected["accepted"] and "refer decision differs from Keras on 1 test image(s)" in rejected["reason"]
