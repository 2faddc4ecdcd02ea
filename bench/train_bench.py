"""Training speed: the project's cached two-phase training against plain `model.fit`.

On ../shared/datasets/isic-skin-9class-180px grouped into benign / precancer / cancer, runs
the real validate -> dedup -> split -> augment stages, then trains the same architecture with
the same params, seed, epochs and augmented images twice: `fit_cached` and `fit_plain`.
Prints wall time and test balanced accuracy side by side.
Run: `KERAS_HOME=... python bench/train_bench.py [--arch MobileNetV2]` (see `make bench`).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline import augment, dedup, split, validate  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.tracking import History  # noqa: E402
from pipeline.streams import images_of, predict_rows  # noqa: E402
from pipeline.tables import read_split  # noqa: E402
from pipeline.train import class_weights, fit_cached, fit_plain, read_sets  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "isic-skin-9class-180px"
GROUPING = {"actinic keratosis": "precancer", "basal cell carcinoma": "cancer", "melanoma": "cancer",
            "squamous cell carcinoma": "cancer"}  # everything else is benign


def prepare(work: Path) -> Path:
    raw = work / "raw"
    for image in DATA.glob("*/*/*.jpg"):
        target = raw / GROUPING.get(image.parent.name, "benign") / f"{image.parent.parent.name} {image.parent.name} {image.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, target)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"]["classes"] = ["benign", "precancer", "cancer"]
    params["augment"]["target_per_class"] = None
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    p, out = load_params(work / "params.yaml"), work / "out"
    validate.run(p, validate.Inputs(raw), validate.Outputs(out / "manifest.csv", out / "docs", out / "v.json"))
    dedup.run(p, dedup.Inputs(raw, out / "manifest.csv"), dedup.Outputs(
        groups=out / "g.csv", cache=out / "c.json", quarantine=out / "q", report=out / "d.json", sheet=out / "s.png"))
    split.run(p, split.Inputs(out / "g.csv"), split.Outputs(out / "split.csv", out / "ledger.csv", out / "split.json"))
    augment.run(p, augment.Inputs(raw, out / "split.csv"), augment.Outputs(out / "aug", out / "aug.csv"))
    return p


def one(mode: str, fit, arch: str, spec, data, test, params, base, size) -> dict:
    import keras
    from sklearn.metrics import balanced_accuracy_score

    keras.utils.set_random_seed(base.seed)
    parts = build_model(arch, 3, spec.weights, size, spec.alpha, params.dropout, params.l2, base.seed)
    history, start = History(), time.perf_counter()
    fit(parts, data, params, class_weights(data["train"].y, 3), history)
    seconds = time.perf_counter() - start
    pred = predict_rows(parts.model.predict_on_batch, test).argmax(1)
    return {"mode": mode, "seconds": round(seconds, 1), "epochs": len(history.rows),
            "test_balanced_accuracy": round(float(balanced_accuracy_score(test.y, pred)), 4)}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="MobileNetV2")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        p = prepare(work)
        base, params = p.base, p.train
        spec = params.architectures[args.arch]
        size = spec.image_size or 224
        out = work / "out"
        data = read_sets(work / "raw", out / "aug", out / "split.csv", out / "aug.csv", base.classes, size)
        tsplit = read_split(out / "split.csv", "test", base.classes)
        test = images_of(tsplit, work / "raw", base.classes, size)
        print(f"{len(data['train'])} train (incl. augmented), {len(data['val'])} val, "
              f"{len(test)} test images (streamed from the pixel cache); {args.arch} {spec}")
        rows = [one("cached (project)", fit_cached, args.arch, spec, data, test, params, base, size),
                one("plain model.fit", fit_plain, args.arch, spec, data, test, params, base, size)]
    print("\n| training | wall s | epochs | test balanced accuracy |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['seconds']} | {r['epochs']} | {r['test_balanced_accuracy']} |")
    print(f"\nspeed-up: {rows[1]['seconds'] / rows[0]['seconds']:.1f}x")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
