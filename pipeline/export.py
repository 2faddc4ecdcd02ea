"""export: the best model to TFLite (float32, dynamic-range and float16), each checked against Keras.

A variant is accepted only when, over the whole test split, its top-1 class agrees with the
Keras model at least `export.min_top1_agreement[variant]` of the time and no probability
differs by more than `export.max_probability_diff[variant]`; otherwise it is not written and
the reason is. Beside the files: labels.txt and metadata.json for the mobile app.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.console import quiet
from pipeline.images import RESIZE_CONTRACT
from pipeline.inference import TFLiteModel
from pipeline.params import Export, Params, load_params
from pipeline.stage import one_line_errors, parser, paths
from pipeline.streams import images_of, predict_rows
from pipeline.tables import read_split

VARIANTS = ("float32", "dynamic_range", "float16")


@dataclass(frozen=True)
class Inputs:
    raw: Path
    split: Path
    metrics: Path       # evaluate's reports/metrics.json: which model was chosen


@dataclass(frozen=True)
class Outputs:
    out: Path           # the TFLite files, labels.txt and metadata.json for the app
    report: Path


def convert(model, variants=VARIANTS) -> dict[str, bytes]:
    """TFLite flatbuffers of a Keras model, through a SavedModel export."""
    import tensorflow as tf

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
        for variant in variants:
            converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
            if variant != "float32":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            if variant == "float16":
                converter.target_spec.supported_types = [tf.float16]
            out[variant] = converter.convert()
    return out


def parity(reference: np.ndarray, candidate: np.ndarray, variant: str, params: Export) -> dict:
    agreement = float((reference.argmax(1) == candidate.argmax(1)).mean())
    diff = float(np.abs(reference - candidate).max())
    need_agree, max_diff = params.min_top1_agreement[variant], params.max_probability_diff[variant]
    problems = []
    if agreement < need_agree:
        problems.append(f"top-1 agreement {agreement:.4f} < {need_agree}")
    if diff > max_diff:
        problems.append(f"largest probability difference {diff:.5f} > {max_diff}")
    return {"top1_agreement": agreement, "max_probability_diff": diff, "accepted": not problems,
            "reason": "; ".join(problems) or "passed the parity check on the test split"}


def latency_ms(model: TFLiteModel, images, repeats: int) -> float:
    """Median wall time of one single-image invoke (one thread)."""
    x = images.read(np.arange(min(len(images), repeats))).astype(np.float32)
    model.predict(x[:1])  # warm-up
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        model.predict(x[i % len(x):i % len(x) + 1])
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def check_variants(flatbuffers: dict[str, bytes], reference, images, params: Export, out_dir: Path) -> dict:
    """Each variant against the Keras probabilities on the test images (read a chunk at a time)."""
    report = {}
    for variant, blob in flatbuffers.items():
        model = TFLiteModel(blob, threads=1)
        result = parity(reference, predict_rows(model.predict, images), variant, params)
        result.update(bytes=len(blob), latency_ms=latency_ms(model, images, params.latency_repeats))
        if result["accepted"]:
            result["file"] = f"model_{variant}.tflite"
            (out_dir / result["file"]).write_bytes(blob)
        report[variant] = result
    return report


def input_contract(size: int) -> dict:
    """What an app must feed the TFLite model, exactly (tests/test_images.py reproduces it with TF)."""
    return {"shape": [1, size, size, 3], "dtype": "float32", "color_order": "RGB", "value_range": [0, 255],
            "resize": dict(RESIZE_CONTRACT)}


def run(params: Params, inputs: Inputs, outputs: Outputs) -> dict:
    import keras
    import mlflow

    from pipeline import tracking

    base, out_dir = params.base, outputs.out
    best = json.loads(inputs.metrics.read_text())["best"]
    info = json.loads((Path(best["model"]).parent / "run.json").read_text())
    model = keras.saving.load_model(best["model"])
    test = read_split(inputs.split, "test", base.classes)
    images = images_of(test, inputs.raw, base.classes, info["image_size"])
    reference = predict_rows(lambda x: model.predict_on_batch(x), images)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    variants = check_variants(convert(model), reference, images, params.export, out_dir)
    (out_dir / "labels.txt").write_text("\n".join(base.classes) + "\n")
    metadata = {"architecture": best["architecture"], "classes": list(base.classes), "image_size": info["image_size"],
                "input": input_contract(info["image_size"]),
                "output": "softmax probabilities in the order of labels.txt",
                "mlflow_run_id": info["run_id"], "data_version": info["data_version"], "git_commit": info["git_commit"],
                "variants": {k: {f: v[f] for f in ("file", "bytes", "latency_ms") if f in v} for k, v in variants.items()
                             if v["accepted"]}}
    (out_dir / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    report = {"architecture": best["architecture"], "test_images": int(len(images)), "variants": variants}
    outputs.report.parent.mkdir(parents=True, exist_ok=True)
    outputs.report.write_text(json.dumps(report, indent=2) + "\n")
    tracking.setup(params.train.experiment)
    with mlflow.start_run(run_id=info["run_id"]):
        mlflow.log_artifacts(str(out_dir), artifact_path="tflite")
        mlflow.log_metrics({f"tflite_{k}_{m}": float(v[m]) for k, v in variants.items()
                            for m in ("bytes", "latency_ms", "top1_agreement", "max_probability_diff")})
    return report


def main(argv: list[str] | None = None) -> None:
    quiet(tensorflow=True)  # before TensorFlow's first import: its start-up lines stay out of the log
    args = parser(__doc__, Inputs, Outputs).parse_args(argv)
    with one_line_errors("export"):
        report = run(load_params(args.params), paths(Inputs, args), paths(Outputs, args))
    for variant, r in report["variants"].items():
        verdict = "exported" if r["accepted"] else "NOT exported"
        print(f"export: {variant}: {verdict} ({r['reason']}; {r['bytes'] / 1e6:.2f} MB, {r['latency_ms']:.1f} ms/image)")


if __name__ == "__main__":
    main()
