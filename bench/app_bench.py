"""The clinic's page under load that a clinic makes: `python -m clinic serve` on a loopback port, measured
over HTTP like a browser.

- time to first byte of each page (median of --repeats) with --items suspected label errors in the
  queue (plus one label conflict), the first view of the queue apart (it loads @champion to score conflicts);
- upload-to-answer (request sent until the whole answer page is read) p50/p95 of "try a photo" for a 12 MP
  JPEG and a 12 MP HEIC (4000x3000, upscaled from a real ISIC image) with the demo's model
  (MobileNetV2 alpha 0.35, 224 px; ImageNet weights from ../shared/weights when present), Grad-CAM included;
- the bytes each page transfers: the HTML, the stylesheet and every image it shows.

Run: `nice -n 10 python bench/app_bench.py [--items 1000 --uploads 20 --repeats 20]`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.clinic_project import USERS, make_project, phone_photos, registry  # noqa: E402
from tests.conftest import SHARED, free_port, wait_for_http  # noqa: E402

PAGES = ["/login", "/queue", "/queue?status=all&page_number=20", "/approvals", "/try"]
PHOTO = SHARED / "datasets" / "isic-skin-9class-180px" / "Test" / "melanoma" / "ISIC_0000043.jpg"
WEIGHTS = SHARED / "weights" / "keras" / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


def demo_model():
    from pipeline.models import build_model

    return build_model("MobileNetV2", 3, str(WEIGHTS) if WEIGHTS.is_file() else "none", alpha=0.35).model


def signed_in(base: str):
    import httpx

    client = httpx.Client(base_url=base, timeout=120, follow_redirects=False)
    token = re.search(r'name="token" value="([^"]+)"', client.get("/login").text).group(1)
    name = "dr.ana"
    reply = client.post("/login", data={"name": name, "password": USERS[name][1], "token": token})
    assert reply.status_code == 303, reply.text
    return client


def ttfb(client, path: str) -> float:
    started = time.perf_counter()
    with client.stream("GET", path) as reply:
        chunks = reply.iter_raw()
        next(chunks)
        first = time.perf_counter() - started
        for _ in chunks:  # the rest of the page
            pass
    assert reply.status_code == 200, (path, reply.status_code)
    return first


def page_bytes(client, path: str) -> dict:
    html = client.get(path).content
    assets = set(re.findall(rb'<img[^>]* src="(/[^"]+)"', html) + re.findall(rb'<link[^>]* href="(/[^"]+)"', html))
    sizes = {a.decode(): len(client.get(a.decode()).content) for a in assets}
    return {"html": len(html), "assets": len(sizes), "total": len(html) + sum(sizes.values())}


def upload_times(client, photo: Path, n: int) -> list[float]:
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/try").text).group(1)
    data, times = photo.read_bytes(), []
    for _ in range(n + 1):  # the first loads @champion: not counted
        started = time.perf_counter()
        reply = client.post("/try", data={"csrf": token}, files={"photo": (photo.name, data, "image/jpeg")})
        times.append(time.perf_counter() - started)
        assert reply.status_code == 200 and "section class=\"card result\"" in reply.text, reply.text[-500:]
    return times[1:]


def summary(values: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(values, 50)) * 1000, 1),
            "p95_ms": round(float(np.percentile(values, 95)) * 1000, 1), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="app_bench-"))
    port = free_port()
    root = make_project(tmp / "project", issues=args.items, port=port, max_upload_mb=30)
    os.chdir(root)  # MLflow's default store is the project's mlflow.db
    os.environ["STACK_DIR"] = str(tmp / "no-stack")
    registry(root, demo_model(), 224)
    photos = phone_photos(PHOTO, tmp / "photos")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "clinic", "--root", str(root), "serve"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(base + "/health", 120, "the clinic's page")
        client = signed_in(base)
        first_queue = ttfb(client, "/queue")
        pages = {p: round(float(np.median([ttfb(client, p) for _ in range(args.repeats)])) * 1000, 1) for p in PAGES}
        result = {"queue_items": args.items + 1, "ttfb_median_ms": pages,
                  "queue_first_view_ttfb_ms": round(first_queue * 1000, 1),
                  "bytes_per_page": {p: page_bytes(client, p) for p in PAGES},
                  "upload_to_answer": {k: {**summary(upload_times(client, photos[k], args.uploads)),
                                           "file_bytes": photos[k].stat().st_size} for k in ("jpeg", "heic")},
                  "model": "MobileNetV2 alpha 0.35, 224 px" + (" (ImageNet weights)" if WEIGHTS.is_file() else ""),
                  "cores": len(os.sched_getaffinity(0))}
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
