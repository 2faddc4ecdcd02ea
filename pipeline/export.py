"""export: what ships. The chosen model, calibrated, with its operating point, as Keras and TFLite.

First the clinical decision (pipeline/operating_point.py), on the calibration split: a temperature
folded into the last Dense layer, and the refer threshold with its guarantee, then checked on the
test split. Then TFLite (float32, dynamic-range and float16) of the calibrated model: a variant is
accepted only when, over the whole test split, it gives the same refer decision as Keras on every
image, its top-1 class agrees at least `export.min_top1_agreement[variant]` of the time and no
probability differs by more than `export.max_probability_diff[variant]`; otherwise it is not
written and the reason is. Beside the files: model.keras (calibrated, what the served model runs
without TFLite), labels.txt and metadata.json, whose `operating_point` states the rule an app applies:
refer when the summed probability of `positive_classes` >= `threshold`.
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
from pipeline.metrics import fmt, threshold_text
from pipeline.operating_point import decide, fit_temperature, refer_score
from pipeline.params import Export, Params, load_params, positive_set
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
    out: Path             # model.keras, the TFLite files, labels.txt and metadata.json for the app
    report: Path
    operating_point: Path  # the decision in full: threshold, guarantee, test check, calibration before/after
    figure: Path           # ROC with the operating point; reliability before and after calibration


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


def parity(reference: np.ndarray, candidate: np.ndarray, variant: str, params: Export, refer=None) -> dict:
    """Agreement of a variant with Keras; `refer` (probabilities -> decisions) must agree on every image."""
    agreement = float((reference.argmax(1) == candidate.argmax(1)).mean())
    diff = float(np.abs(reference - candidate).max())
    need_agree, max_diff = params.min_top1_agreement[variant], params.max_probability_diff[variant]
    problems = []
    if refer is not None:
        flips = int((refer(reference) != refer(candidate)).sum())
        if flips:
            problems.append(f"refer decision differs from Keras on {flips} test image(s)")
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


def check_variants(flatbuffers: dict[str, bytes], reference, images, params: Export, out_dir: Path, refer=None) -> dict:
    """Each variant against the Keras probabilities on the test images (read a chunk at a time)."""
    report = {}
    for variant, blob in flatbuffers.items():
        model = TFLiteModel(blob, threads=1)
        result = parity(reference, predict_rows(model.predict, images), variant, params, refer)
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


def fold_temperature(model, temperature: float) -> None:
    """softmax(z / T) inside the model: the last Dense layer's kernel and bias divided by T (no new layer)."""
    from pipeline.keras_io import ensemble_members
    from pipeline.stage import StageError

    members = ensemble_members(model)  # an ensemble (pipeline/ensemble.py): every member's logits divided by T, then
    for member in members:             # averaged; the threshold is chosen on these outputs, as for any model
        fold_temperature(member, temperature)
    if members:
        return
    try:
        layer = model.get_layer("classes")
    except ValueError:
        raise StageError(f"{model.name} has no Dense layer named 'classes' to fold the temperature into") from None
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel / temperature, bias / temperature])


def member_probs(model, images) -> np.ndarray | None:
    """An ensemble's members' own probabilities (members, images, classes), the outputs `fold_temperature`
    rescales before they are averaged; None for any other model."""
    import keras

    from pipeline.keras_io import ensemble_members

    if not ensemble_members(model):  # as fold_temperature and Grad-CAM tell one
        return None
    members = keras.Model(model.input, model.get_layer("mean").input)  # the averaged tensors, one per member
    return predict_rows(lambda x: np.stack(members.predict_on_batch(x), 1), images).transpose(1, 0, 2)


def operating_point(params: Params, inputs: Inputs, model, size: int) -> tuple[dict, object, np.ndarray]:
    """Fit the temperature on the calibration split and fold it into `model`; then the threshold from the
    folded model's own outputs, checked on the test split. Returns the decision, the test images and the
    folded model's test probabilities (the reference of the TFLite parity check)."""
    classes, op = params.base.classes, params.operating_point
    sets = {s: read_split(inputs.split, s, classes) for s in ("calibration", "test")}
    images = {s: images_of(rows, inputs.raw, classes, size) for s, rows in sets.items()}
    predict = lambda s: predict_rows(lambda x: model.predict_on_batch(x), images[s])  # noqa: E731
    before = {s: predict(s) for s in sets}
    members = member_probs(model, images["calibration"])
    temperature = fit_temperature(before["calibration"] if members is None else members, images["calibration"].y)
    fold_temperature(model, temperature)
    after = {s: predict(s) for s in sets}
    decision = decide(after["calibration"], images["calibration"].y, sets["calibration"].group_id.to_numpy(),
                      before["test"], after["test"], images["test"].y, sets["test"].group_id.to_numpy(), classes,
                      positive_set(params), temperature, op.target_sensitivity, op.confidence,
                      params.evaluate.calibration_bins, params.evaluate.bootstrap, params.base.seed)
    decision["roc_test"] = roc_points(images["test"].y, after["test"], classes, positive_set(params))
    return decision, images["test"], after["test"]


def roc_points(y, probs, classes, positive) -> dict:
    from sklearn.metrics import roc_curve

    positive_y = np.isin(y, [list(classes).index(c) for c in positive])
    if positive_y.all() or not positive_y.any():
        return {"fpr": [], "tpr": [], "thresholds": []}
    fpr, tpr, thresholds = roc_curve(positive_y, refer_score(probs, classes, positive))
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": np.minimum(thresholds, 1.0).tolist()}


def shipped_rule(decision: dict) -> dict:
    """metadata.json's `operating_point`: the rule an app applies, and what it is guaranteed to do."""
    keys = ("threshold", "positive_classes", "target_sensitivity", "confidence", "target_met",
            "guaranteed_sensitivity", "temperature", "calibration_images", "positive_groups")
    out = {k: decision[k] for k in keys}
    out["calibration_positive_groups"] = out.pop("positive_groups")
    out["rule"] = "refer when the sum of the probabilities of positive_classes >= threshold"
    out["test"] = {k: decision["test"][k]["value"] for k in ("sensitivity", "specificity")}
    return out


def run(params: Params, inputs: Inputs, outputs: Outputs) -> dict:
    import mlflow

    from pipeline import tracking
    from pipeline.keras_io import load_model

    base, out_dir = params.base, outputs.out
    best = json.loads(inputs.metrics.read_text())["best"]
    info = json.loads((Path(best["model"]).parent / "run.json").read_text())
    model = load_model(best["model"])
    decision, images, reference = operating_point(params, inputs, model, info["image_size"])
    rule = shipped_rule(decision)
    refer = None if rule["threshold"] is None else \
        (lambda p: refer_score(p, base.classes, rule["positive_classes"]) >= rule["threshold"])
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model.save(out_dir / "model.keras")
    variants = check_variants(convert(model), reference, images, params.export, out_dir, refer)
    (out_dir / "labels.txt").write_text("\n".join(base.classes) + "\n")
    metadata = {"architecture": best["architecture"], "classes": list(base.classes), "image_size": info["image_size"],
                "input": input_contract(info["image_size"]),
                "output": "softmax probabilities (calibrated) in the order of labels.txt",
                "operating_point": rule,
                "mlflow_run_id": info["run_id"], "data_version": info["data_version"], "git_commit": info["git_commit"],
                "variants": {k: {f: v[f] for f in ("file", "bytes", "latency_ms") if f in v} for k, v in variants.items()
                             if v["accepted"]}}
    (out_dir / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    report = {"architecture": best["architecture"], "test_images": int(len(images)), "variants": variants,
              "operating_point": rule}
    for path in (outputs.report, outputs.operating_point, outputs.figure):
        path.parent.mkdir(parents=True, exist_ok=True)
    outputs.report.write_text(json.dumps(report, indent=2) + "\n")
    outputs.operating_point.write_text(json.dumps(decision, indent=2) + "\n")
    draw_operating_point(decision, outputs.figure)
    tracking.setup(params.train.experiment)
    with mlflow.start_run(run_id=info["run_id"]):
        mlflow.log_artifacts(str(out_dir), artifact_path="tflite")
        mlflow.log_artifact(str(outputs.operating_point), artifact_path="operating_point")
        mlflow.log_artifact(str(outputs.figure), artifact_path="operating_point")
        mlflow.log_metrics({f"tflite_{k}_{m}": float(v[m]) for k, v in variants.items()
                            for m in ("bytes", "latency_ms", "top1_agreement", "max_probability_diff")})
        mlflow.log_metrics({k: float(v) for k, v in operating_point_metrics(decision).items() if v is not None})
    return report


def operating_point_metrics(decision: dict) -> dict:
    test = decision["test"]
    return {"op_threshold": decision["threshold"], "op_guaranteed_sensitivity": decision["guaranteed_sensitivity"],
            "op_temperature": decision["temperature"], "op_test_sensitivity": test["sensitivity"]["value"],
            "op_test_specificity": test["specificity"]["value"],
            "ece_test_before": decision["ece_test"]["before"]["value"],
            "ece_test_after": decision["ece_test"]["after"]["value"]}


def draw_operating_point(decision: dict, path: Path) -> None:
    """ROC of the refer score on the test split with the operating point; reliability before/after calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (roc, rel) = plt.subplots(1, 2, figsize=(10, 4.4))
    curve, test = decision["roc_test"], decision["test"]
    roc.plot(curve["fpr"], curve["tpr"], color="#1f6feb", label="refer score (test)")
    if test["sensitivity"]["value"] is not None and test["specificity"]["value"] is not None:
        roc.plot([1 - test["specificity"]["value"]], [test["sensitivity"]["value"]], "o", color="#d1242f",
                 label=f"operating point, threshold {threshold_text(decision['threshold'])}")
    roc.axhline(decision["guaranteed_sensitivity"], ls=":", color="#d1242f",
                label=f"guaranteed sensitivity {decision['guaranteed_sensitivity']:.3f} ({decision['confidence']:.0%})")
    roc.set(xlabel="1 - specificity", ylabel="sensitivity", title="Refer decision on the test split", xlim=(0, 1),
            ylim=(0, 1.02))
    roc.legend(loc="lower right", fontsize=8)
    rel.plot([0, 1], [0, 1], color="#888", lw=1)
    for when, colour in (("before", "#bf8700"), ("after", "#1a7f37")):
        points = decision["reliability_test"][when]
        ece = decision["ece_test"][when]["value"]
        rel.plot([p["confidence"] for p in points], [p["accuracy"] for p in points], "o-", color=colour,
                 label=f"{when} calibration (ECE {ece:.3f})")
    rel.set(xlabel="top-1 confidence", ylabel="accuracy", title=f"Reliability on the test split (T = "
            f"{decision['temperature']:.2f})", xlim=(0, 1), ylim=(0, 1.02))
    rel.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no tEXt chunk: images carry pixels only
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    quiet(tensorflow=True)  # before TensorFlow's first import: its start-up lines stay out of the log
    args = parser(__doc__, Inputs, Outputs).parse_args(argv)
    with one_line_errors("export"):
        report = run(load_params(args.params), paths(Inputs, args), paths(Outputs, args))
    for variant, r in report["variants"].items():
        verdict = "exported" if r["accepted"] else "NOT exported"
        print(f"export: {variant}: {verdict} ({r['reason']}; {r['bytes'] / 1e6:.2f} MB, {r['latency_ms']:.1f} ms/image)")
    op = report["operating_point"]
    print(f"export: refer when P({' + '.join(op['positive_classes'])}) >= {threshold_text(op['threshold'])}: sensitivity >= "
          f"{op['guaranteed_sensitivity']:.3f} guaranteed at {op['confidence']:.0%} (target {op['target_sensitivity']:g}"
          f"{' met' if op['target_met'] else ' NOT met'}); on test sensitivity {fmt(op['test']['sensitivity'])}, "
          f"specificity {fmt(op['test']['specificity'])}")


if __name__ == "__main__":
    main()
