"""evaluate: choose the architecture on the validation split; report every one on the test split.

Choosing on the test split and then comparing that best-of-N score with the champion on the
same images is a winner's curse: it favours whichever architecture got lucky on the test set.
So the choice uses `evaluate.select_by` on the validation split, and the test split is touched
once per architecture, for the report and (in register) the champion comparison.
Test metrics come with intervals that resample duplicate groups (the independent unit) and
never collapse to a point on a small split; per-class sensitivity and specificity with exact
intervals; a class absent from the test split is "not measured". Per-image test predictions
are written for register's paired comparison.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.console import quiet
from pipeline import pixels, streams
from pipeline.intervals import class_intervals, interval
from pipeline.metrics import fmt, scores
from pipeline.confusion import confusion, write_confusion_json, write_confusion_png
from pipeline.params import Evaluate, Params, load_params
from pipeline.privacy import image_id
from pipeline.stage import one_line_errors, parser, paths
from pipeline.tables import read_split

INTERVAL_METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "roc_auc")


@dataclass(frozen=True)
class Inputs:
    raw: Path
    split: Path
    models: Path        # models/<arch>/model.keras and run.json, one folder per architecture
    ensemble: Path | None = None  # the ensemble stage's folder: a candidate too when it holds a model.keras


@dataclass(frozen=True)
class Outputs:
    metrics: Path
    leaderboard: Path
    figures: Path       # test confusion PNGs, per-image test predictions, Grad-CAM examples
    plots: Path         # dvc plots records


def labels_and_probabilities(predict, size: int, rows: pd.DataFrame, raw: Path, classes: list[str]):
    """Class indices and predicted probabilities of some split rows, for any model's predict function
    (images from the pixel cache, a chunk at a time)."""
    images = streams.images_of(rows, raw, classes, size)
    return images.y, streams.predict_rows(predict, images)


def test_report(y, probs, groups, classes, params, seed: int) -> dict:
    """Intervals by duplicate group for the headline metrics, exact per-class intervals."""
    names = dict.fromkeys([params.select_by, *INTERVAL_METRICS])  # ordered, no repeats
    return {"intervals": {m: interval(m, y, probs, groups, classes, params.bootstrap, seed, params.confidence)
                          for m in names},
            "classes": class_intervals(y, probs.argmax(1), groups, classes, params.confidence)}


def write_predictions(rows: pd.DataFrame, probs: np.ndarray, classes, path: Path) -> None:
    """Per test image: its content (sha256), group, label and probabilities; never its path (logged to MLflow)."""
    table = rows[[c for c in ("sha256", "group_id", "label") if c in rows]].reset_index(drop=True)
    table = pd.concat([table, pd.DataFrame(probs, columns=[f"p_{c}" for c in classes])], axis=1)
    table.to_csv(path, index=False)


def evaluate_one(name, folder: Path, sets, inputs: Inputs, base, params: Evaluate, outputs: Outputs) -> dict:
    from pipeline.keras_io import load_model

    classes, positive = list(base.classes), list(base.positive_classes)
    info = run_info(folder.parent, folder.name)
    model = load_model(folder / "model.keras")
    predict = lambda x: model.predict_on_batch(x)  # noqa: E731
    result = {"run_id": info["run_id"], **{k: info[k] for k in ("members",) if k in info}}
    both = pd.concat([sets["val"], sets["test"]], ignore_index=True)  # one pass: the network is traced once
    y_all, p_all = labels_and_probabilities(predict, info["image_size"], both, inputs.raw, classes)
    n = len(sets["val"])
    for split, part in (("val", slice(0, n)), ("test", slice(n, None))):
        y, probs = y_all[part], p_all[part]
        result[split] = scores(y, probs, classes, positive, params.calibration_bins)
    result["test_report"] = test_report(y, probs, sets["test"].group_id.to_numpy(), classes, params, base.seed)
    png, records = outputs.figures / f"{name}_test_confusion.png", outputs.plots / f"{name}.json"
    write_confusion_png(confusion(y, probs.argmax(1), len(classes)), classes, f"{name}: test", png)
    write_confusion_json(y, probs.argmax(1), classes, records)
    predictions = outputs.figures / f"{name}_test_predictions.csv"
    write_predictions(sets["test"], probs, classes, predictions)
    result["predictions"] = predictions.as_posix()
    log_to_mlflow(info, result, [png, records, predictions])
    return result


def log_to_mlflow(info: dict, result: dict, files: list[Path]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    values = {f"{split}_{k}": v for split in ("val", "test") for k, v in result[split].items() if isinstance(v, float)}
    for m, ci in result["test_report"]["intervals"].items():
        values.update({f"test_{m}_low": ci["low"], f"test_{m}_high": ci["high"]} if ci["low"] is not None else {})
    for k, v in values.items():
        client.log_metric(info["run_id"], k, v)
    for f in files:
        client.log_artifact(info["run_id"], str(f), artifact_path="test")


def leaderboard(results: dict[str, dict], select_by: str, positive) -> pd.DataFrame:
    """One row per architecture, validation beside test; sorted by the validation score that chooses."""
    rows = []
    for name, r in results.items():
        ci = r["test_report"]["intervals"][select_by]
        rows.append({"architecture": name, f"val_{select_by}": r["val"][select_by],
                     f"test_{select_by}": r["test"][select_by], f"test_{select_by}_low": ci["low"],
                     f"test_{select_by}_high": ci["high"], "val_roc_auc": r["val"]["roc_auc"],
                     "test_balanced_accuracy": r["test"]["balanced_accuracy"], "test_roc_auc": r["test"]["roc_auc"],
                     **{f"test_sensitivity_{c}": r["test"].get(f"sensitivity_{c}") for c in positive}})
    table = pd.DataFrame(rows)
    table["_combined"] = [bool(results[n].get("members")) for n in table.architecture]  # an ensemble wins only
                                                                                         # on a strictly higher score
    table = table.sort_values([f"val_{select_by}", "_combined", "val_roc_auc", "architecture"],
                              ascending=[False, True, False, True], na_position="last")
    table = table.drop(columns="_combined").reset_index(drop=True)
    table.insert(1, "chosen", table.index == 0)
    return table


def read_sets(split_csv: Path, classes) -> dict[str, pd.DataFrame]:
    """The val and test rows of split.csv; an empty one is an error (nothing to choose on, or to report)."""
    return {s: read_split(split_csv, s, classes) for s in ("val", "test")}


def run_info(models: Path, name: str) -> dict:
    """What train recorded beside an architecture's model (MLflow runs, input size)."""
    return json.loads((models / name / "run.json").read_text())


def candidates(inputs: Inputs, architectures) -> dict[str, Path]:
    """Each trained architecture's folder, and the ensemble's when the ensemble stage built one (by its name)."""
    found = {name: inputs.models / name for name in architectures}
    if inputs.ensemble is not None and (inputs.ensemble / "model.keras").is_file():
        found[run_info(inputs.ensemble.parent, inputs.ensemble.name)["architecture"]] = inputs.ensemble
    return found


def run(params: Params, inputs: Inputs, outputs: Outputs) -> dict:
    from pipeline import tracking

    base, evaluation = params.base, params.evaluate
    sets = read_sets(inputs.split, base.classes)
    for folder in (outputs.figures, outputs.plots, outputs.metrics.parent):
        folder.mkdir(parents=True, exist_ok=True)
    tracking.setup(params.train.experiment)
    folders = candidates(inputs, params.train.architectures)
    results = {name: evaluate_one(name, folder, sets, inputs, base, evaluation, outputs)
               for name, folder in folders.items()}
    board = leaderboard(results, evaluation.select_by, base.positive_classes)
    name = board.architecture.iloc[0]
    chosen = results[name]
    summary = {"chosen_on": "val", "select_by": evaluation.select_by, "confidence": evaluation.confidence,
               "architectures": results, "best": {
                   "architecture": name, "chosen_on": "val", "select_by": evaluation.select_by,
                   "val_value": chosen["val"][evaluation.select_by], "test_value": chosen["test"][evaluation.select_by],
                   "test_interval": chosen["test_report"]["intervals"][evaluation.select_by],
                   "run_id": chosen["run_id"], "predictions": chosen["predictions"],
                   "model": (folders[name] / "model.keras").as_posix()}}
    outputs.metrics.write_text(json.dumps(summary, indent=2) + "\n")
    board.to_csv(outputs.leaderboard, index=False)
    info = run_info(folders[name].parent, folders[name].name)
    gradcam_examples(Path(summary["best"]["model"]), Path(chosen["predictions"]), sets["test"], inputs.raw, list(base.classes),
                     info["image_size"], outputs.figures / "gradcam")
    log_leaderboard(info, outputs.leaderboard, summary["best"], board)
    return summary


def log_leaderboard(info: dict, table: Path, best: dict, board: pd.DataFrame) -> None:
    """The leaderboard on the pipeline's parent run: `<arch>.val_…`/`<arch>.test_…` metrics the runs
    table and compare view show, which architecture was chosen and on what, and the table itself."""
    from mlflow.tracking import MlflowClient

    client, parent = MlflowClient(), info["parent_run_id"]
    client.log_artifact(parent, str(table))
    for key, value in {"chosen_architecture": best["architecture"], "chosen_on": "val",
                       "select_by": best["select_by"]}.items():
        client.set_tag(parent, key, value)
    client.set_tag(parent, "best_run_id", best["run_id"])
    metrics = {f"best_{key.split('_')[0]}_{best['select_by']}": best[key] for key in ("val_value", "test_value")}
    for row in board.to_dict("records"):
        metrics.update({f"{row['architecture']}.{k}": v for k, v in row.items()
                        if k not in ("architecture", "chosen") and isinstance(v, float)})
    for key, value in metrics.items():
        if value is not None and value == value:  # None / NaN: not measured, not logged
            client.log_metric(parent, key, float(value))


def gradcam_examples(model_path: Path, predictions: Path, test: pd.DataFrame, raw: Path, classes, size: int,
                     out_dir: Path, per_class: int = 2) -> list[dict]:
    """Where the chosen model looked, on test images: per true class its most confident right answer
    and its most confident wrong one (if any). Written as PNGs named by image ID, with an index for the
    run report (IDs, never file names: the report goes to MLflow). `test`: the split rows predicted."""
    from pipeline.keras_io import load_model

    from pipeline.predict import gradcam, overlay

    table = pd.read_csv(predictions, keep_default_na=False).assign(path=test.path.to_numpy())
    probs = table[[f"p_{c}" for c in classes]].to_numpy()
    table["predicted"], table["confidence"] = [classes[i] for i in probs.argmax(1)], probs.max(1)
    model, examples, cache = load_model(model_path), [], pixels.cache_dir(raw)
    out_dir.mkdir(parents=True, exist_ok=True)
    for label in classes:
        rows = table[table.label == label].sort_values(["confidence", "path"], ascending=[False, True])
        right, wrong = rows[rows.predicted == label], rows[rows.predicted != label]
        for outcome, row in [("right", r) for r in right.head(1).itertuples()] + \
                            [("wrong", r) for r in wrong.head(per_class - min(1, len(right))).itertuples()]:
            sha, path = getattr(row, "sha256", ""), raw / row.path
            png = out_dir / f"{label}_{outcome}_{len(examples):02d}_{image_id(sha) if sha else 'image'}.png"
            cam = gradcam(model, pixels.model_array(cache, sha, path, size), classes.index(row.predicted))
            overlay(pixels.preview(cache, sha, path), cam, png)
            examples.append({"id": image_id(sha) if sha else "", "label": label, "predicted": row.predicted,
                             "confidence": round(float(row.confidence), 4), "outcome": outcome, "png": png.name})
    (out_dir / "examples.json").write_text(json.dumps(examples, indent=2) + "\n")
    return examples


def main(argv: list[str] | None = None) -> None:
    quiet(tensorflow=True)  # before TensorFlow's first import: its start-up lines stay out of the log
    args = parser(__doc__, Inputs, Outputs).parse_args(argv)
    with one_line_errors("evaluate"):
        s = run(load_params(args.params), paths(Inputs, args), paths(Outputs, args))
    best, ci = s["best"], s["best"]["test_interval"]
    print(f"evaluate: chose {best['architecture']} on validation {best['select_by']} {fmt(best['val_value'])}; "
          f"its test {best['select_by']} {fmt(best['test_value'])} "
          f"({s['confidence']:.0%} interval {fmt(ci['low'])} to {fmt(ci['high'])}, by duplicate group)")


if __name__ == "__main__":
    main()
