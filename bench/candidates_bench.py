"""Candidates side by side: the fine-tuned network, the linear probe, their ensemble and a seed-style notebook.

On two data sets run through the real validate -> dedup -> split -> augment stages (their own grouped
splits): ISIC grouped into benign / precancer / cancer (../shared/datasets/isic-skin-9class-180px, as
bench/train_bench.py) and PneumoniaMNIST (../shared/datasets/pneumoniamnist-balanced, normal / pneumonia,
a seeded class-balanced sample of
600 of its 3,166 images by default, 28 px upsampled to 96 px PNGs, the model input 224 px as for any photo). Candidates, MobileNetV2-0.35
with ImageNet weights and params.yaml's train settings:
- fine-tuned: the project's two phases (train.fit_cached);
- probe: logistic regression on frozen features, C by grouped CV on train (pipeline/probe.py);
- ensemble: the probability average of the two above (pipeline/ensemble.py), strongest by validation first;
- seed-style: frozen base and a new head trained with online augmentation (flip, rotation, zoom, translation,
  brightness layers in front of the model while it trains, not in the exported model), early stopping on
  val_loss, on the original train images (no offline augmentation), as the seed notebooks did.
Per candidate: test balanced accuracy with its interval by duplicate group, test sensitivity of each
positive class, the paired difference against the fine-tuned network with its two-sided interval
(pipeline/paired.py), training wall time (the ensemble: its members' sum) and the float32 TFLite file's
size and single-image latency (one thread).
Run: `SHARED_DIR=../shared KERAS_HOME=... nice -n 10 python bench/candidates_bench.py [--data isic pneumonia]`.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline import augment, dedup, split, validate  # noqa: E402
from pipeline.params import load_params  # noqa: E402

SHARED = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared"))  # as tests/conftest.py
PNEUMONIA = SHARED / "datasets" / "pneumoniamnist-balanced" / "pneumoniamnist_balanced.npz"


def train_bench():
    spec = importlib.util.spec_from_file_location("train_bench", ROOT / "bench" / "train_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.DATA = SHARED / "datasets" / "isic-skin-9class-180px"
    return module


def prepare_pneumonia(work: Path, images: int, seed: int = 0):
    """`images` of the 3,166 (a seeded sample, half per class; all: 0), re-split by the project's own stages."""
    import yaml
    from PIL import Image

    data, raw = np.load(PNEUMONIA), work / "raw"
    x = np.concatenate([data[f"{p}_images"] for p in ("train", "val", "test")])
    y = np.concatenate([data[f"{p}_labels"][:, 0] for p in ("train", "val", "test")])
    rng = np.random.default_rng(seed)
    keep = np.arange(len(y)) if not images else np.concatenate(
        [rng.choice(np.flatnonzero(y == k), images // 2, replace=False) for k in (0, 1)])
    for i in sorted(keep):
        target = raw / ("pneumonia" if y[i] else "normal") / f"{i:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).convert("RGB").resize((96, 96), Image.Resampling.BICUBIC).save(target)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"].update(classes=["normal", "pneumonia"], positive_classes=["pneumonia"])
    params["register"]["min_sensitivity"] = {"pneumonia": 0.8}
    params["augment"]["target_per_class"] = None
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    p, out = load_params(work / "params.yaml"), work / "out"
    validate.run(p, validate.Inputs(raw), validate.Outputs(out / "manifest.csv", out / "docs", out / "v.json"))
    dedup.run(p, dedup.Inputs(raw, out / "manifest.csv"), dedup.Outputs(
        groups=out / "g.csv", cache=out / "c.json", quarantine=out / "q", report=out / "d.json", sheet=out / "s.png"))
    split.run(p, split.Inputs(out / "g.csv"), split.Outputs(out / "split.csv", out / "ledger.csv", out / "split.json"))
    augment.run(p, augment.Inputs(raw, out / "split.csv"), augment.Outputs(out / "aug", out / "aug.csv"))
    return p


def seed_style(parts, data, settings, weights, originals: int):
    """Frozen base, online augmentation, early stopping: plain model.fit on the original train images."""
    import keras

    from pipeline.streams import Images, batches

    parts.base.trainable = False
    augmenting = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(20 / 360),
                                   keras.layers.RandomZoom(0.15), keras.layers.RandomTranslation(0.1, 0.1),
                                   keras.layers.RandomBrightness(0.2, value_range=(0, 255))])
    trainer = keras.Sequential([augmenting, parts.model])
    trainer.compile(optimizer=keras.optimizers.Adam(settings.head_learning_rate),
                    loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    idx = np.arange(originals)  # read_sets puts the split's own images first, augment's copies after them
    t = data["train"]
    train = Images(t.sources[:originals], t.shas[:originals], t.y[idx], t.size, t.cache)
    stop = keras.callbacks.EarlyStopping("val_loss", patience=settings.early_stopping_patience,
                                         restore_best_weights=True)
    trainer.fit(batches(train, settings.batch_size, 0), validation_data=batches(data["val"], 128),
                epochs=settings.head_epochs, class_weight=weights, verbose=0, callbacks=[stop])


def tflite_numbers(model, test) -> dict:
    from pipeline.export import convert, latency_ms
    from pipeline.inference import TFLiteModel

    blob = convert(model, ("float32",))["float32"]
    return {"tflite_mb": round(len(blob) / 1e6, 2), "latency_ms": round(latency_ms(TFLiteModel(blob), test, 30), 1)}


def candidates(p, work: Path) -> dict:
    """Train each candidate; its model, validation and test probabilities, and training seconds."""
    import keras

    from pipeline.ensemble import build_ensemble, rank
    from pipeline.metrics import scores
    from pipeline.models import build_model
    from pipeline.probe import fit_probe
    from pipeline.streams import images_of, predict_rows
    from pipeline.tables import read_split
    from pipeline.tracking import History
    from pipeline.train import class_weights, fit_cached, read_sets

    base, settings, out = p.base, p.train, work / "out"
    classes, n = list(base.classes), len(base.classes)
    data = read_sets(work / "raw", out / "aug", out / "split.csv", out / "aug.csv", base.classes, 224)
    test_rows = read_split(out / "split.csv", "test", base.classes)
    test = images_of(test_rows, work / "raw", base.classes, 224)
    weights = class_weights(data["train"].y, n)
    originals = len(read_split(out / "split.csv", "train", base.classes))
    print(f"{len(data['train'])} train ({originals} originals), {len(data['val'])} val, {len(test)} test", flush=True)
    found = {}
    for name, head, fit in (("fine-tuned", "network", lambda parts: fit_cached(parts, data, settings, weights, History())),
                            ("probe", "linear", lambda parts: fit_probe(parts, data, settings, weights, History(), base.seed)),
                            ("seed-style", "network", lambda parts: seed_style(parts, data, settings, weights, originals))):
        keras.utils.set_random_seed(base.seed)
        parts = build_model("MobileNetV2", n, "imagenet", 224, 0.35, settings.dropout, settings.l2, base.seed,
                            head=head, title=name)
        start = time.perf_counter()
        fit(parts)
        seconds = time.perf_counter() - start
        predict = lambda x, m=parts.model: m.predict_on_batch(x)  # noqa: E731
        found[name] = {"model": parts.model, "seconds": seconds, "val": predict_rows(predict, data["val"]),
                       "test": predict_rows(predict, test)}
        print(f"{name}: {seconds:.1f} s", flush=True)
    val = {k: scores(data["val"].y, found[k]["val"], classes, list(base.positive_classes), 10)
           for k in ("fine-tuned", "probe")}
    members = rank(val, "balanced_accuracy")
    model = build_ensemble([found[m]["model"] for m in members], [224, 224])
    found["ensemble"] = {"model": model, "seconds": sum(found[m]["seconds"] for m in members), "members": members,
                         "test": predict_rows(lambda x: model.predict_on_batch(x), test)}
    return {"found": found, "test": test, "groups": test_rows.group_id.to_numpy(), "classes": classes,
            "positive": list(base.positive_classes), "sizes": (len(data["train"]), originals, len(data["val"]), len(test))}


def table(name: str, run: dict, seed: int) -> list[dict]:
    from pipeline.intervals import interval
    from pipeline.metrics import scores
    from pipeline.paired import paired_comparison

    y, groups, classes, found = run["test"].y, run["groups"], run["classes"], run["found"]
    rows = []
    for cand in ("fine-tuned", "probe", "ensemble", "seed-style"):
        probs = found[cand]["test"]
        ci = interval("balanced_accuracy", y, probs, groups, classes, 2000, seed)
        s = scores(y, probs, classes, run["positive"], 10)
        diff = paired_comparison("balanced_accuracy", y, probs, found["fine-tuned"]["test"], groups, classes, 2000, seed)
        rows.append({"data": name, "candidate": cand + (f" ({' + '.join(found[cand]['members'])})"
                                                        if "members" in found[cand] else ""),
                     "test_balanced_accuracy": round(ci["estimate"], 3), "low": round(ci["low"], 3),
                     "high": round(ci["high"], 3),
                     **{f"sens_{c}": None if s[f"sensitivity_{c}"] is None else round(s[f"sensitivity_{c}"], 3)
                        for c in run["positive"]},
                     "diff_vs_finetuned": None if cand == "fine-tuned" else round(diff["difference"], 3),
                     "diff_low": None if cand == "fine-tuned" or diff["lower"] is None else round(diff["lower"], 3),
                     "diff_high": None if cand == "fine-tuned" or diff["upper"] is None else round(diff["upper"], 3),
                     "train_s": round(found[cand]["seconds"], 1), **tflite_numbers(found[cand]["model"], run["test"])})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["isic", "pneumonia"], choices=["isic", "pneumonia"])
    parser.add_argument("--pneumonia-images", type=int, default=600,
                        help="a seeded, class-balanced sample of PneumoniaMNIST (0: all 3,166): small data, 2 cores")
    args = parser.parse_args()
    rows = []
    for name in args.data:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            p = train_bench().prepare(work) if name == "isic" else prepare_pneumonia(work, args.pneumonia_images)
            run = candidates(p, work)
            print(f"{name}: train {run['sizes'][0]} (originals {run['sizes'][1]}), val {run['sizes'][2]}, "
                  f"test {run['sizes'][3]} images", flush=True)
            rows += table(name, run, p.base.seed)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join("-" if r.get(k) is None else str(r[k]) for k in keys) + " |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
