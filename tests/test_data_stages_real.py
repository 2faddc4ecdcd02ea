"""The three data stages on a real, messy image set (ISIC skin lesions, grouped into three classes)."""
import shutil

import pandas as pd
import pytest

from tests.conftest import data_stages, shrunk, tree_digest

GROUPING = {  # the three-way grouping suggested in the data set's SOURCE.md
    "actinic keratosis": "precancer",
    "basal cell carcinoma": "cancer", "melanoma": "cancer", "squamous cell carcinoma": "cancer",
    "dermatofibroma": "benign", "nevus": "benign", "pigmented benign keratosis": "benign",
    "seborrheic keratosis": "benign", "vascular lesion": "benign",
}


@pytest.fixture(scope="module")
def isic_raw(isic_dir, tmp_path_factory):
    raw = tmp_path_factory.mktemp("isic") / "raw"
    for image in isic_dir.glob("*/*/*.jpg"):
        folder, source_class = image.parent.parent.name, image.parent.name
        target = raw / GROUPING[source_class] / f"{folder} {source_class} {image.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, target)
    return raw


def test_validate_dedup_split_guarantees(isic_raw, isic_dir, tmp_path):
    shared_before, raw_before = tree_digest(isic_dir), tree_digest(isic_raw)
    params = shrunk(tmp_path, base={"classes": ["benign", "precancer", "cancer"]})
    out = tmp_path / "out"
    done = data_stages(params, isic_raw, out)
    summary, report = done["validate"], done["dedup"]
    assert summary["ok"] == len(raw_before)  # all real images are readable and large enough

    groups = pd.read_csv(out / "groups.csv", keep_default_na=False)
    groups["conflict"] = groups.conflict.astype(str) == "True"
    splits = pd.read_csv(out / "split.csv", keep_default_na=False)
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)

    # identical bytes always share a group, wherever the set filed them (Train/Test, two classes)
    assert (groups.groupby("sha256").group_id.nunique() == 1).all()
    assert report["exact_duplicate_images"] == int(manifest.sha256.duplicated().sum())
    # a group never straddles two splits
    assert (splits.groupby("group_id").split.nunique() == 1).all()
    # label conflicts are kept out of every split, and copied for re-annotation
    conflicted = set(groups[groups.conflict].path)
    assert conflicted.isdisjoint(splits.path)
    assert report["conflict_images"] == len(conflicted)
    quarantined = pd.read_csv(out / "quarantine" / "conflicts.csv")
    assert set(quarantined.path) == conflicted
    # one copy of each content is trained on; every class reaches every split
    assert not splits.path.isin(groups[groups.duplicate_of != ""].path).any()
    assert splits.groupby("label").split.nunique().eq(4).all()  # train, val, calibration, test
    # nothing under the raw folder or the shared set was touched
    assert tree_digest(isic_raw) == raw_before and tree_digest(isic_dir) == shared_before
