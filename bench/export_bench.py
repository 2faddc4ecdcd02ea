"""TFLite size and single-image latency (one thread) per variant, against Keras on one image.

The model is the demo's architecture (MobileNetV2 alpha 0.35, ImageNet weights from the Keras
cache when present, 3-class head). Run: `python bench/export_bench.py [--repeats 200]`.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.export import convert  # noqa: E402
from pipeline.inference import TFLiteModel  # noqa: E402
from pipeline.models import build_model, resolve_weights  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)  # Keras on one thread too, like the TFLite runs
    tf.config.threading.set_inter_op_parallelism_threads(1)
    try:
        weights = resolve_weights("MobileNetV2", "imagenet", 224, 0.35)
        weights = weights if weights != "imagenet" else "none"
    except Exception:
        weights = "none"
    model = build_model("MobileNetV2", 3, "imagenet" if weights != "none" else "none", alpha=0.35).model
    x = np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3)).astype("float32")
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "m.keras")
        keras_bytes = os.path.getsize(Path(tmp) / "m.keras")
    rows = [("Keras model.predict", keras_bytes, median_ms(lambda: model.predict(x, verbose=0), args.repeats)),
            ("Keras model(x) (direct call)", keras_bytes, median_ms(lambda: model(x, training=False), args.repeats))]
    for variant, blob in convert(model).items():
        runner = TFLiteModel(blob, threads=1)
        rows.append((f"TFLite {variant}", len(blob), median_ms(lambda: runner.predict(x), args.repeats)))
    print(f"MobileNetV2 alpha 0.35, 224x224, weights: {weights}; median of {args.repeats} single-image runs, 1 thread\n")
    print("| model | size MB | ms / image |\n|---|---|---|")
    for name, size, ms in rows:
        print(f"| {name} | {size / 1e6:.2f} | {ms:.2f} |")


if __name__ == "__main__":
    main()
