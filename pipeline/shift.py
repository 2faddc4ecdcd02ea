"""shift: do this data version's new images look like the ones the champion was trained and checked on?

The operating point's guarantee holds for photos like the calibration photos. When register
registers a version it logs that version's reference table to the version's MLflow run
(`reference/reference.csv`: sha256, label, split and camera of every image of split.csv at that
data version). This stage compares the images of the current data version that are not in the
champion's reference (new content, by sha256) with the champion's reference images, in the
champion's own embedding space (the input of its last Dense layer), with two tests
(pipeline/two_sample.py): a kernel test (MMD) and a classifier test (grouped cross-validated AUC),
each with a permutation p-value by duplicate group, combined by Bonferroni. The overall test
decides; per class and per camera (EXIF make and model, from validate's manifest) the same tests
say where a shift shows, Holm-adjusted, and count only once the overall test found one.

No champion, a champion registered before reference tables, or too few new images: the report
says "not checked: <why>" and the run goes on. register reads the report: a version that would
become champion after a shift waits for a clinician (`shift.on_shift: approve`) or stays
challenger (`hold`).
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.console import quiet
from pipeline.params import Params, load_params
from pipeline.stage import one_line_errors, parser, paths
from pipeline.tables import read_split

REFERENCE_ARTIFACT = "reference/reference.csv"
REFERENCE_COLUMNS = ["sha256", "label", "split", "camera"]


@dataclass(frozen=True)
class Inputs:
    raw: Path
    split: Path
    manifest: Path      # validate's manifest: each image's camera


@dataclass(frozen=True)
class Outputs:
    report: Path        # reports/shift.json
    sheet: Path         # the most atypical new images


class NotChecked(Exception):
    """Nothing to compare (no champion, no reference, too few images); the message says why."""


def current_images(split_csv: Path, manifest: Path | None) -> pd.DataFrame:
    """One row per content of split.csv (every split) with its group and camera ('' when unknown)."""
    table = read_split(split_csv).drop_duplicates("sha256").reset_index(drop=True)
    table["group_id"] = table.group_id.where(table.group_id != "", table.path)
    cameras = {}
    if manifest is not None and manifest.is_file():
        listed = pd.read_csv(manifest, keep_default_na=False, dtype=str)
        if "camera" in listed:
            cameras = dict(zip(listed.sha256, listed.camera))
    table["camera"] = [cameras.get(sha, "") for sha in table.sha256]
    return table


def log_reference(client, run_id: str, split_csv: Path, manifest: Path | None) -> None:
    """The reference table of a registered version, logged to its run: what a later shift check compares with."""
    table = current_images(split_csv, manifest)[REFERENCE_COLUMNS]
    client.log_text(run_id, table.to_csv(index=False), REFERENCE_ARTIFACT)


def read_report(path: Path | None) -> dict | None:
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def hold_for_shift(decision: dict, report: dict | None, on_shift: str) -> dict:
    """A decision to make a version champion, turned into a wait for a clinician (approve) or into
    challenger (hold) when the shift check found a shift; any other decision unchanged."""
    if not report or not report.get("shifted") or decision["alias"] not in ("champion", "awaiting_approval"):
        return decision
    why = f"Shift check: {report.get('summary', 'the new images differ from the champion reference images')}."
    if on_shift == "hold":
        return {**decision, "alias": "challenger", "reason": f"{decision['reason']} Held as challenger (shift.on_shift "
                                                             f"hold). {why}"}
    if decision["alias"] == "awaiting_approval":  # a clinician signs off anyway (register.require_approval)
        return {**decision, "reason": f"{decision['reason']} {why}"}
    return {**decision, "alias": "awaiting_approval",
            "reason": f"{decision['reason']} {why} Waiting for a clinician's approval."}


def champion_reference(client, name: str) -> tuple[dict, pd.DataFrame]:
    """The champion (version, run, data version) and its reference table; NotChecked when there is none."""
    from pipeline.registry.client import alias_version

    version = alias_version(client, name)
    if version is None:
        raise NotChecked(f"no champion yet: nothing to compare the images with ({name} has no @champion)")
    mv = client.get_model_version(name, version)
    champion = {"version": int(version), "data_version": mv.tags.get("data_version", "")}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(mv.run_id, REFERENCE_ARTIFACT, tmp)
            reference = pd.read_csv(local, keep_default_na=False, dtype=str)
    except Exception:  # no run, or a version registered before reference tables
        raise NotChecked(f"champion v{version} has no reference table (registered before the shift check); "
                         "the next version registered gets one") from None
    return champion, reference


def embedder(classifier):
    """Pixels in, the input of the champion's last Dense layer out (its penultimate features)."""
    import keras

    model = classifier.keras_model
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]
    return keras.Model(model.inputs, dense.input)


def embed(classifier, rows: pd.DataFrame, raw: Path, classes) -> np.ndarray:
    from pipeline.streams import images_of, predict_rows

    model = embedder(classifier)
    return predict_rows(model.predict_on_batch, images_of(rows, raw, classes, classifier.size), "shift: embeddings")


def subgroups(new: pd.DataFrame, ref: pd.DataFrame, classes, least: int):
    """(kind, name, new index, reference index, compared against) of each class and camera; index None: too few."""
    for c in classes:
        n, r = np.flatnonzero(new.label == c), np.flatnonzero(ref.label == c)
        yield "per_class", c, (n, r) if min(len(n), len(r)) >= least else None, "reference images of that class"
    if new.camera.nunique() == 1 and set(ref.camera) <= set(new.camera):
        return  # one camera everywhere: the overall test is the per-camera test
    for cam in sorted(new.camera.unique()):
        n, r = np.flatnonzero(new.camera == cam), np.flatnonzero(ref.camera == cam)
        against = "reference images of that camera"
        if len(r) < least:  # a camera the reference does not know: compared with the whole reference
            r, against = np.arange(len(ref)), "all reference images (camera new, or rare in the reference)"
        yield "per_camera", cam or "unknown", (n, r) if len(n) >= least else None, against


def sample(table: pd.DataFrame, most: int, rng) -> pd.DataFrame:
    keep = np.sort(rng.choice(len(table), most, replace=False)) if len(table) > most else np.arange(len(table))
    return table.iloc[keep].reset_index(drop=True)


def compare_groups(new, ref, new_x, ref_x, settings, classes, rng, overall: dict) -> dict:
    """Each class and camera with enough images on both sides, Holm-adjusted over all of them. Each gets enough
    permutations that its Holm-adjusted p-value can fall below alpha (2 x tests / alpha)."""
    from pipeline.two_sample import compare, holm

    out, found = {"per_class": {}, "per_camera": {}}, list(subgroups(new, ref, classes, settings.min_group_images))
    tested = [(kind, name, idx, against) for kind, name, idx, against in found if idx is not None]
    permutations = max(settings.permutations, math.ceil(2 * len(tested) / settings.alpha) + 1)
    for kind, name, _, _ in found:
        out[kind][name] = {"checked": False, "reason": f"fewer than {settings.min_group_images} images on a side"}
    for kind, name, (n, r), against in tested:
        groups = np.concatenate([ref.group_id.to_numpy()[r], new.group_id.to_numpy()[n]])
        out[kind][name] = {**compare(ref_x[r], new_x[n], groups, permutations, rng)[0], "checked": True,
                           "against": against}
    results = [out[kind][name] for kind, name, _, _ in tested]
    for result, adjusted in zip(results, holm([r["p_value"] for r in results]) if results else []):
        result.update(p_adjusted=adjusted, shifted=bool(overall["shifted"] and adjusted < settings.alpha))
    return out


def check(params: Params, current: pd.DataFrame, raw: Path) -> tuple[dict, pd.DataFrame]:
    """The shift report and the atypical new images; NotChecked when there is nothing to compare."""
    from pipeline.inference import load_classifier
    from pipeline.registry.client import registry_client
    from pipeline.two_sample import compare

    settings, name, classes = params.shift, params.register.model_name, params.base.classes
    client = registry_client()
    champion, reference = champion_reference(client, name)
    known = set(reference.sha256)
    new_all, ref_all = current[~current.sha256.isin(known)], current[current.sha256.isin(known)]
    counts = {"images": len(current), "new": len(new_all), "reference": len(reference),
              "reference_in_data": len(ref_all)}
    if len(new_all) < settings.min_new_images:
        raise NotChecked(f"{len(new_all)} new images since champion v{champion['version']}'s data "
                         f"(at least {settings.min_new_images} needed)", counts)
    if len(ref_all) < settings.min_new_images:
        raise NotChecked(f"only {len(ref_all)} of champion v{champion['version']}'s {len(reference)} reference "
                         "images are in this data version", counts)
    rng = np.random.default_rng(params.base.seed)
    new, ref = sample(new_all, settings.max_new, rng), sample(ref_all, settings.max_reference, rng)
    quiet(tensorflow=True)  # only now: without a champion or new images the stage does not pay TensorFlow's import
    classifier = load_classifier(f"models:/{name}/{champion['version']}")
    new_x, ref_x = embed(classifier, new, raw, classes), embed(classifier, ref, raw, classes)
    groups = np.concatenate([ref.group_id.to_numpy(), new.group_id.to_numpy()])
    overall, witness = compare(ref_x, new_x, groups, settings.permutations, rng)
    overall["shifted"] = bool(overall["p_value"] < settings.alpha)
    report = {"checked": True, "shifted": overall["shifted"], "p_value": overall["p_value"], "alpha": settings.alpha,
              "champion": champion, "counts": {**counts, "new_tested": len(new), "reference_tested": len(ref)},
              "overall": overall, **compare_groups(new, ref, new_x, ref_x, settings, classes, rng, overall),
              "embedding": {"layer": "input of the champion's last Dense layer", "dims": int(new_x.shape[1])}}
    report["summary"] = summary(report)
    atypical = new.assign(witness=witness).sort_values("witness", ascending=False, kind="stable")
    atypical = atypical.head(settings.sheet_images).reset_index(drop=True)
    return report, atypical.assign(rank=np.arange(1, len(atypical) + 1))


def summary(report: dict) -> str:
    """The result in words."""
    o, where = report["overall"], [f"{kind.split('_')[1]} {name}" for kind in ("per_class", "per_camera")
                                   for name, r in report[kind].items() if r.get("shifted")]
    words = (f"SHIFT FOUND: {o['new']} new images differ from {o['reference']} of champion "
             f"v{report['champion']['version']}'s reference images" if report["shifted"] else
             f"no shift found: {o['new']} new images are compatible with {o['reference']} of champion "
             f"v{report['champion']['version']}'s reference images")
    return (f"{words} (p = {o['p_value']:.4g}, alpha {report['alpha']}; kernel test p = {o['mmd']['p_value']:.4g}, "
            f"classifier AUC {o['classifier']['auc']:.3f} p = {o['classifier']['p_value']:.4g})"
            + (f"; shows in {', '.join(where)}" if where else ""))


def clean(value):
    """JSON-safe: numpy numbers as Python ones, NaN and infinities as null."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return round(float(value), 6) if math.isfinite(value) else None
    return value


def run(params: Params, inputs: Inputs, outputs: Outputs) -> dict:
    from pipeline.contact_sheet import draw_shift_sheet

    current = current_images(inputs.split, inputs.manifest)
    try:
        report, atypical = check(params, current, inputs.raw)
    except NotChecked as why:
        report = {"checked": False, "shifted": False, "p_value": None, "alpha": params.shift.alpha,
                  "summary": f"not checked: {why.args[0]}", "counts": why.args[1] if len(why.args) > 1 else {}}
        atypical = current.head(0).assign(rank=[], witness=[])
    report["on_shift"] = params.shift.on_shift
    report["atypical"] = [{"rank": r.rank, "sha256": r.sha256[:12], "label": r.label, "camera": r.camera,
                           "witness": r.witness} for r in atypical.itertuples()]  # content ids, never file names
    for path in (outputs.report, outputs.sheet):
        path.parent.mkdir(parents=True, exist_ok=True)
    report = clean(report)
    outputs.report.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    draw_shift_sheet(atypical, inputs.raw, report["summary"], outputs.sheet)
    return report


def main(argv: list[str] | None = None) -> None:
    quiet()  # TensorFlow (silenced) is imported by check() only when there is a champion to compare with
    from pipeline.registry.client import RegistryUnavailable
    from pipeline.stage import StageError

    args = parser(__doc__, Inputs, Outputs).parse_args(argv)
    with one_line_errors("shift"):
        try:
            report = run(load_params(args.params), paths(Inputs, args), paths(Outputs, args))
        except RegistryUnavailable as err:
            raise StageError(f"{err}; nothing was checked") from None
    print(f"shift: {report['summary']}; {args.report}")


if __name__ == "__main__":
    main()
