"""The shift check: cameras in the manifest, the reference table a registered version carries, the
"not checked" paths, the real stage on the demo images against a tiny champion in a SQLite registry
(a batch from another camera, with a colour cast and blur, is found; a batch like the reference is
not), and the requirement register draws from the report."""
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from pipeline import shift
from pipeline.images import camera
from tests.conftest import SMALL_DATA, data_stages, shrink_params
from tests.registry_store import empty_store  # noqa: F401  (fixture: a migrated MLflow database)

PHONE = {0x010F: "NewPhone", 0x0110: "NewPhone X1", 0xA431: "SN-0042", 0x9003: "2024:05:01 10:00:00"}


def strict_json(path: Path) -> dict:
    """The report as a strict parser reads it: NaN or Infinity fail."""
    def refuse(token):
        raise ValueError(f"{token} in {path.name}")
    return json.loads(path.read_text(), parse_constant=refuse)


def save_jpeg(image: Image.Image, path: Path, exif: dict | None = None) -> None:
    tags = Image.Exif()
    for tag, value in (exif or {}).items():
        tags[tag] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=92, **({"exif": tags} if exif else {}))


def test_camera_is_make_and_model_only(tmp_path):
    save_jpeg(Image.new("RGB", (80, 80), "pink"), tmp_path / "a.jpg", PHONE)
    save_jpeg(Image.new("RGB", (80, 80), "pink"), tmp_path / "b.jpg", {0x010F: b"Apple\x00", 0x0110: "iPhone 12 "})
    Image.new("RGB", (80, 80)).save(tmp_path / "c.png")
    (tmp_path / "d.jpg").write_bytes(b"not an image")
    assert camera(tmp_path / "a.jpg") == "NewPhone X1"  # the model repeats the make; no serial, no date
    assert camera(tmp_path / "b.jpg") == "Apple iPhone 12"
    assert camera(tmp_path / "c.png") == camera(tmp_path / "d.jpg") == ""


def test_validate_records_each_images_camera(tmp_path):
    from pipeline import validate
    from tests.conftest import shrunk

    params = shrunk(tmp_path)
    save_jpeg(Image.new("RGB", (80, 80), "pink"), tmp_path / "raw" / "normal" / "a.jpg", PHONE)
    Image.new("RGB", (80, 80)).save(tmp_path / "raw" / "normal" / "b.png")
    rows = [validate.describe_file(tmp_path / "raw", params.base, params.validate, (), Path("normal") / name)
            for name in ("a.jpg", "b.png")]
    assert [r["camera"] for r in rows] == ["NewPhone X1", ""]
    assert "SN-0042" not in json.dumps(rows)


class RecordingClient:
    def __init__(self):
        self.logged = {}

    def log_text(self, run_id, text, path):
        self.logged[(run_id, path)] = text


def test_the_reference_table_lists_each_content_once_with_its_camera(tmp_path):
    pd.DataFrame({"path": ["normal/a.jpg", "normal/a copy.jpg", "cancer/b.png"],
                  "label": ["normal", "normal", "cancer"],
                  "group_id": ["g1", "g1", ""], "split": ["train", "train", "test"],
                  "sha256": ["aa", "aa", "bb"]}).to_csv(tmp_path / "split.csv", index=False)
    pd.DataFrame({"path": ["normal/a.jpg", "cancer/b.png"], "sha256": ["aa", "bb"], "status": ["ok", "ok"],
                  "camera": ["NewPhone X1", ""]}).to_csv(tmp_path / "manifest.csv", index=False)
    client = RecordingClient()
    shift.log_reference(client, "run1", tmp_path / "split.csv", tmp_path / "manifest.csv")
    table = pd.read_csv(io.StringIO(client.logged[("run1", shift.REFERENCE_ARTIFACT)]), keep_default_na=False)
    assert list(table.columns) == shift.REFERENCE_COLUMNS and "path" not in table
    assert table.to_dict("records") == [{"sha256": "aa", "label": "normal", "split": "train", "camera": "NewPhone X1"},
                                        {"sha256": "bb", "label": "cancer", "split": "test", "camera": ""}]


# --- the register requirement ------------------------------------------------------------------------------------

SHIFTED = {"checked": True, "shifted": True, "p_value": 0.001, "summary": "SHIFT FOUND: 40 new images differ"}
CHAMPION = {"alias": "champion", "reason": "passes the clinical gates and there was no champion"}


def test_a_shift_makes_a_would_be_champion_wait_for_a_clinician():
    waits = shift.hold_for_shift(CHAMPION, SHIFTED, "approve")
    assert waits["alias"] == "awaiting_approval"
    assert "SHIFT FOUND" in waits["reason"] and waits["reason"].endswith("Waiting for a clinician's approval.")
    held = shift.hold_for_shift(CHAMPION, SHIFTED, "hold")
    assert held["alias"] == "challenger" and "shift.on_shift hold" in held["reason"]


@pytest.mark.parametrize("decision, report", [
    (CHAMPION, None),                                                      # the check has not run
    (CHAMPION, {"checked": False, "shifted": False, "p_value": None, "summary": "not checked: no champion yet"}),
    (CHAMPION, {**SHIFTED, "shifted": False}),
    ({"alias": "challenger", "reason": "fails the clinical gates"}, SHIFTED),  # nothing to hold back
])
def test_without_a_shift_or_a_promotion_the_decision_stands(decision, report):
    assert shift.hold_for_shift(decision, report, "approve") == decision


def test_an_approval_already_asked_for_names_the_shift_once():
    asked = {"alias": "awaiting_approval", "reason": "better. Waiting for a clinician's approval."}
    out = shift.hold_for_shift(asked, SHIFTED, "approve")
    assert out["alias"] == "awaiting_approval" and out["reason"].count("Waiting for") == 1 and "SHIFT" in out["reason"]


def test_the_report_page_and_the_prefect_artifact_show_the_result(tmp_path):
    from flows.artifacts import shift_line
    from pipeline.report import shift_section

    report = {**SHIFTED, "on_shift": "approve", "per_camera": {}, "per_class": {"cancer": {
        "checked": True, "new": 30, "reference": 40, "p_value": 0.002, "p_adjusted": 0.006,
        "classifier": {"auc": 0.91}, "against": "reference images of that class"}}}
    (tmp_path / "shift.json").write_text(json.dumps(report))
    sheet = tmp_path / "shift_atypical.png"
    assert "no contact sheet" in shift_line(tmp_path) and "not produced" in shift_section(report, sheet)
    Image.new("RGB", (20, 20)).save(sheet)
    page = shift_section(report, sheet)
    assert "SHIFT FOUND" in page and "data:image/png;base64" in page and "waits for a clinician" in page
    assert "class cancer" in page and "0.91" in page
    line = shift_line(tmp_path)
    assert "SHIFT FOUND" in line and "reports/shift_atypical.png" in line
    assert shift_line(tmp_path / "nowhere") == ""


# --- the stage, on the demo images, against a tiny champion --------------------------------------------------------

@pytest.fixture(scope="module")
def project(demo_raw, tmp_path_factory):
    """The demo images through the real validate/dedup/split; shift settings shrunk for speed."""
    from pipeline.params import load_params

    root = tmp_path_factory.mktemp("shift")
    shutil.copytree(demo_raw, root / "raw")
    params = load_params(shrink_params(root, **SMALL_DATA, shift={"permutations": 400, "sheet_images": 6}))
    data_stages(params, root / "raw", root)
    return root, params


@pytest.fixture
def client(empty_store, tmp_path, monkeypatch):  # noqa: F811
    from pipeline.registry.client import registry_client

    shutil.copy(empty_store, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return registry_client()


def make_champion(client, name: str, classes, folder: Path) -> str:
    """A tiny Keras classifier (random 3x3 convolutions, pooled) registered as @champion; returns its run id."""
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, kernel_initializer=keras.initializers.GlorotUniform(0))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(classes), activation="softmax")(x)
    artifacts = folder / "serving" / "artifacts"
    artifacts.mkdir(parents=True)
    keras.Model(inputs, outputs).save(artifacts / "model.keras")
    (artifacts / "metadata.json").write_text(json.dumps({"classes": list(classes), "image_size": 32}))
    run = client.create_run(client.create_experiment("shift-test")).info
    client.log_artifacts(run.run_id, str(folder / "serving"), "serving")
    client.create_registered_model(name)
    version = client.create_model_version(name, f"{run.artifact_uri}/serving", run_id=run.run_id).version
    client.set_registered_model_alias(name, "champion", version)
    return run.run_id


def run_shift(params, raw: Path, work: Path) -> dict:
    out = work / "out"
    report = shift.run(params, shift.Inputs(raw, work / "split.csv", work / "manifest.csv"),
                       shift.Outputs(out / "shift.json", out / "shift_atypical.png"))
    assert strict_json(out / "shift.json") == json.loads(json.dumps(report)) and (out / "shift_atypical.png").is_file()
    return report


def test_no_champion_is_not_checked(project, client):
    root, params = project
    report = run_shift(params, root / "raw", root)
    assert report["summary"].startswith("not checked: no champion yet")
    assert (report["checked"], report["shifted"], report["p_value"]) == (False, False, None)


def test_a_champion_without_reference_or_too_few_new_images_is_not_checked(project, client, tmp_path):
    root, params = project
    run_id = make_champion(client, params.register.model_name, params.base.classes, tmp_path)
    assert "has no reference table" in run_shift(params, root / "raw", root)["summary"]
    shift.log_reference(client, run_id, root / "split.csv", root / "manifest.csv")  # every image known already
    report = run_shift(params, root / "raw", root)
    assert report["summary"].startswith("not checked: 0 new images") and report["counts"]["new"] == 0


def test_a_batch_like_the_reference_is_not_a_shift(project, client, tmp_path):
    """Part of the demo images left out of the champion's reference: new to it, but from the same source."""
    root, params = project
    run_id = make_champion(client, params.register.model_name, params.base.classes, tmp_path)
    split = pd.read_csv(root / "split.csv", keep_default_na=False, dtype=str)
    left_out = split.drop_duplicates("sha256").sample(36, random_state=0).sha256
    split[~split.sha256.isin(left_out)].to_csv(tmp_path / "reference_split.csv", index=False)
    shift.log_reference(client, run_id, tmp_path / "reference_split.csv", root / "manifest.csv")
    report = run_shift(params, root / "raw", root)
    assert report["checked"] and report["counts"]["new"] == 36
    assert not report["shifted"] and report["p_value"] > params.shift.alpha


def test_a_new_camera_with_a_colour_cast_is_found(project, client, tmp_path):
    """The real stage on the demo images plus 36 new ones from 'another phone': warmer colours, softer focus."""
    from pipeline.demo import draw

    root, params = project
    run_id = make_champion(client, params.register.model_name, params.base.classes, tmp_path)
    shift.log_reference(client, run_id, root / "split.csv", root / "manifest.csv")
    raw, work, rng = tmp_path / "raw", tmp_path / "work", np.random.default_rng(7)
    shutil.copytree(root / "raw", raw)
    for label in params.base.classes:
        for i in range(12):
            pixels = np.asarray(draw(label, rng)) * np.array([1.25, 1.0, 0.75])
            photo = Image.fromarray(np.clip(pixels, 0, 255).astype("uint8")).filter(ImageFilter.GaussianBlur(2))
            save_jpeg(photo, raw / label / f"IMG_{label}_{i:04d}.jpg", PHONE)
    work.mkdir()
    for name in ("split.csv", "ledger.csv"):  # the ledger of the champion's data version
        shutil.copy(root / name, work / name)
    data_stages(params, raw, work)
    report = run_shift(params, raw, work)
    assert report["shifted"] and report["p_value"] < params.shift.alpha and report["counts"]["new"] == 36
    assert report["overall"]["classifier"]["auc"] > 0.9
    assert report["per_camera"]["NewPhone X1"]["shifted"] and report["summary"].startswith("SHIFT FOUND")
    assert all(r["shifted"] for r in report["per_class"].values())
    assert [a["camera"] for a in report["atypical"]] == ["NewPhone X1"] * 6
    text = (work / "out" / "shift.json").read_text()
    assert "IMG_" not in text and "SN-0042" not in text and "2024:05:01" not in text  # no file names, no metadata
    waits = shift.hold_for_shift(CHAMPION, shift.read_report(work / "out" / "shift.json"), params.shift.on_shift)
    assert waits["alias"] == "awaiting_approval" and "SHIFT FOUND" in waits["reason"]
