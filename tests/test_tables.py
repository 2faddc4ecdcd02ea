import pandas as pd
import pytest

from pipeline.stage import StageError
from pipeline.tables import read_split

CLASSES = ("normal", "cancer")


def write(tmp_path, **columns):
    rows = {"path": ["normal/NA.png", "cancer/1.png", "cancer/2.png"], "label": ["normal", "cancer", "cancer"],
            "group_id": ["g1", "", "g2"], "split": ["test", "train", "test"], "sha256": ["0123", "4e5", "ff"]}
    rows.update(columns)
    pd.DataFrame(rows).to_csv(tmp_path / "split.csv", index=False)
    return tmp_path / "split.csv"


def test_one_split_as_text_indexed_from_zero(tmp_path):
    test = read_split(write(tmp_path), "test", CLASSES)
    assert list(test.path) == ["normal/NA.png", "cancer/2.png"] and list(test.index) == [0, 1]
    assert list(test.sha256) == ["0123", "ff"]  # never numbers: no leading zero lost, no "4e5" as 400000.0
    everything = read_split(write(tmp_path))
    assert len(everything) == 3 and everything.group_id[1] == "" and everything.sha256[1] == "4e5"


def test_a_missing_column_is_named(tmp_path):
    path = write(tmp_path)
    pd.read_csv(path).drop(columns="group_id").to_csv(path, index=False)
    with pytest.raises(StageError, match=r"split\.csv has no column 'group_id'"):
        read_split(path, "test")


def test_a_label_outside_the_classes_is_named(tmp_path):
    path = write(tmp_path, label=["normal", "melanoma", "cancer"])
    with pytest.raises(StageError, match=r"label 'melanoma' in .*split\.csv is not in base\.classes"):
        read_split(path, "test", CLASSES)
    assert len(read_split(path, "test")) == 2  # without classes, labels are not checked


@pytest.mark.parametrize("split, remedy", [("val", "raise split.val"), ("train", "lower split.val, split.calibration and split.test")])
def test_an_empty_split_is_named_with_its_remedy(tmp_path, split, remedy):
    path = write(tmp_path, split=["test", "test", "val"] if split == "train" else ["test", "train", "test"])
    with pytest.raises(StageError, match=f"the {split} split is empty; add images or {remedy}"):
        read_split(path, split, CLASSES)
