"""ensemble: the probability average of the `ensemble.top_k` best trained architectures, as one Keras model.

A candidate like any architecture: evaluate scores it on validation beside them and chooses it only
when its validation `evaluate.select_by` is strictly higher (a tie keeps the single model), and
register promotes it only through the paired gate. Members are ranked as evaluate's leaderboard
ranks them (validation `select_by`, then validation ROC-AUC, then name), on the validation
probabilities each train stage recorded (`val_probabilities.csv`; only the members are loaded); the weights are equal:
learning them would need data the members did not see, and the validation split already chose
and early-stopped them.

The model takes one input, RGB pixels 0..255 at the largest member's size (its metadata, TFLite
file and pyfunc contract are those of any architecture); a member with a smaller input gets a
bilinear resize in front of it (`pipeline.keras_io.Resize`, not the stock `Resizing` layer, which
exports wrongly; close to, not identical with, the antialiased resize its pixel-cache inputs were
made with). Members are renamed `member_0` (the strongest) to `member_<k-1>`;
Grad-CAM of the ensemble is the Grad-CAM of `member_0`, for the ensemble's predicted class
(pipeline/predict.py `strongest_member`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.console import quiet
from pipeline.metrics import fmt, scores
from pipeline.params import Params, load_params
from pipeline.stage import one_line_errors, parser, paths
from pipeline.streams import images_of
from pipeline.tables import read_split

NAME = "ensemble"  # its name on the leaderboard, in metrics.json and MLflow


@dataclass(frozen=True)
class Inputs:
    raw: Path
    split: Path
    models: Path        # models/<arch>/model.keras and run.json, one folder per architecture


@dataclass(frozen=True)
class Outputs:
    out: Path           # model.keras and run.json (with the members); only run.json when there is no ensemble


def rank(val_scores: dict[str, dict], select_by: str) -> list[str]:
    """Architecture names, best first, as evaluate's leaderboard orders them (an unmeasured score last)."""
    def key(name):
        s = val_scores[name]
        value, auc = s.get(select_by), s.get("roc_auc")
        return (-(value if value is not None and value == value else -np.inf),
                -(auc if auc is not None and auc == auc else -np.inf), name)
    return sorted(val_scores, key=key)


def build_ensemble(members: list, sizes: list[int]):
    """One input at the largest size, each member (strongest first) behind a resize when its size differs,
    and the mean of their probabilities."""
    import keras

    from pipeline.keras_io import Resize

    size = max(sizes)
    image = keras.Input((size, size, 3), name="image")
    outputs = []
    for i, (member, own) in enumerate(zip(members, sizes)):
        member.name = f"member_{i}"
        x = image if own == size else Resize(own, name=f"resize_{i}")(image)
        outputs.append(member(x))
    return keras.Model(image, keras.layers.Average(name="mean")(outputs), name=NAME)


def validation_scores(folder: Path, val, base, bins: int) -> dict:
    """An architecture's validation scores from the probabilities its train stage recorded (no model loaded)."""
    from pipeline.stage import StageError
    from pipeline.train import VAL_PROBABILITIES, read_val_probabilities

    if not (folder / VAL_PROBABILITIES).is_file():
        raise StageError(f"{folder} has no {VAL_PROBABILITIES} (trained by an earlier version): rerun its train stage")
    y, probs = read_val_probabilities(folder, base.classes)
    if list(y) != [list(base.classes).index(c) for c in val.label]:
        raise StageError(f"{folder / VAL_PROBABILITIES} is not of this val split: rerun its train stage")
    return scores(y, probs, list(base.classes), list(base.positive_classes), bins)


def run(params: Params, inputs: Inputs, outputs: Outputs) -> dict:
    import mlflow

    from pipeline import tracking
    from pipeline.train import log_validation

    base, k, select_by = params.base, params.ensemble.top_k, params.evaluate.select_by
    outputs.out.mkdir(parents=True, exist_ok=True)
    (outputs.out / "model.keras").unlink(missing_ok=True)
    if min(k, len(params.train.architectures)) < 2:
        info = {"architecture": NAME, "members": [], "reason": "ensemble.top_k is 0 or fewer than two "
                "architectures are trained: no ensemble"}
        (outputs.out / "run.json").write_text(json.dumps(info, indent=2) + "\n")
        return info
    quiet(tensorflow=True)  # only now: a skipped stage does not pay TensorFlow's seconds of import
    from pipeline.keras_io import load_model

    val = read_split(inputs.split, "val", base.classes)
    val_scores = {name: validation_scores(inputs.models / name, val, base, params.evaluate.calibration_bins)
                  for name in params.train.architectures}
    chosen = rank(val_scores, select_by)[:k]
    infos = {n: json.loads((inputs.models / n / "run.json").read_text()) for n in chosen}
    sizes = [infos[n]["image_size"] for n in chosen]
    model = build_ensemble([load_model(inputs.models / n / "model.keras") for n in chosen], sizes)
    first = infos[chosen[0]]
    experiment = tracking.setup(params.train.experiment)
    lineage = {key: first[key] for key in ("data_version", "git_commit") if key in first}
    with mlflow.start_run(run_id=first["parent_run_id"]) as parent, \
            mlflow.start_run(run_name=f"{NAME} data {lineage.get('data_version', '')[:8]}", nested=True,
                             experiment_id=experiment, tags={"architecture": NAME, **lineage}) as child:
        mlflow.log_params({"architecture": NAME, "members": ",".join(chosen), "top_k": k, "ranked_by": select_by,
                           "image_size": max(sizes), "weights": "equal"})
        mlflow.log_metrics({f"member_val_{select_by}.{n}": val_scores[n][select_by] for n in chosen
                            if val_scores[n].get(select_by) is not None})
        model.save(outputs.out / "model.keras")
        data = {"val": images_of(val, inputs.raw, base.classes, max(sizes))}
        summary = log_validation(mlflow, model, data, base.classes, outputs.out)
        tracking.log_keras_model(model, data["val"].read([0]).astype("float32"))
        info = {"architecture": NAME, "run_id": child.info.run_id, "parent_run_id": parent.info.run_id,
                "experiment_id": experiment, "image_size": max(sizes), "classes": list(base.classes),
                "members": chosen, "member_val": {n: val_scores[n][select_by] for n in chosen}, **lineage}
    (outputs.out / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    return {**info, **summary}


def main(argv: list[str] | None = None) -> None:
    quiet()  # TensorFlow (silenced) is imported by run() only when the stage has work for it
    args = parser(__doc__, Inputs, Outputs).parse_args(argv)
    with one_line_errors("ensemble"):
        s = run(load_params(args.params), paths(Inputs, args), paths(Outputs, args))
    if not s["members"]:
        print(f"ensemble: {s['reason']}")
        return
    print(f"ensemble: mean of {', '.join(s['members'])} at {s['image_size']} px; "
          f"val balanced accuracy {fmt(s['val_balanced_accuracy'])}; MLflow run {s['run_id']}")


if __name__ == "__main__":
    main()
