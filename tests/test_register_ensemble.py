"""An ensemble chosen by validation goes through export and register like any architecture, and the
registry serves it (pipeline/ensemble.py; the colour project of tests/colour_project.py)."""
import json

import numpy as np
import yaml

from tests.colour_project import CLASSES, colour_model, project, register_again  # noqa: F401 (fixture)

# mean colour (0..1) -> class scores: each member takes one colour for another, mildly; their average is right
MEMBERS = {"Colourreds": np.array([[10, 0, 0], [4, 2, 0], [0, 0, 20]], "float32"),     # green taken for normal
           "Colourgreens": np.array([[2, 4, 0], [0, 10, 0], [0, 0, 20]], "float32")}  # red taken for precancer
TRAINED = {**MEMBERS, "Colourbad": np.zeros((3, 3), "float32")}  # always "normal": ranked last, left out of the top 2


def test_a_chosen_ensemble_is_exported_registered_and_served(project, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline import ensemble, evaluate, export, tracking
    from pipeline.inference import classify, load_classifier
    from pipeline.params import load_params
    from pipeline.streams import images_of, predict_rows
    from pipeline.tables import read_split
    from pipeline.train import write_val_probabilities

    root, params = project
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    spec = yaml.safe_load(params.read_text())
    spec["train"]["architectures"] = {name: {"weights": "none"} for name in TRAINED}
    spec["ensemble"] = {"top_k": 2}
    params.write_text(yaml.safe_dump(spec))
    loaded = load_params(params)
    tracking.setup("oralscan")
    with mlflow.start_run(run_name="pipeline") as parent:  # what the train stages leave behind (train.log_validation)
        for name, weights in TRAINED.items():
            with mlflow.start_run(run_name=name, nested=True) as child:
                pass
            folder = root / "models" / name
            folder.mkdir(parents=True)
            model = colour_model(name, weights)
            model.save(folder / "model.keras")
            val = images_of(read_split(root / "split.csv", "val", CLASSES), root / "raw", CLASSES, 32)
            write_val_probabilities(val.y, predict_rows(model.predict_on_batch, val), CLASSES, folder)
            (folder / "run.json").write_text(json.dumps({
                "architecture": name, "run_id": child.info.run_id, "parent_run_id": parent.info.run_id,
                "image_size": 32, "classes": CLASSES, "data_version": "test", "git_commit": "test"}))

    built = ensemble.run(loaded, ensemble.Inputs(raw=root / "raw", split=root / "split.csv", models=root / "models"),
                         ensemble.Outputs(out=root / "ensemble"))
    assert sorted(built["members"]) == sorted(MEMBERS)
    reports = root / "reports"
    for d in ("fig", "confusion"):
        (reports / d).mkdir(exist_ok=True)
    summary = evaluate.run(loaded, evaluate.Inputs(raw=root / "raw", split=root / "split.csv", models=root / "models",
                                                   ensemble=root / "ensemble"),
                           evaluate.Outputs(metrics=reports / "metrics.json", leaderboard=reports / "board.csv",
                                            figures=reports / "fig", plots=reports / "confusion"))
    val = {name: r["val"]["balanced_accuracy"] for name, r in summary["architectures"].items()}
    assert summary["best"]["architecture"] == "ensemble" and val["ensemble"] == 1.0
    assert max(val[name] for name in TRAINED) < 0.7  # each model alone misses a class
    export.run(loaded, export.Inputs(raw=root / "raw", split=root / "split.csv", metrics=reports / "metrics.json"),
               export.Outputs(out=root / "export", report=reports / "export.json",
                              operating_point=reports / "operating_point.json", figure=reports / "operating_point.png"))
    variants = json.loads((reports / "export.json").read_text())["variants"]
    assert variants["float32"]["accepted"], variants["float32"]["reason"]

    result = register_again(root, loaded)
    assert result["alias"] == "champion", result["reason"]
    version = MlflowClient().get_model_version("oralscan-classifier", str(result["version"]))
    assert version.tags["architecture"] == "ensemble" and version.tags["members"] == ",".join(built["members"])
    assert "the probability average of " + " + ".join(built["members"]) in (reports / "model_card.md").read_text()
    served = load_classifier("models:/oralscan-classifier@champion")  # what deployment reads
    answers = classify(served, [root / "raw" / label / "0.png" for label in CLASSES])
    assert [a["class"] for a in answers] == CLASSES
    assert answers[2]["refer"] and not answers[0]["refer"]  # the operating point ships with it (cancer refers)
