import numpy as np
import pandas as pd
from PIL import Image

from pipeline.augment import Inputs, Outputs, augment_image, plan, run
from pipeline.params import Augment
from tests.conftest import noise_image, shrunk, tree_digest

STILL = Augment(target_per_class=None, rotation=0, width_shift=0, height_shift=0, shear=0, zoom=0,
                horizontal_flip=False, brightness=(1.0, 1.0))


def test_zero_ranges_leave_the_image_unchanged():
    image = noise_image(1, (80, 60))
    out = augment_image(image, STILL, np.random.default_rng(0))
    assert np.abs(np.asarray(out, int) - np.asarray(image, int)).max() <= 1


def test_flip_is_a_mirror():
    image = noise_image(2, (64, 64))
    params = Augment(**{**vars(STILL), "horizontal_flip": True})
    rng = np.random.default_rng(1)  # first draw < 0.5: flipped
    flipped = [augment_image(image, params, np.random.default_rng(s)) for s in range(6)]
    mirror = np.asarray(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), int)
    assert any(np.abs(np.asarray(f, int) - mirror).max() <= 1 for f in flipped)
    assert rng is not None


def test_plan_balances_classes_from_train_sources_only():
    train = pd.DataFrame({"path": [f"a/{i}" for i in range(10)] + ["b/0", "b/1"],
                          "label": ["a"] * 10 + ["b"] * 2, "group_id": [f"g{i}" for i in range(12)]})
    todo = plan(train, None, seed=0)
    assert (todo.label == "b").sum() == 8 and (todo.label == "a").sum() == 0
    assert set(todo.source_path) <= {"b/0", "b/1"} and set(todo.group_id) <= {"g10", "g11"}
    assert len(plan(train, 12, seed=0)) == 2 + 10


def test_stage_augments_train_only_and_is_seeded(tmp_path):
    raw = tmp_path / "raw"
    rows = []
    for i, (label, split) in enumerate([("normal", "train")] * 4 + [("cancer", "train")] * 2 + [("cancer", "test")] * 3):
        (raw / label).mkdir(parents=True, exist_ok=True)
        noise_image(i).save(raw / label / f"{i}.png")
        rows.append({"path": f"{label}/{i}.png", "label": label, "group_id": f"g{i}", "split": split})
    pd.DataFrame(rows).to_csv(tmp_path / "split.csv", index=False)
    params = shrunk(tmp_path, augment={"target_per_class": 5})
    before = tree_digest(raw)
    stage = Inputs(raw, tmp_path / "split.csv"), Outputs(tmp_path / "aug", tmp_path / "aug.csv")
    summary = run(params, *stage)
    listing = pd.read_csv(tmp_path / "aug.csv")
    assert summary["per_class_after"] == {"normal": 5, "cancer": 5}
    assert set(listing.source_path) <= {"cancer/4.png", "cancer/5.png", "normal/0.png", "normal/1.png",
                                        "normal/2.png", "normal/3.png"}  # never a test image
    assert all((tmp_path / "aug" / p).is_file() for p in listing.path)
    first = tree_digest(tmp_path / "aug")
    run(params, *stage)
    assert tree_digest(tmp_path / "aug") == first and tree_digest(raw) == before


def test_balanced_train_split_writes_an_empty_output_and_true_counts(tmp_path):
    """Nothing to top up: the output folder still exists (DVC requires it) and the counts are the real ones."""
    raw = tmp_path / "raw"
    rows = []
    for i, label in enumerate(["normal", "cancer"] * 3):
        (raw / label).mkdir(parents=True, exist_ok=True)
        noise_image(i).save(raw / label / f"{i}.png")
        rows.append({"path": f"{label}/{i}.png", "label": label, "group_id": f"g{i}", "split": "train"})
    pd.DataFrame(rows).to_csv(tmp_path / "split.csv", index=False)
    params = shrunk(tmp_path, augment={"target_per_class": None})
    summary = run(params, Inputs(raw, tmp_path / "split.csv"), Outputs(tmp_path / "aug", tmp_path / "aug.csv"))
    assert summary["augmented"] == 0 and summary["per_class_after"] == {"normal": 3, "cancer": 3}
    assert (tmp_path / "aug").is_dir() and len(pd.read_csv(tmp_path / "aug.csv")) == 0
