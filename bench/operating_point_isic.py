"""The clinical decision on real images: ISIC grouped into benign / precancer / cancer.

    KERAS_HOME=... python bench/operating_point_isic.py [--arch MobileNetV2]

Runs the real validate -> dedup -> split -> augment stages (as bench/train_bench.py, with the
project's params: train / val / calibration / test by duplicate group), trains the architecture
with the project's cached two-phase training, then export's operating point: temperature and the
refer threshold from the calibration split, checked on the test split. Prints the threshold, its
guarantee, sensitivity (overall and per positive class) and specificity at it with exact intervals
by duplicate group, the same for the argmax, and the ECE before and after calibration.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from train_bench import DATA, prepare  # noqa: E402

from pipeline import export  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.tracking import History  # noqa: E402
from pipeline.train import class_weights, fit_cached, read_sets  # noqa: E402


def interval(r: dict) -> str:
    value, ci = r["value"], r["interval"]
    return "not measured" if value is None else f"{value:.3f} ({ci[0]:.3f}-{ci[1]:.3f}, {r['groups']} groups)"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="MobileNetV2")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found")
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        work, start = Path(tmp), time.time()
        p = prepare(work)
        spec, out = p.train.architectures[args.arch], work / "out"
        size = spec.image_size or 224
        data = read_sets(work / "raw", out / "aug", out / "split.csv", out / "aug.csv", p.base.classes, size)
        keras.utils.set_random_seed(p.base.seed)
        parts = build_model(args.arch, 3, spec.weights, size, spec.alpha, p.train.dropout, p.train.l2, p.base.seed)
        fit_cached(parts, data, p.train, class_weights(data["train"].y, 3), History())
        trained = time.time()
        inputs = export.Inputs(raw=work / "raw", split=out / "split.csv", metrics=out / "unused")
        decision, _, _ = export.operating_point(p, inputs, parts.model, size)
        split = json.loads((out / "split.json").read_text())["per_split"]
    op, t, a = decision, decision["test"], decision["test_argmax"]
    print(f"split (images): { {s: sum(v.values()) for s, v in split.items()} }; {args.arch}; "
          f"prepare + train {trained - start:.0f} s, operating point {time.time() - trained:.0f} s")
    print(f"refer when P({' + '.join(op['positive_classes'])}) >= {op['threshold']:.4f}; target "
          f"{op['target_sensitivity']} {'met' if op['target_met'] else 'NOT met'}; guaranteed sensitivity "
          f"{op['guaranteed_sensitivity']:.3f} at {op['confidence']:.0%} ({op['positive_groups']} positive calibration "
          f"groups, {op['misses_allowed']} misses allowed); temperature {op['temperature']:.3f}")
    print("\n| test split | at the operating point | argmax |\n|---|---|---|")
    print(f"| sensitivity (cancer + precancer) | {interval(t['sensitivity'])} | {interval(a['sensitivity'])} |")
    for c in t["per_class"]:
        print(f"| sensitivity {c} | {interval(t['per_class'][c])} | {interval(a['per_class'][c])} |")
    print(f"| specificity | {interval(t['specificity'])} | {interval(a['specificity'])} |")
    print(f"| referred share | {t['referred_share']:.3f} | {a['referred_share']:.3f} |")
    for when in ("before", "after"):
        e = op["ece_test"][when]
        print(f"ECE on test {when} calibration: {e['value']:.4f} ({e['interval'][0]:.4f}-{e['interval'][1]:.4f})")


if __name__ == "__main__":
    main()
