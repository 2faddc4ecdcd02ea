"""1 vs 2 Prefect workers: wall-clock of one retrain run whose architectures train on the work pool.

    python bench/workers_bench.py [--archs SmallCNN MobileNetV2] [--epochs 3] [--size 64]

Each configuration gets a fresh stack and workspace (nothing comes from an earlier run-cache), the
same demo images and params (`flow.train_on: workers`). Prints, per configuration, the wall-clock
of the whole flow and of its training phase (first train flow run's start to the last one's end,
as Prefect recorded them), and the ratio 2 workers / 1 worker. On one host the workers share its
cores, so the ratio shows the overlap the pool gives, not what separate hosts would give.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.test_stack import TINY, Stack, make_workspace  # noqa: E402  (one way to start a stack)


def run_once(workers: int, archs: dict, epochs: int, base: Path) -> dict:
    params = {**TINY, "train": {**TINY["train"], "architectures": archs, "head_epochs": epochs},
              "flow": {"quiet_seconds": 0, "retries": 0, "retry_delay_seconds": 1, "train_on": "workers",
                       "train_retries": 0}}
    folder = base / f"w{workers}"
    folder.mkdir()
    folder.chmod(0o755)
    stack = Stack(folder / "stack", make_workspace(folder / "ws", folder, params), STACK_WORKERS=str(workers))
    stack.run("up")
    try:
        env = {**os.environ, "STACK_DIR": str(stack.dir), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        start = time.time()
        done = subprocess.run([sys.executable, "-m", "flows.retrain", "--workspace", str(stack.project)],
                              cwd=stack.project, env=env, capture_output=True, text=True)
        total = time.time() - start
        if done.returncode:
            raise SystemExit(f"retrain failed with {workers} worker(s):\n{(done.stdout + done.stderr)[-3000:]}")
        return {"workers": workers, "flow_seconds": round(total, 1), "training_seconds": training_phase(stack)}
    finally:
        stack.run("down")


def training_phase(stack: Stack) -> float:
    import httpx

    api = stack.values()["PREFECT_API_URL"]
    flows = {f["id"]: f["name"] for f in httpx.post(f"{api}/flows/filter", json={}).json()}
    runs = [r for r in httpx.post(f"{api}/flow_runs/filter", json={}).json() if flows[r["flow_id"]] == "train"]
    starts = [datetime.fromisoformat(r["start_time"]) for r in runs]
    ends = [datetime.fromisoformat(r["end_time"]) for r in runs]
    return round((max(ends) - min(starts)).total_seconds(), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["SmallCNN", "MobileNetV2"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    archs = {a: {"weights": "none", "image_size": args.size, **({"alpha": 0.35} if a == "MobileNetV2" else {})}
             for a in args.archs}
    base = Path(tempfile.mkdtemp(prefix="workers-bench-"))
    base.chmod(0o755)  # PostgreSQL runs as the postgres user under it
    weights = ROOT.parent / "shared" / "weights" / "keras"  # label_review, run by the parent, needs them
    if weights.is_dir() and "KERAS_HOME" not in os.environ:
        shutil.copytree(weights, base / "keras")
        os.environ["KERAS_HOME"] = str(base / "keras")
    try:
        rows = [run_once(n, archs, args.epochs, base) for n in (1, 2)]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for row in rows:
        print(json.dumps(row))
    one, two = rows
    print(f"{len(archs)} architectures, 2 workers / 1 worker: training phase "
          f"{two['training_seconds'] / one['training_seconds']:.2f}, whole flow {two['flow_seconds'] / one['flow_seconds']:.2f}")


if __name__ == "__main__":
    main()
