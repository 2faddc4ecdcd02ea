"""Stages print their summary, not TensorFlow's start-up lines; progress bars only on a terminal."""
import os
import subprocess
import sys

from pipeline.console import progress
from tests.conftest import ROOT

NOISE = ("absl::InitializeLog", "oneDNN", "retracing")
SCRIPT = """
import sys
from pipeline.console import quiet
if sys.argv[1] == "quiet":
    quiet(tensorflow=True)
import keras, numpy as np
inputs = keras.Input((8,))
outputs = keras.layers.Dense(3, activation="softmax")(inputs)
for n in range(1, 8):  # a new model and shape each call: TensorFlow warns about retracing
    keras.Model(inputs, outputs).predict(np.zeros((n, 8)), verbose=0)
print("stage: the summary line")
"""


def run_script(mode: str, script: str = SCRIPT, cwd=ROOT) -> subprocess.CompletedProcess:
    """`script` in a fresh process without the quieting variables a developer's shell may set."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "MLFLOW_LOGGING_LEVEL")}
    return subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={**env, "PYTHONPATH": str(ROOT)})


def test_tensorflow_start_up_noise_is_silenced_at_its_source():
    loud = run_script("loud")
    assert loud.returncode == 0, loud.stderr
    if not any(n in loud.stderr for n in NOISE):  # pragma: no cover - depends on the TensorFlow version
        import pytest
        pytest.skip("this TensorFlow prints no start-up noise to silence")
    done = run_script("quiet")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stage: the summary line"
    assert not [n for n in NOISE if n in done.stderr], done.stderr


def test_progress_is_silent_without_a_terminal(capsys):
    assert list(progress(range(5), "work")) == [0, 1, 2, 3, 4]
    assert capsys.readouterr().err == ""


def test_progress_draws_a_bar_on_a_terminal(monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(progress(range(3), "work")) == [0, 1, 2]
    assert "work" in terminal.getvalue()


def test_the_served_model_class_imports_without_warnings():
    """Deployment imports pipeline.inference on its own (no quiet()): MLflow warned there about a
    `predict` without type hints."""
    done = subprocess.run([sys.executable, "-W", "default", "-c", "import pipeline.inference"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr


STAGE_CALLS = """
import sys
from pipeline.console import quiet
quiet(tensorflow=True)
import keras, mlflow, numpy as np, tensorflow as tf
from pipeline import export, inference, tracking
tf.config.experimental.enable_op_determinism()  # as train does
inputs = keras.Input((8, 8, 3))
model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs)))
mlflow.set_tracking_uri(sys.argv[1])
with mlflow.start_run():
    tracking.log_keras_model(model, np.zeros((2, 8, 8, 3), np.float32))
tflite = inference.TFLiteModel(export.convert(model, ("float32",))["float32"])
assert tflite.predict(np.zeros((1, 8, 8, 3), np.float32)).shape == (1, 3)
print("stage: the summary line")
"""


def test_logging_a_model_and_running_tflite_print_nothing(tmp_path):
    """train's model logging under op determinism (TensorFlow's "E0000 ... use_unbounded_threadpool",
    a Keras progress bar from MLflow's re-predict) and LiteRT's XNNPACK line, as export and register
    run them."""
    done = run_script(f"sqlite:///{tmp_path / 'mlflow.db'}", STAGE_CALLS, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "stage: the summary line", done.stdout[-3000:]
    assert not [n for n in ("use_unbounded_threadpool", "XNNPACK", "━") if n in done.stderr], done.stderr[-3000:]
