"""Serving latency of the image-in pyfunc behind `mlflow models serve` (REST, one worker).

The model is the demo's architecture (MobileNetV2 alpha 0.35, 224 px, 3-class head; ImageNet
weights from ../shared/weights when present: speed does not depend on them). It is saved as
register saves it (`ImageClassifier`, `serving_artifacts`), once with the float32 TFLite model
that export would accept and once with Keras only (the old path), then served and timed:
p50/p95 of one 224-px JPEG per request, and per image at batch 32.

Run: `python bench/serve_bench.py [--singles 100 --batches 10]`.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.export import convert  # noqa: E402
from pipeline.inference import ImageClassifier, serving_artifacts  # noqa: E402
from tests.conftest import free_port, noise_image, wait_for_http  # noqa: E402

SIZE = 224


def build_model(folder: Path):
    """MobileNetV2-0.35 with a 3-class head, saved with its TFLite file and metadata."""
    import keras

    from pipeline.models import build_model as build

    weights = ROOT.parent / "shared" / "weights" / "keras" / "models" / \
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    model = build("MobileNetV2", 3, str(weights) if weights.is_file() else "none", alpha=0.35).model
    model.save(folder / "model.keras")
    (folder / "model_float32.tflite").write_bytes(convert(model, ("float32",))["float32"])
    metadata = {"classes": ["normal", "precancer", "cancer"], "image_size": SIZE,
                "variants": {"float32": {"file": "model_float32.tflite"}}}
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return keras


def save_pyfunc(folder: Path, out: Path, with_tflite: bool) -> None:
    import mlflow

    artifacts = serving_artifacts(folder / "model.keras", folder)
    if not with_tflite:
        artifacts.pop("tflite_model")
    mlflow.pyfunc.save_model(str(out), python_model=ImageClassifier(), artifacts=artifacts,
                             code_paths=[str(ROOT / "pipeline")])


def percentiles(times: list[float]) -> str:
    return f"{np.percentile(times, 50):.1f} | {np.percentile(times, 95):.1f}"


def time_requests(url: str, images: list[str], singles: int, batches: int) -> tuple[list, list]:
    import httpx

    def post(rows):
        start = time.perf_counter()
        reply = client.post(url, json={"dataframe_split": {"columns": ["image"], "data": rows}})
        assert reply.status_code == 200, reply.text
        return (time.perf_counter() - start) * 1000

    with httpx.Client(timeout=120) as client:
        for _ in range(3):
            post([[images[0]]])  # warm-up
        one = [post([[images[i % len(images)]]]) for i in range(singles)]
        batch = [post([[b] for b in images[:32]]) / 32 for _ in range(batches)]
    return one, batch


def serve(model_dir: Path, images: list[str], singles: int, batches: int):
    port = free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", str(model_dir),
                               "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", 180, "mlflow models serve")
        return time_requests(f"http://127.0.0.1:{port}/invocations", images, singles, batches)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own session: uvicorn workers go too
        server.wait(timeout=30)


def main():
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--singles", type=int, default=100)
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()
    images = []
    for seed in range(32):
        buffer = io.BytesIO()
        noise_image(seed, (SIZE, SIZE)).save(buffer, format="JPEG", quality=90)
        images.append(base64.b64encode(buffer.getvalue()).decode())
    with tempfile.TemporaryDirectory() as tmp:
        build_model(Path(tmp))
        print(f"MobileNetV2 alpha 0.35, {SIZE}-px JPEG, `mlflow models serve`, {os.cpu_count()} cores; "
              f"{args.singles} single-image requests, {args.batches} batches of 32\n")
        print("| served model | 1 image p50 ms | p95 ms | batch 32, per image p50 ms | p95 ms |\n|---|---|---|---|---|")
        for name, with_tflite in (("float32 TFLite in the pyfunc", True), ("Keras model.predict", False)):
            save_pyfunc(Path(tmp), Path(tmp) / name.split()[0], with_tflite)
            one, batch = serve(Path(tmp) / name.split()[0], images, args.singles, args.batches)
            print(f"| {name} | {percentiles(one)} | {percentiles(batch)} |")


if __name__ == "__main__":
    main()
