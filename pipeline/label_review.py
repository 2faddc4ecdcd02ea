"""label_review: list images whose label looks wrong, for a clinician to check. Nothing is excluded.

Method: a frozen pretrained network (`label_review.architecture`) turns every image of split.csv
(train, val and test: a wrong test label corrupts evaluation too) into one feature vector; a
linear head (logistic regression on L2-normalized features) gives each image class probabilities
from a model fitted on the other folds, folds being made of whole duplicate groups so a near
copy of an image never helps score it; cleanlab's `find_label_issues` then flags the images
whose given label disagrees with those out-of-fold probabilities, ranked by self-confidence
(the probability of the given label: lowest first).

The output is a review list only: no stage reads it. A clinician fills its `correct_label` column
and `python -m pipeline.labels import` records the decisions in the corrections file people own;
no stage changes a label.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.console import progress, quiet
from pipeline import pixels
from pipeline.folds import grouped_folds
from pipeline.images import UnusableImage
from pipeline.params import LabelReview, Params, load_params
from pipeline.privacy import image_id
from pipeline.stage import StageError, one_line_errors, parser, paths
from pipeline.tables import read_split

CHUNK = 64      # images decoded and pushed through the network at once (bounds memory)
HEAD_C = 10.0   # inverse L2 strength of the linear head (on unit-length features); see `fit_head`
METHOD = ("Out-of-fold class probabilities from a logistic regression on L2-normalized frozen {arch} features "
          "({folds} folds by duplicate group), then cleanlab find_label_issues "
          "(prune_by_noise_rate, ranked by self-confidence).")


@dataclass(frozen=True)
class Inputs:
    raw: Path
    split: Path


@dataclass(frozen=True)
class Outputs:
    out: Path           # the review list (reports/label_issues.csv)
    sheet: Path         # its contact sheet
    report: Path


def review_rows(split_csv: Path, classes: tuple[str, ...]) -> pd.DataFrame:
    """Every row of split.csv (train, val and test); a row without a duplicate group is a group of its own."""
    table = read_split(split_csv, classes=classes)
    table["group_id"] = table.group_id.where(table.group_id != "", table.path)
    return table


def feature_extractor(params: LabelReview):
    """Raw RGB pixels (0..255) -> the frozen network's globally pooled features."""
    import keras

    from pipeline.models import WeightsUnavailable, build_base, get_arch, preprocessing_layers

    arch = get_arch(params.architecture)
    if arch.application is None or params.weights == "none":  # random features would flag noise
        raise WeightsUnavailable(f"label_review needs pretrained features: {params.architecture} with weights "
                                 f"{params.weights!r} has none (use an ImageNet architecture, weights: imagenet)")
    inputs = keras.Input((params.image_size, params.image_size, 3))
    x = inputs
    for layer in preprocessing_layers(arch.preprocess):
        x = layer(x)
    x = build_base(params.architecture, params.weights, params.image_size, params.alpha)(x, training=False)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


def load_chunk(cache: Path, shas: list[str], paths: list[Path], size: int) -> tuple[np.ndarray, dict[int, str]]:
    """Pixels of the readable images (in order, from the pixel cache) and, by position, why the others could not be read."""
    arrays, bad = [], {}
    for i, (sha, path) in enumerate(zip(shas, paths)):
        try:
            arrays.append(pixels.model_array(cache, sha, path, size))
        except (UnusableImage, OSError) as err:  # one bad file must not stop the review
            bad[i] = str(err)
    return np.stack(arrays) if arrays else np.empty((0, size, size, 3), np.uint8), bad


def extract_features(model, paths: list[Path], size: int, shas: list[str] | None = None,
                     cache: Path | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """One feature row per readable image, CHUNK images at a time; unreadable ones by index, with the reason."""
    rows, unreadable, shas = [], {}, shas or [""] * len(paths)
    for start in progress(range(0, len(paths), CHUNK), "label_review: features"):
        x, bad = load_chunk(cache, shas[start:start + CHUNK], paths[start:start + CHUNK], size)
        unreadable.update({start + i: reason for i, reason in bad.items()})
        if len(x):
            rows.append(np.asarray(model.predict_on_batch(x.astype("float32"))))
    return (np.concatenate(rows) if rows else np.empty((0, 0), np.float32)), unreadable


def fit_head(features: np.ndarray, labels: np.ndarray, seed: int):
    """Logistic regression on unit-length feature vectors.

    Not standardized: most pooled channels are zero for most images (about 75% of the values of
    MobileNetV2), and scaling a channel that fires on one image to unit variance lets the head
    memorize that image. On ISIC (150 to 2,359 images) and on the test images, standardized
    features gave worse out-of-fold log-loss at every C tried (1e-3 to 1; at 150 images worse than
    a uniform guess); unit-length rows with C=10 were the best or near-best everywhere."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    head = make_pipeline(Normalizer(), LogisticRegression(C=HEAD_C, max_iter=3000, random_state=seed))
    return head.fit(features, labels)


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, folds, n_classes: int,
                              seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities of each image from a head fitted without its fold, and whether the head
    had seen the image's own class (a class wholly inside one fold cannot be checked there)."""
    probs, seen = np.zeros((len(labels), n_classes)), np.zeros(len(labels), bool)
    for fit, score in folds:
        fitted = np.unique(labels[fit])
        if len(fitted) == 1:  # a one-class fold: that class, with certainty
            probs[np.ix_(score, fitted)] = 1.0
        else:
            head = fit_head(features[fit], labels[fit], seed)
            probs[np.ix_(score, head.classes_)] = head.predict_proba(features[score])
        seen[score] = np.isin(labels[score], fitted)
    return probs, seen


def find_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Indices of suspected label errors, most suspicious first. Classes nobody carries are left out
    of cleanlab's view (an empty class skews its noise estimates)."""
    from cleanlab.filter import find_label_issues

    present = np.unique(labels)
    if len(present) < 2:
        return np.array([], int)
    sub = probs[:, present]
    sub = sub / np.clip(sub.sum(1, keepdims=True), 1e-12, None)
    return np.asarray(find_label_issues(np.searchsorted(present, labels), sub, n_jobs=1,
                                        return_indices_ranked_by="self_confidence"), int)


def issue_table(table: pd.DataFrame, labels: np.ndarray, probs: np.ndarray, ranked: np.ndarray,
                classes: tuple[str, ...]) -> pd.DataFrame:
    """The flagged rows of `table` in rank order, with the suggested label and every class probability."""
    flagged = table.iloc[ranked].reset_index(drop=True)
    out = flagged[["path"] + (["sha256"] if "sha256" in table.columns else []) + ["label"]].copy()
    out["suggested_label"] = [classes[i] for i in probs[ranked].argmax(1)] if len(ranked) else []
    out["label_quality"] = probs[ranked, labels[ranked]].round(4) if len(ranked) else []
    for j, name in enumerate(classes):
        out[f"p_{name}"] = probs[ranked, j].round(4) if len(ranked) else []
    out["split"], out["group_id"] = flagged.split, flagged.group_id
    out["rank"] = np.arange(1, len(out) + 1)
    out["correct_label"] = ""  # for the clinician; `python -m pipeline.labels import` records filled cells
    return out


def summarize(table: pd.DataFrame, issues: pd.DataFrame, probs: np.ndarray, labels: np.ndarray, seen: np.ndarray,
              unreadable: dict[str, str], params: LabelReview, n_folds: int, classes) -> dict:
    from sklearn.metrics import balanced_accuracy_score

    pred, ok = probs.argmax(1)[seen], labels[seen]
    accuracy = round(float((pred == ok).mean()), 4) if seen.any() else None  # null, never NaN
    balanced = round(float(balanced_accuracy_score(ok, pred)), 4) if seen.any() else None
    return {
        "images": int(len(table) + len(unreadable)),
        "images_reviewed": int(seen.sum()),
        "not_checked": {"unreadable": unreadable,
                        "class_unseen_by_head": table.image[~seen].tolist()},
        "flagged": int(len(issues)),
        "flagged_share": round(len(issues) / max(1, int(seen.sum())), 4),
        "images_per_class": {c: int((table.label == c).sum()) for c in classes},
        "flagged_per_class": {c: int((issues.label == c).sum()) for c in classes},
        "flagged_per_split": {s: int((issues.split == s).sum()) for s in sorted(table.split.unique())},
        "head_out_of_fold_accuracy": accuracy,
        "head_out_of_fold_balanced_accuracy": balanced,
        "method": METHOD.format(arch=params.architecture, folds=n_folds),
        "features": {"architecture": params.architecture, "weights": params.weights,
                     "alpha": params.alpha, "image_size": params.image_size},
    }


def run(params: Params, inputs: Inputs, outputs: Outputs) -> dict:
    from pipeline.contact_sheet import draw_label_issue_sheet

    base, settings, raw_dir = params.base, params.label_review, inputs.raw
    table = review_rows(inputs.split, base.classes)
    features, bad = extract_features(feature_extractor(settings), [raw_dir / p for p in table.path],
                                     settings.image_size, pixels.shas_of(table), pixels.cache_dir(raw_dir))
    ids = [image_id(sha) if sha else f"row {i}" for i, sha in enumerate(pixels.shas_of(table))]  # never paths: committed
    unreadable = {ids[i]: reason for i, reason in sorted(bad.items())}
    table = table.assign(image=ids)
    table = table.drop(index=list(bad)).reset_index(drop=True)
    labels = table.label.map({c: i for i, c in enumerate(base.classes)}).to_numpy()
    folds = grouped_folds(labels, table.group_id.to_numpy(), settings.folds, base.seed)
    probs, seen = out_of_fold_probabilities(features, labels, folds, len(base.classes), base.seed)
    checked = np.flatnonzero(seen)
    ranked = checked[find_issues(labels[checked], probs[checked])]
    issues = issue_table(table, labels, probs, ranked, base.classes)
    for path in (outputs.out, outputs.sheet, outputs.report):
        path.parent.mkdir(parents=True, exist_ok=True)
    issues.to_csv(outputs.out, index=False)
    draw_label_issue_sheet(issues, raw_dir, settings.sheet_images, outputs.sheet)
    summary = summarize(table, issues, probs, labels, seen, unreadable, settings, len(folds), base.classes)
    outputs.report.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    quiet(tensorflow=True)  # before TensorFlow's first import: its start-up lines stay out of the log
    from pipeline.models import WeightsUnavailable

    args = parser(__doc__, Inputs, Outputs).parse_args(argv)
    with one_line_errors("label_review"):
        try:
            s = run(load_params(args.params), paths(Inputs, args), paths(Outputs, args))
        except WeightsUnavailable as err:
            raise StageError(f"{err} (label_review itself never runs on random weights)") from None
    per_class = ", ".join(f"{c} {n}" for c, n in s["flagged_per_class"].items())
    print(f"label_review: {s['flagged']} of {s['images_reviewed']} images flagged for label review ({per_class}); "
          f"out-of-fold head accuracy {s['head_out_of_fold_accuracy']}; nothing excluded; {args.out}")


if __name__ == "__main__":
    main()
