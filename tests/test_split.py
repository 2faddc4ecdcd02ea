import json

import pandas as pd
import pytest

from pipeline.params import Split
from pipeline.split import assign_splits, run, training_rows

PARAMS = Split(val=0.15, test=0.15)


def make_groups(n_groups: int, per_group: int = 1, labels=("normal", "precancer", "cancer"), prefix="") -> pd.DataFrame:
    rows = []
    for g in range(n_groups):
        label = labels[g % len(labels)]
        for k in range(per_group if g % 4 else per_group + 2):  # some bigger groups
            rows.append({"path": f"{label}/{prefix}{g}_{k}.jpg", "label": label,
                         "group_id": f"g{prefix}{g}", "conflict": False, "sha256": f"{prefix}{g}_{k}",
                         "duplicate_of": ""})
    return pd.DataFrame(rows)


def test_no_group_straddles_and_classes_are_stratified():
    split = assign_splits(make_groups(300), {}, PARAMS, seed=1)
    assert (split.groupby("group_id").split.nunique() == 1).all()
    share = split.groupby("label").split.value_counts(normalize=True)
    for label in ("normal", "precancer", "cancer"):
        assert share[label, "train"] == pytest.approx(0.70, abs=0.04)
        assert share[label, "test"] == pytest.approx(0.15, abs=0.04)


def test_deterministic_and_seeded():
    groups = make_groups(120)
    first = assign_splits(groups, {}, PARAMS, seed=1)
    assert first.equals(assign_splits(groups.sample(frac=1, random_state=3), {}, PARAMS, seed=1))
    assert not first.split.equals(assign_splits(groups, {}, PARAMS, seed=2).split)


def test_existing_images_keep_their_split_when_data_grows():
    old = make_groups(150)
    first = assign_splits(old, {}, PARAMS, seed=1)
    previous = dict(zip(first.path, first.split))
    grown = pd.concat([old, make_groups(90, prefix="new")])
    second = assign_splits(grown, previous, PARAMS, seed=1)
    kept = second[second.path.isin(list(previous))]
    assert all(previous[p] == s for p, s in zip(kept.path, kept.split))
    assert set(second[~second.path.isin(list(previous))].split) == {"train", "val", "test"}


def test_new_image_joins_its_groups_split():
    old = make_groups(60)
    first = assign_splits(old, {}, PARAMS, seed=1)
    test_group = first[first.split == "test"].group_id.iloc[0]
    extra = old[old.group_id == test_group].iloc[[0]].assign(path="cancer/late arrival.jpg", sha256="late")
    second = assign_splits(pd.concat([old, extra]), dict(zip(first.path, first.split)), PARAMS, seed=1)
    assert second.set_index("path").loc["cancer/late arrival.jpg", "split"] == "test"


def test_merged_group_goes_to_train_never_into_held_out():
    groups = make_groups(2, labels=("normal",))
    previous = {groups.path[0]: "test", groups.path[len(groups) - 1]: "train"}
    merged = groups.assign(group_id="gmerged")  # a new image linked the two groups
    split = assign_splits(merged, previous, PARAMS, seed=1)
    assert set(split.split) == {"train"}


def test_conflicts_and_exact_copies_are_left_out():
    groups = make_groups(9)
    groups.loc[0, "conflict"] = True
    groups.loc[5, "duplicate_of"] = groups.loc[4, "path"]
    rows = training_rows(groups)
    assert groups.loc[0, "path"] not in set(rows.path) and groups.loc[5, "path"] not in set(rows.path)
    assert len(rows) == len(groups) - 2


def test_stage_keeps_its_previous_output(tmp_path, small_params):
    groups = make_groups(60)
    groups.to_csv(tmp_path / "groups.csv", index=False)
    out, report = tmp_path / "split.csv", tmp_path / "split.json"
    run(small_params, tmp_path / "groups.csv", out, report)
    first = pd.read_csv(out)
    assert list(first.columns) == ["path", "label", "group_id", "split"]
    pd.concat([groups, make_groups(30, prefix="n")]).to_csv(tmp_path / "groups.csv", index=False)
    summary = run(small_params, tmp_path / "groups.csv", out, report)
    second = pd.read_csv(out).set_index("path")
    assert (second.loc[first.path, "split"].values == first.split.values).all()
    assert summary["kept_from_previous_run"] == len(first)
    assert json.loads(report.read_text())["newly_assigned"] == len(second) - len(first)
