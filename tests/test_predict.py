"""Grad-CAM: the compiled map (built once per model) is the textbook eager computation, and `explain`
gives the model's own probabilities with the map of its most probable class from one pass."""
import numpy as np

from tests.colour_project import SIZE, colour_model


def eager_gradcam(model, x, class_index):
    import keras
    import tensorflow as tf

    probe = keras.Model(model.inputs, [model.get_layer("pool").input, model.output])
    with tf.GradientTape() as tape:
        fmap, probs = probe([x[None].astype("float32")], training=False)
        score = probs[:, class_index]
    grads = tape.gradient(score, fmap)[0]
    cam = tf.nn.relu(tf.reduce_sum(fmap[0] * tf.reduce_mean(grads, axis=(0, 1)), axis=-1)).numpy()
    return cam / cam.max() if cam.max() > 0 else cam


def test_compiled_gradcam_matches_the_eager_one_and_explain_picks_the_top_class():
    from pipeline.predict import explain, gradcam

    model = colour_model("mediocre")
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal((40, 40, 200), 60, (SIZE, SIZE, 3)), 0, 255).astype("float32")  # bluish: "cancer"
    for k in range(3):
        np.testing.assert_allclose(gradcam(model, x, k), eager_gradcam(model, x, k), atol=1e-4)
    probs, cam = explain(model, x)
    np.testing.assert_allclose(probs, model.predict(x[None], verbose=0)[0], atol=1e-5)
    np.testing.assert_allclose(cam, eager_gradcam(model, x, int(np.argmax(probs))), atol=1e-4)
