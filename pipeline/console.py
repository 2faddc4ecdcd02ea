"""What a stage prints: its own summary lines and progress bars, not library noise.

The Prefect task log keeps the last 3,000 characters of a stage's output, and TensorFlow's and
MLflow's start-up lines (absl's "All log messages before absl::InitializeLog()", the oneDNN
notice, retracing warnings, MLflow's pickling and type-hint warnings, TFLite's "Created ... XNNPACK
delegate" line) used to fill it.
`quiet()` switches them off where they are made; `progress()` draws a bar on stderr only when
stderr is a terminal, so logs and CI output never carry it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

from pipeline import project


def quiet(tensorflow: bool = False) -> None:
    """Call first in a stage's main(). With `tensorflow`, import it now with its start-up lines
    silenced (only stages that use it: importing TensorFlow costs seconds)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")       # TensorFlow's C++ INFO and WARNING lines
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")   # MLflow's own logger (pickling notes, ...)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    project.use_keras_home()  # Keras fixes its cache folder when TensorFlow is first imported, just below
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\.")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"mlflow\.")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # "N out of the last M calls ... retracing"
    if tensorflow and "tensorflow" not in sys.modules:
        with stderr_silenced():  # absl writes these to fd 2 before TF_CPP_MIN_LOG_LEVEL applies
            import tensorflow as tf
        tf.get_logger().setLevel(logging.ERROR)
        import absl.logging
        absl.logging.set_verbosity(absl.logging.ERROR)


@contextlib.contextmanager
def stderr_silenced():
    """File descriptor 2 to /dev/null for the block (C++ writes bypass sys.stderr). Only around a
    call whose failures raise Python exceptions: those are printed after the block."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def progress(items, desc: str, total: int | None = None):
    """`items`, with a progress bar on stderr when it is a terminal (silent in logs and CI)."""
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False, disable=not sys.stderr.isatty())
