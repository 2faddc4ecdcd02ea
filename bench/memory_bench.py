"""Peak memory of training and evaluation against the number of images: streamed (the project)
against everything in memory (how train/evaluate loaded their splits before the pixel cache).

Each measurement runs in a fresh process and reports its peak RSS (ru_maxrss). Model inputs are
written straight into a pixel cache (random pixels: memory is about counts, not content), then
`train.fit_cached` (MobileNetV2 alpha 0.35, ImageNet weights from KERAS_HOME, frozen part cached,
one head and one fine-tuning epoch) and a prediction pass over the same images run on them.
Run: `KERAS_HOME=... python bench/memory_bench.py [--counts 2000 20000] [--size 128]`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def fill_cache(root: Path, n: int, size: int) -> list[str]:
    """n fake contents with their model inputs in the cache layout pipeline/pixels.py reads."""
    rng, shas = np.random.default_rng(0), []
    for i in range(n):
        sha = f"{i:064x}"
        target = root / str(size) / sha[:2] / f"{sha}.npy"
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        shas.append(sha)
    return shas


def measure(root: Path, n: int, size: int, mode: str) -> dict:
    """One configuration, in this process: train on n images (val n/4), then predict all n."""
    import keras

    from pipeline.console import quiet
    from pipeline.models import ARCHITECTURES, build_model, keras_cache
    from pipeline.params import load_params
    from pipeline.streams import Images, InMemory, predict_rows
    from pipeline.tracking import History
    from pipeline.train import fit_cached

    quiet(tensorflow=True)
    shas = [f"{i:064x}" for i in range(n)]
    y = np.arange(n) % 3
    sets = {"train": Images([Path("-")] * n, shas, y, size, root),
            "val": Images([Path("-")] * (n // 4), shas[: n // 4], y[: n // 4], size, root)}
    if mode == "in memory":
        sets = {k: InMemory(s.read(np.arange(len(s))), s.y) for k, s in sets.items()}
    params = dataclasses.replace(load_params(ROOT / "params.yaml").train, head_epochs=1, finetune_epochs=1)
    keras.utils.set_random_seed(0)
    weights = keras_cache() / ARCHITECTURES["MobileNetV2"].weights_file.format(alpha=0.35, size=224)  # any input size
    parts = build_model("MobileNetV2", 3, str(weights), size, 0.35, params.dropout, params.l2, 0)
    start = time.perf_counter()
    fit_cached(parts, sets, params, None, History())
    probs = predict_rows(parts.model.predict_on_batch, sets["train"])
    assert probs.shape == (n, 3)
    return {"images": n, "mode": mode, "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--modes", nargs="+", default=["streamed", "in memory"])
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # root n mode: a single measurement
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(Path(args.one[0]), int(args.one[1]), args.size, args.one[2])))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fill_cache(root, max(args.counts), args.size)
        for n in args.counts:
            for mode in args.modes:
                out = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--one", tmp, str(n), mode],
                                     capture_output=True, text=True)
                if out.returncode:
                    rows.append({"images": n, "mode": mode, "error": out.stderr.strip().splitlines()[-1]})
                else:
                    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    print(f"\nMobileNetV2 0.35 at {args.size} px, fit_cached (1 head + 1 fine-tuning epoch) then predict, "
          "one process each\n\n| images | mode | peak RSS MB | seconds |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['images']} | {r['mode']} | {r.get('peak_rss_mb', r.get('error'))} | {r.get('seconds', '')} |")


if __name__ == "__main__":
    main()
