"""train@<arch>: transfer learning in two phases, every run logged to MLflow.

Phase 1 trains the head on the frozen base; phase 2 unfreezes the top `finetune_layers`
layers of the base at a lower learning rate. A frozen layer computes the same output for
the same image every epoch (augmentation is offline and BatchNorm runs in inference mode),
so the frozen part runs once per image and its output is cached; only the trainable part
trains, on the cache (a file: pipeline/streams.py). `fit_plain` is the ordinary `model.fit` on
images it is tested against. Images come from the pixel cache a batch at a time, so memory does
not grow with the number of images.
An architecture with `weights: none` has nothing frozen and trains end to end; one with
`head: linear` is a probe (pipeline/probe.py): no gradient training, a logistic regression on the
frozen features written into its Dense layer.
"""
from __future__ import annotations

import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import pixels
from pipeline.console import quiet
from pipeline.models import Parts, build_model, get_arch
from pipeline.params import Params, Train, load_params
from pipeline.probe import fit_probe
from pipeline.stage import StageError, one_line_errors, parser, paths
from pipeline.streams import CHUNK, Images, batches, predict_rows, to_file
from pipeline.tables import read_split


@dataclass(frozen=True)
class Inputs:
    raw: Path
    augmented: Path     # augment's images
    split: Path
    augmented_csv: Path  # augment's listing of them


@dataclass(frozen=True)
class Outputs:
    out: Path           # models/<arch>: model.keras, history.csv, run.json, validation confusion
    metrics: Path


def read_sets(raw: Path, augmented: Path, split_csv: Path, augmented_csv: Path, classes, size: int) -> dict:
    """The train set (with its augmented images) and the val set, read from the pixel cache a batch at a time."""
    train, val = (read_split(split_csv, s, classes) for s in ("train", "val"))
    extra = pd.read_csv(augmented_csv, keep_default_na=False, dtype=str)  # group ids as split.csv's: text
    index, cache = {c: i for i, c in enumerate(classes)}, pixels.cache_dir(raw)
    groups = [g or p for g, p in zip(train.group_id, train.path)] + [g or p for g, p in zip(extra.group_id,
                                                                                              extra.source_path)]
    return {"train_groups": np.array(groups, dtype=object),  # an augmented image is in its source's group
            "train_originals": len(train),  # the split's own images come first, augment's copies after them
            "train": Images([raw / p for p in train.path] + [augmented / p for p in extra.path],
                            pixels.shas_of(train) + [""] * len(extra),
                            np.array([index[c] for c in list(train.label) + list(extra.label)], dtype=int), size, cache),
            "val": Images([raw / p for p in val.path], pixels.shas_of(val), np.array([index[c] for c in val.label], dtype=int),
                          size, cache)}


def class_weights(y: np.ndarray, n: int) -> dict[int, float]:
    counts = np.bincount(y, minlength=n)
    return {i: float(len(y) / (n * c)) for i, c in enumerate(counts) if c}


def find_cut(base, n_layers: int) -> int:
    """Index of the last frozen layer: at least n_layers above it, and one tensor crossing the cut."""
    import keras

    for cut in range(len(base.layers) - 1 - n_layers, 0, -1):
        try:
            keras.Model(base.layers[cut].output, base.output)
            return cut
        except ValueError:  # a skip connection crosses here: the top would need a second input
            continue
    return 0


def set_trainable(base, cut: int) -> None:
    """Unfreeze layers above `cut`; BatchNorm layers stay frozen (small data, inference statistics)."""
    import keras

    base.trainable = True
    for i, layer in enumerate(base.layers):
        layer.trainable = i > cut and not isinstance(layer, keras.layers.BatchNormalization)


def callbacks(params: Train, log) -> list:
    import keras

    return [keras.callbacks.EarlyStopping("val_loss", patience=params.early_stopping_patience, restore_best_weights=True),
            keras.callbacks.ReduceLROnPlateau("val_loss", factor=params.reduce_lr_factor,
                                              patience=params.reduce_lr_patience, min_lr=1e-7),
            keras.callbacks.LambdaCallback(on_epoch_end=log)]


def reset_optimizer(optimizer, lr: float) -> None:
    """The optimizer as a new one: no steps, zero moments, learning rate `lr` (ReduceLROnPlateau lowers it)."""
    for variable in optimizer.variables:
        variable.assign(np.zeros(variable.shape, variable.dtype))
    optimizer.learning_rate = lr


def compile_fit(model, train, val, params: Train, lr: float, epochs: int, weights, log, again: bool = False):
    """fit on row sources a batch at a time, train rows reshuffled every epoch from the run's seed.
    `again`: the model's trainable layers are those it was compiled with, if it was: its optimizer is reset
    instead of a new compile, so TensorFlow's traced training step is reused (cross-validation's folds)."""
    import keras

    seed = random.randrange(2**31)  # python's generator, seeded by keras.utils.set_random_seed in run()
    if again and model.compiled:
        reset_optimizer(model.optimizer, lr)
    else:
        model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    return model.fit(batches(train, params.batch_size, seed), validation_data=batches(val, CHUNK), epochs=epochs,
                     class_weight=weights, shuffle=False, verbose=0, callbacks=callbacks(params, log))


def finetunes(params: Train) -> bool:
    return params.finetune_epochs > 0 and params.finetune_layers > 0


def stack(layers, x):
    for layer in layers:
        x = layer(x)
    return x


def split_base(parts: Parts, cut: int | None):
    """front: pixels -> activations at the cut (frozen, run once); top: activations -> base output, or None."""
    import keras

    base, pixels = parts.base, keras.Input(parts.model.input.shape[1:])
    if cut is None:
        return keras.Model(pixels, base(stack(parts.prep, pixels), training=False)), None
    bottom = keras.Model(base.input, base.layers[cut].output)
    front = keras.Model(pixels, bottom(stack(parts.prep, pixels), training=False))
    return front, keras.Model(base.layers[cut].output, base.output)


@dataclass
class Cached:
    """The models of cached training, all sharing the parts' layers: front maps pixels to the frozen activations
    (at the fine-tuning cut, or the base's output when nothing is fine-tuned; the same for every model built
    with the same pretrained weights), pooled maps those to phase 1's features, head trains on the features
    (phase 1), full maps the activations to probabilities (phase 2)."""
    front: object
    pooled: object
    head: object
    full: object
    cut: int | None
    finetune_layers: int | None  # what the cut was found for (None: nothing fine-tuned)


def cached_models(parts: Parts, params: Train) -> Cached:
    """The parts' Cached models: built once, kept on the parts (a second fit of the same parts reuses them)."""
    import keras

    parts.base.trainable = False
    layers = params.finetune_layers if finetunes(params) else None
    if parts.cached is None or parts.cached.finetune_layers != layers:  # other settings: other models
        cut = find_cut(parts.base, layers) if layers else None
        front, top = split_base(parts, cut)
        cached = keras.Input(front.output.shape[1:])
        below = top(cached, training=False) if top else cached
        pooled = keras.Model(cached, parts.head[0](below))
        features = keras.Input(pooled.output.shape[1:])
        parts.cached = Cached(front, pooled, keras.Model(features, stack(parts.head[1:], features)),
                              keras.Model(cached, stack(parts.head, below)), cut, layers)
    return parts.cached


def fit_cached(parts: Parts, data: dict, params: Train, weights, log) -> None:
    """Both phases, with everything frozen computed once per image (`data["<split>_frozen"]` and
    `data["<split>_pooled"]`, when given, are front's and pooled's outputs already: cached_models).

    The frozen bottom runs once up to the fine-tuning cut, its activations kept in a file; phase 1
    gets its features by running only the small top on those activations, phase 2 trains the top
    on them. Memory holds one batch, whatever the number of images.
    """
    m = cached_models(parts, params)
    with tempfile.TemporaryDirectory(prefix="train-rows-") as tmp:
        a, av = (data[f"{k}_frozen"] if f"{k}_frozen" in data else  # cross-validation: computed once for all folds
                 to_file(m.front, data[k], Path(tmp) / f"{k}.act", f"train: frozen part ({k})") for k in ("train", "val"))
        f, fv = (data[f"{k}_pooled"] if f"{k}_pooled" in data else to_file(m.pooled, z, Path(tmp) / f"{k}.features")
                 for k, z in (("train", a), ("val", av)))
        compile_fit(m.head, f, fv, params, params.head_learning_rate, params.head_epochs, weights, log("head"),
                    again=True)
        if m.cut is None:
            return
        set_trainable(parts.base, m.cut)
        compile_fit(m.full, a, av, params, params.finetune_learning_rate, params.finetune_epochs, weights,
                    log("finetune"), again=True)


def fit_plain(parts: Parts, data: dict, params: Train, weights, log) -> None:
    """The same two phases with plain `model.fit` on images: the reference for fit_cached."""
    model, base = parts.model, parts.base
    base.trainable = False
    compile_fit(model, data["train"], data["val"], params, params.head_learning_rate, params.head_epochs,
                weights, log("head"))
    if not finetunes(params):
        return
    set_trainable(base, find_cut(base, params.finetune_layers))
    compile_fit(model, data["train"], data["val"], params, params.finetune_learning_rate, params.finetune_epochs,
                weights, log("finetune"))


def fit_scratch(parts: Parts, data: dict, params: Train, weights, log) -> None:
    """Nothing is pretrained, so nothing is frozen: the whole network trains in one phase."""
    parts.base.trainable = True
    compile_fit(parts.model, data["train"], data["val"], params, params.head_learning_rate,
                params.head_epochs + params.finetune_epochs, weights, log("scratch"), again=True)


def fit_model(parts: Parts, data: dict, spec, settings: Train, weights, log, seed: int) -> dict:
    """An architecture's whole training procedure (what cross-validation repeats); what it chose, if anything."""
    if spec.head == "linear":
        return fit_probe(parts, data, settings, weights, log, seed)
    (fit_scratch if spec.weights == "none" else fit_cached)(parts, data, settings, weights, log)
    return {}


def log_run_params(mlflow, name: str, spec, size: int, params: Train, seed: int, data: dict) -> None:
    resolved = {k: v for k, v in vars(params).items() if k != "architectures"}
    mlflow.log_params({"architecture": name, "network": spec.base or name, "head": spec.head,
                       "weights": spec.weights, "alpha": spec.alpha, "image_size": size,
                       "seed": seed, "train_images": len(data["train"]), "val_images": len(data["val"]),
                       **resolved})


VAL_PROBABILITIES = "val_probabilities.csv"  # beside model.keras: what the ensemble stage ranks the models by


def write_val_probabilities(y: np.ndarray, probs: np.ndarray, classes, out_dir: Path) -> None:
    """The model's probabilities on the val split, in split.csv's order (label and p_<class> only: no paths)."""
    table = pd.DataFrame(probs, columns=[f"p_{c}" for c in classes])
    table.insert(0, "label", [classes[i] for i in y])
    table.to_csv(out_dir / VAL_PROBABILITIES, index=False)


def read_val_probabilities(out_dir: Path, classes) -> tuple[np.ndarray, np.ndarray]:
    table = pd.read_csv(out_dir / VAL_PROBABILITIES, keep_default_na=False)
    return np.array([list(classes).index(c) for c in table.label]), table[[f"p_{c}" for c in classes]].to_numpy()


def log_validation(mlflow, model, data: dict, classes, out_dir: Path) -> dict:
    """Validation accuracy and confusion matrix (PNG and JSON) of the assembled model, on images."""
    from sklearn.metrics import balanced_accuracy_score

    from pipeline.confusion import confusion, write_confusion_json, write_confusion_png

    yv = data["val"].y
    probs = predict_rows(lambda x: model.predict_on_batch(x), data["val"])
    write_val_probabilities(yv, probs, classes, out_dir)
    pred = probs.argmax(1)
    matrix = confusion(yv, pred, len(classes))
    write_confusion_png(matrix, classes, f"{model.name}: validation", out_dir / "val_confusion.png")
    write_confusion_json(yv, pred, classes, out_dir / "val_confusion.json")
    (out_dir / "val_confusion_matrix.json").write_text(json.dumps({"classes": list(classes), "matrix": matrix.tolist()}))
    for f in ("val_confusion.png", "val_confusion.json", "val_confusion_matrix.json"):
        mlflow.log_artifact(str(out_dir / f))
    scores = {"val_accuracy_final": float((pred == yv).mean()),
              "val_balanced_accuracy": float(balanced_accuracy_score(yv, pred))}
    mlflow.log_metrics(scores)
    return scores


def fit_and_save(mlflow, parts: Parts, data: dict, spec, settings: Train, weights, classes, out_dir: Path,
                 seed: int = 0) -> dict:
    """Train in the active MLflow run; save the model and its history in out_dir; what it took and scored."""
    from pipeline.tracking import History

    history, start = History(mlflow), time.perf_counter()
    extra = fit_model(parts, data, spec, settings, weights, history, seed)
    if "probe_c" in extra:
        mlflow.log_params({"probe_c_chosen": extra["probe_c"]})
    seconds = time.perf_counter() - start
    parts.model.save(out_dir / "model.keras")
    pd.DataFrame(history.rows).to_csv(out_dir / "history.csv", index=False)
    return {"training_seconds": round(seconds, 2), "epochs": len(history.rows),
            "params": int(parts.model.count_params()),
            "trainable_params": int(sum(np.prod(w.shape) for w in parts.model.trainable_weights)),
            "model_bytes": (out_dir / "model.keras").stat().st_size, **extra,
            **log_validation(mlflow, parts.model, data, classes, out_dir)}


def run(params: Params, inputs: Inputs, outputs: Outputs, name: str) -> dict:
    """Train architecture `name` of train.architectures."""
    import keras
    import mlflow
    import tensorflow as tf

    from pipeline import tracking

    base_p, settings, out_dir = params.base, params.train, outputs.out
    if name not in settings.architectures:
        raise StageError(f"{name} is not in train.architectures ({', '.join(settings.architectures)})")
    spec = settings.architectures[name]
    network = spec.base or name  # a probe's entry names its network as `base`
    size = spec.image_size or get_arch(network).size
    keras.utils.set_random_seed(base_p.seed)
    tf.config.experimental.enable_op_determinism()
    parts = build_model(network, len(base_p.classes), spec.weights, size, spec.alpha, settings.dropout, settings.l2,
                        base_p.seed, head=spec.head, title=name)
    data = read_sets(inputs.raw, inputs.augmented, inputs.split, inputs.augmented_csv, base_p.classes, size)
    weights = class_weights(data["train"].y, len(base_p.classes)) if settings.class_weights else None
    experiment = tracking.setup(settings.experiment)
    lineage = {"data_version": tracking.data_version(), "git_commit": tracking.git_commit()}
    key = tracking.pipeline_key(inputs.split, inputs.augmented_csv, params_section=repr(settings))
    out_dir.mkdir(parents=True, exist_ok=True)
    with mlflow.start_run(run_id=tracking.parent_run(experiment, key, lineage)) as parent, \
            mlflow.start_run(run_name=f"{name} data {lineage['data_version'][:8]}", nested=True, experiment_id=experiment,
                             tags={"architecture": name, **lineage}) as child:
        log_run_params(mlflow, name, spec, size, settings, base_p.seed, data)
        summary = fit_and_save(mlflow, parts, data, spec, settings, weights, base_p.classes, out_dir, base_p.seed)
        mlflow.log_metrics({k: v for k, v in summary.items() if k != "epochs"})
        mlflow.log_artifact(str(out_dir / "history.csv"))
        tracking.log_keras_model(parts.model, data["val"].read([0]).astype("float32"))
        info = {"architecture": name, "run_id": child.info.run_id, "parent_run_id": parent.info.run_id,
                "experiment_id": experiment, "image_size": size, "classes": list(base_p.classes), **lineage}
    (out_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    outputs.metrics.parent.mkdir(parents=True, exist_ok=True)
    outputs.metrics.write_text(json.dumps(summary, indent=2) + "\n")
    return {**summary, **info}


def main(argv: list[str] | None = None) -> None:
    quiet(tensorflow=True)  # before TensorFlow's first import: its start-up lines stay out of the log
    from pipeline.models import WeightsUnavailable

    cli = parser(__doc__, Inputs, Outputs)
    cli.add_argument("--arch", required=True, help="an architecture of train.architectures")
    args = cli.parse_args(argv)
    with one_line_errors(f"train@{args.arch}"):
        try:
            s = run(load_params(args.params), paths(Inputs, args), paths(Outputs, args), args.arch)
        except (WeightsUnavailable, ValueError) as err:  # no weights file, an unknown architecture, data Keras refuses
            raise StageError(str(err)) from None
    how = f"C {s['probe_c']:g} chosen by grouped CV" if "probe_c" in s else f"{s['epochs']} epochs"
    print(f"train@{args.arch}: val balanced accuracy {s['val_balanced_accuracy']:.3f} "
          f"in {s['training_seconds']:.0f}s ({how}); MLflow run {s['run_id']}")


if __name__ == "__main__":
    main()
