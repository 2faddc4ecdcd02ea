"""cv: on small data, a cross-validated estimate of the chosen candidate's procedure beside the test split's.

A test split of 15-50 images gives an interval 0.2-0.4 wide whatever the model. When train + val hold
fewer usable images than `cv.max_images`, this stage repeats the chosen candidate's whole training
procedure (`train.fit_model`: the two phases with early stopping, or the probe with its grouped choice
of C; for the ensemble, each of its members, averaged) in `cv.folds` grouped, stratified folds over
train + val: in fold i, fold i is scored, fold i+1 stops training early (as the val split does), the
rest train, with the augmented copies of their own images. The test and calibration splits are never
read. Every train + val image is scored once, by a model that never saw its duplicate group; the pooled
score gets the same interval by duplicate group as the test split's.

The two numbers answer different questions. The test split's: how good is the one model that ships
(few images, wide interval). The cross-validated one: how good is this procedure, trained on this much of
this clinic's data, on images it has not seen (every image used once, narrower interval); it is not a
score of the shipped model, whose own training set is one of many the folds imitate.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import pixels
from pipeline.console import quiet
from pipeline.folds import grouped_folds
from pipeline.metrics import fmt, scores
from pipeline.params import Params, load_params
from pipeline.stage import StageError, one_line_errors, parser, paths
from pipeline.streams import Images
from pipeline.tables import read_split

QUESTIONS = {"test": "how good the model that ships is, on the held-out test images",
             "cv": "how good this training procedure is on this clinic's data, every train and val image "
                   "scored once by a model that never saw its duplicate group (not a score of the shipped model)"}


@dataclass(frozen=True)
class Inputs:
    raw: Path
    augmented: Path
    split: Path
    augmented_csv: Path
    metrics: Path       # evaluate's choice


@dataclass(frozen=True)
class Outputs:
    report: Path        # reports/cv.json


def pool_rows(split_csv: Path, classes) -> pd.DataFrame:
    """train + val rows (never calibration or test), each row's duplicate group ("" -> its own path)."""
    rows = pd.concat([read_split(split_csv, s, classes) for s in ("train", "val")], ignore_index=True)
    rows["group_id"] = [g or p for g, p in zip(rows.group_id, rows.path)]
    return rows


def fold_roles(n_folds: int) -> list[tuple[int, int]]:
    """(scored fold, early-stopping fold) per round; the other folds train."""
    return [(i, (i + 1) % n_folds) for i in range(n_folds)]


def images(rows: pd.DataFrame, raw: Path, augmented: Path, extra: pd.DataFrame, classes, size: int) -> Images:
    """Rows of split.csv (from the pixel cache), then augmented copies (decoded from their files)."""
    index = {c: i for i, c in enumerate(classes)}
    return Images([raw / p for p in rows.path] + [augmented / p for p in extra.path],
                  pixels.shas_of(rows) + [""] * len(extra),
                  np.array([index[c] for c in list(rows.label) + list(extra.label)], dtype=int), size,
                  pixels.cache_dir(raw))


class Member:
    """One architecture's procedure over the pooled images. Built once: every fold starts from the same
    initial weights (restored, not rebuilt) and reuses the traced training steps (train.compile_fit `again`).
    What every fold shares is computed once into files: a pretrained network's frozen activations (and, for
    fine-tuning, phase 1's features from them, which the pretrained layers above the cut compute alike in
    every fold); the scored rows are predicted from those activations through the layers that train."""

    def __init__(self, name: str, params: Params, pool: Images, originals: int, tmp: Path):
        from pipeline.models import get_arch
        from pipeline.streams import to_file

        self.name, self.params, spec = name, params, params.train.architectures[name]
        self.size = spec.image_size or get_arch(spec.base or name).size
        self.pool = Images(pool.sources, pool.shas, pool.y, self.size, pool.cache)
        self.originals = originals
        self.parts = self.build()
        self.initial = [v.numpy() for v in self.parts.model.variables]  # weights and dropout's seed state
        self.frozen = self.pooled = self.scorer = None
        if spec.weights != "none":  # pretrained: the same frozen values in every fold
            from pipeline.probe import feature_model, head_model
            from pipeline.train import cached_models

            if spec.head == "linear":
                front, self.scorer = feature_model(self.parts), head_model(self.parts)
            else:
                models = cached_models(self.parts, params.train)  # kept on the parts: every fold trains them
                front, self.scorer = models.front, models.full
            self.frozen = to_file(front, self.pool, tmp / f"{name}.rows", f"cv: frozen part ({name})")
            if spec.head != "linear":
                self.pooled = to_file(models.pooled, self.frozen, tmp / f"{name}.features")

    def build(self):
        import keras

        from pipeline.models import build_model

        base, settings, spec = self.params.base, self.params.train, self.params.train.architectures[self.name]
        keras.utils.set_random_seed(base.seed)
        return build_model(spec.base or self.name, len(base.classes), spec.weights, self.size, spec.alpha,
                           settings.dropout, settings.l2, base.seed, head=spec.head, title=self.name)

    def train_and_predict(self, fit, stop, score, groups) -> np.ndarray:
        """Trained on pool rows `fit`, stopped early on `stop`; probabilities of the rows `score`."""
        import keras

        from pipeline.streams import Subset, predict_rows
        from pipeline.tracking import History
        from pipeline.train import class_weights, fit_model

        settings, spec = self.params.train, self.params.train.architectures[self.name]
        data = {"train": Subset(self.pool, fit), "val": Subset(self.pool, stop), "train_groups": groups[fit],
                "train_originals": int((fit < self.originals).sum())}  # fit lists pool rows before their copies
        if self.frozen is not None:
            data.update({"train_features": Subset(self.frozen, fit)} if spec.head == "linear" else
                        {"train_frozen": Subset(self.frozen, fit), "val_frozen": Subset(self.frozen, stop),
                         "train_pooled": Subset(self.pooled, fit), "val_pooled": Subset(self.pooled, stop)})
        weights = class_weights(data["train"].y, len(self.params.base.classes)) if settings.class_weights else None
        for variable, value in zip(self.parts.model.variables, self.initial):  # as built: every fold starts alike
            variable.assign(value)
        keras.utils.set_random_seed(self.params.base.seed)
        fit_model(self.parts, data, spec, settings, weights, History(), self.params.base.seed)
        model, rows = (self.scorer, self.frozen) if self.scorer is not None else (self.parts.model, self.pool)
        return predict_rows(lambda x: model.predict_on_batch(x), Subset(rows, score))


def out_of_fold(members: list[str], params: Params, rows: pd.DataFrame, extra: pd.DataFrame, inputs: Inputs):
    """Every row's probabilities from the round that scored it, and each row's fold. A round trains on the
    rows of its training folds and the augmented copies of their groups' images."""
    import tempfile

    classes = list(params.base.classes)
    y = np.array([classes.index(c) for c in rows.label])
    folds = [score for _, score in grouped_folds(y, rows.group_id.to_numpy(), params.cv.folds, params.base.seed)]
    pool = images(rows, inputs.raw, inputs.augmented, extra, classes, 0)
    groups = np.array(list(rows.group_id) + list(extra.group_id), dtype=object)
    probs, fold_of = np.zeros((len(rows), len(classes))), np.zeros(len(rows), int)
    with tempfile.TemporaryDirectory(prefix="cv-rows-") as tmp:
        procedure = [Member(m, params, pool, len(rows), Path(tmp)) for m in members]
        for i, (scored, stop) in enumerate(fold_roles(len(folds))):
            fit = np.setdiff1d(np.arange(len(rows)), np.concatenate([folds[scored], folds[stop]]))
            copies = len(rows) + np.flatnonzero(extra.group_id.isin(set(rows.group_id.iloc[fit])).to_numpy())
            fit = np.concatenate([fit, copies])
            probs[folds[scored]] = np.mean([m.train_and_predict(fit, folds[stop], folds[scored], groups)
                                            for m in procedure], axis=0)
            fold_of[folds[scored]] = i
    return y, probs, fold_of


def estimate(params: Params, inputs: Inputs, chosen: str, members: list[str]) -> dict:
    from pipeline.intervals import interval

    base, ev = params.base, params.evaluate
    rows = pool_rows(inputs.split, base.classes)
    extra = pd.read_csv(inputs.augmented_csv, keep_default_na=False, dtype=str)
    y, probs, fold_of = out_of_fold(members, params, rows, extra, inputs)
    classes, positive = list(base.classes), list(base.positive_classes)
    per_fold = [scores(y[fold_of == i], probs[fold_of == i], classes, positive, ev.calibration_bins)[ev.select_by]
                for i in range(fold_of.max() + 1)]
    pooled = scores(y, probs, classes, positive, ev.calibration_bins)
    measured = [v for v in per_fold if v is not None and v == v]
    return {"ran": True, "candidate": chosen, "procedure": members, "folds": int(fold_of.max() + 1),
            "images": len(rows), "groups": int(rows.group_id.nunique()), "select_by": ev.select_by,
            "mean": float(np.mean(measured)) if measured else None,
            "fold_sd": float(np.std(measured, ddof=1)) if len(measured) > 1 else None,
            "per_fold": per_fold, "pooled": pooled,
            "interval": interval(ev.select_by, y, probs, rows.group_id.to_numpy(), classes, ev.bootstrap, base.seed,
                                 ev.confidence),
            "confidence": ev.confidence, "questions": QUESTIONS}


def describe(r: dict, select_by: str, confidence: float) -> str:
    """The two numbers side by side, and which question each answers (the card and the report print it)."""
    t = r["test"]
    test = (f"Test split: {select_by} {fmt(t['value'])} ({confidence:.0%} interval {fmt(t['interval']['low'])} to "
            f"{fmt(t['interval']['high'])}, by duplicate group); it answers {QUESTIONS['test']}.")
    if not r["ran"]:
        return f"{test} No cross-validated estimate: {r['reason']}."
    ci = r["interval"]
    return (f"{test} Cross-validated ({r['folds']} grouped, stratified folds over the {r['images']} train + val "
            f"images in {r['groups']} duplicate groups; the test split untouched), {r['candidate']}'s procedure "
            f"({' + '.join(r['procedure'])}): {select_by} {fmt(ci['estimate'])} ({confidence:.0%} interval "
            f"{fmt(ci['low'])} to {fmt(ci['high'])}; mean of the folds {fmt(r['mean'])}, SD {fmt(r['fold_sd'])}); "
            f"it answers {QUESTIONS['cv']}.")


def log_to_mlflow(result: dict, run_ids: list[str]) -> None:
    from mlflow.tracking import MlflowClient

    client, m = MlflowClient(), result["select_by"]
    values = {f"cv_{m}_mean": result["mean"], f"cv_{m}_low": result["interval"]["low"],
              f"cv_{m}_high": result["interval"]["high"], f"cv_{m}_pooled": result["interval"]["estimate"],
              "cv_folds": result["folds"]}
    for run_id in run_ids:
        for key, value in values.items():
            if value is not None:
                client.log_metric(run_id, key, float(value))
        client.set_tag(run_id, "cv_answers", result["questions"]["cv"])


def run(params: Params, inputs: Inputs, outputs: Outputs) -> dict:
    from pipeline import tracking

    metrics = json.loads(inputs.metrics.read_text())
    chosen = metrics["best"]["architecture"]
    members = metrics["architectures"][chosen].get("members") or [chosen]
    missing = [m for m in members if m not in params.train.architectures]
    if missing:
        raise StageError(f"{inputs.metrics} chose {chosen}, whose procedure trains {missing[0]}, which is not in "
                         f"train.architectures: rerun evaluate")
    n = len(pool_rows(inputs.split, params.base.classes))
    if n >= params.cv.max_images:
        result = {"ran": False, "candidate": chosen, "images": n,
                  "reason": f"{n} train + val images, at least cv.max_images ({params.cv.max_images}): "
                            f"the test split alone is large enough"}
    else:
        quiet(tensorflow=True)  # only now: a skipped estimate does not pay TensorFlow's seconds of import
        result = estimate(params, inputs, chosen, members)
        tracking.setup(params.train.experiment)
        run_info = json.loads((Path(metrics["best"]["model"]).parent / "run.json").read_text())
        log_to_mlflow(result, [metrics["best"]["run_id"], run_info["parent_run_id"]])
    result["test"] = {"value": metrics["best"]["test_value"], "interval": metrics["best"]["test_interval"]}
    result["text"] = describe(result, params.evaluate.select_by, params.evaluate.confidence)
    outputs.report.parent.mkdir(parents=True, exist_ok=True)
    outputs.report.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    quiet()  # TensorFlow (silenced) is imported by run() only when the stage has work for it
    args = parser(__doc__, Inputs, Outputs).parse_args(argv)
    with one_line_errors("cv"):
        s = run(load_params(args.params), paths(Inputs, args), paths(Outputs, args))
    if not s["ran"]:
        print(f"cv: not run: {s['reason']}")
        return
    ci, t = s["interval"], s["test"]["interval"]
    print(f"cv: {s['candidate']}'s procedure, {s['folds']} grouped folds of {s['images']} train + val images: "
          f"{s['select_by']} {fmt(ci['estimate'])} ({s['confidence']:.0%} interval {fmt(ci['low'])} to "
          f"{fmt(ci['high'])}; fold mean {fmt(s['mean'])}); test split {fmt(s['test']['value'])} "
          f"({fmt(t['low'])} to {fmt(t['high'])})")


if __name__ == "__main__":
    main()
