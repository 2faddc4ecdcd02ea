"""evaluate: every trained architecture on the test split; pick the best by evaluate.select_by.

Metrics: accuracy, balanced accuracy, macro F1, per-class precision and recall (sensitivity
of the positive classes), one-vs-rest ROC-AUC, expected calibration error, and a 95%
bootstrap interval for the selection metric. Test metrics and the test confusion matrix go
to each architecture's MLflow run; the leaderboard goes to the pipeline's parent run.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_recall_fscore_support, roc_auc_score

from pipeline.images import load_batch
from pipeline.params import load_section
from pipeline.reporting import confusion, write_confusion_json, write_confusion_png


def calibration_error(y: np.ndarray, probs: np.ndarray, bins: int) -> float:
    """Expected calibration error of the top-1 confidence, equal-width bins."""
    confidence, correct = probs.max(1), probs.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    return float(sum(abs(confidence[which == b].mean() - correct[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))


def roc_auc(y: np.ndarray, probs: np.ndarray) -> float:
    if len(np.unique(y)) < probs.shape[1]:
        return float("nan")  # one-vs-rest AUC needs every class present
    return float(roc_auc_score(y, probs, multi_class="ovr", labels=list(range(probs.shape[1]))))


def scores(y: np.ndarray, probs: np.ndarray, classes, positive, bins: int) -> dict:
    pred = probs.argmax(1)
    precision, recall, _, _ = precision_recall_fscore_support(
        y, pred, labels=list(range(len(classes))), zero_division=0)
    out = {"accuracy": float(accuracy_score(y, pred)), "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
           "macro_f1": float(f1_score(y, pred, average="macro", labels=list(range(len(classes))), zero_division=0)),
           "roc_auc": roc_auc(y, probs), "ece": calibration_error(y, probs, bins), "test_images": int(len(y))}
    for i, c in enumerate(classes):
        out[f"precision_{c}"], out[f"recall_{c}"] = float(precision[i]), float(recall[i])
    for c in positive:
        out[f"sensitivity_{c}"] = out[f"recall_{c}"]
    return out


def bootstrap_interval(y, probs, metric: str, classes, positive, n: int, seed: int, bins: int = 10) -> list[float]:
    """95% percentile interval of `metric` over n resamples of the test images."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        values.append(scores(y[idx], probs[idx], classes, positive, bins)[metric])
    values = np.array(values)[~np.isnan(values)]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if len(values) else [np.nan] * 2


def leaderboard(results: dict[str, dict], select_by: str) -> pd.DataFrame:
    table = pd.DataFrame.from_dict(results, orient="index").rename_axis("architecture").reset_index()
    order = table.sort_values([select_by, "roc_auc", "architecture"], ascending=[False, False, True], na_position="last")
    return order.reset_index(drop=True)


def log_to_mlflow(info: dict, result: dict, files: list[Path]) -> None:
    import mlflow

    with mlflow.start_run(run_id=info["run_id"]):
        mlflow.log_metrics({f"test_{k}": v for k, v in result.items()
                            if isinstance(v, float) and not np.isnan(v)})
        for f in files:
            mlflow.log_artifact(str(f), artifact_path="test")


def predict_test(predict, size: int, test: pd.DataFrame, raw: Path, classes: list[str]):
    """Class indices and predicted probabilities of the test split, for any model's predict function."""
    y = np.array([classes.index(c) for c in test.label])
    return y, predict(load_batch([raw / p for p in test.path], size))


def evaluate_one(name, info, test, raw, classes, positive, params, seed: int, out: dict[str, Path]) -> dict:
    import keras

    model = keras.saving.load_model(out["models"] / name / "model.keras")
    y, probs = predict_test(lambda x: model.predict(x, verbose=0), info["image_size"], test, raw, classes)
    result = scores(y, probs, classes, positive, params.calibration_bins)
    result["ci95_low"], result["ci95_high"] = bootstrap_interval(
        y, probs, params.select_by, classes, positive, params.bootstrap, seed, params.calibration_bins)
    png, records = out["figures"] / f"{name}_test_confusion.png", out["plots"] / f"{name}.json"
    matrix = confusion(y, probs.argmax(1), len(classes))
    write_confusion_png(matrix, classes, f"{name}: test", png)
    write_confusion_json(y, probs.argmax(1), classes, records)
    log_to_mlflow(info, result, [png, records])
    return {**result, "run_id": info["run_id"]}


def run(params_path: Path, raw: Path, split_csv: Path, out: dict[str, Path]) -> dict:
    from pipeline import tracking

    base, params = load_section("base", params_path), load_section("evaluate", params_path)
    train = load_section("train", params_path)
    classes, positive = list(base.classes), list(base.positive_classes)
    valid = ["accuracy", "balanced_accuracy", "macro_f1", "roc_auc"] + [f"sensitivity_{c}" for c in positive]
    if params.select_by not in valid:
        raise SystemExit(f"evaluate: select_by {params.select_by!r} is not one of {', '.join(valid)}")
    test = pd.read_csv(split_csv, keep_default_na=False).query("split == 'test'")
    tracking.setup(train.experiment)
    results = {}
    for name in train.architectures:
        info = json.loads((out["models"] / name / "run.json").read_text())
        results[name] = evaluate_one(name, info, test, raw, classes, positive, params, base.seed, out)
    board = leaderboard(results, params.select_by)
    best = board.iloc[0]
    summary = {"architectures": results, "best": {
        "architecture": best.architecture, "select_by": params.select_by, "value": float(best[params.select_by]),
        "ci95": [float(best.ci95_low), float(best.ci95_high)], "run_id": best.run_id,
        "model": (out["models"] / best.architecture / "model.keras").as_posix()}}
    out["metrics"].write_text(json.dumps(summary, indent=2, default=float) + "\n")
    board.to_csv(out["leaderboard"], index=False)
    log_leaderboard(json.loads((out["models"] / best.architecture / "run.json").read_text()), out, summary["best"])
    return summary


def log_leaderboard(info: dict, out: dict[str, Path], best: dict) -> None:
    import mlflow

    with mlflow.start_run(run_id=info["parent_run_id"]):
        mlflow.log_artifact(str(out["leaderboard"]))
        mlflow.set_tags({"best_architecture": best["architecture"], "best_run_id": best["run_id"]})
        mlflow.log_metric(f"best_test_{best['select_by']}", best["value"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    for flag in ("raw", "split", "models", "metrics", "leaderboard", "figures", "plots"):
        parser.add_argument(f"--{flag}", type=Path, required=True)
    args = parser.parse_args(argv)
    out = {k: getattr(args, k) for k in ("models", "metrics", "leaderboard", "figures", "plots")}
    for key in ("figures", "plots"):
        out[key].mkdir(parents=True, exist_ok=True)
    out["metrics"].parent.mkdir(parents=True, exist_ok=True)
    best = run(args.params, args.raw, args.split, out)["best"]
    print(f"evaluate: best is {best['architecture']} with test {best['select_by']} {best['value']:.3f} "
          f"(95% CI {best['ci95'][0]:.3f}-{best['ci95'][1]:.3f})")


if __name__ == "__main__":
    main()
