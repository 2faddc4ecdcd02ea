import json

import numpy as np
import pandas as pd
import pytest

from pipeline.params import Split, load_params
from pipeline.split import LEDGER, Inputs, Outputs, assign_splits, main, run, training_rows, update_ledger
from tests.conftest import SMALL_DATA, shrink_params

PARAMS = Split(val=0.15, calibration=0.15, test=0.15)


def make_groups(n_groups: int, per_group: int = 1, labels=("normal", "precancer", "cancer"), prefix="") -> pd.DataFrame:
    rows = []
    for g in range(n_groups):
        label = labels[g % len(labels)]
        for k in range(per_group if g % 4 else per_group + 2):  # some bigger groups
            rows.append({"path": f"{label}/{prefix}{g}_{k}.jpg", "label": label,
                         "group_id": f"g{prefix}{g}", "conflict": False, "sha256": f"{prefix}{g}_{k}",
                         "duplicate_of": "", "perceptual_hash": ""})
    return pd.DataFrame(rows)


EMPTY = pd.DataFrame(columns=LEDGER)


def ledger_of(split: pd.DataFrame, ledger=EMPTY) -> pd.DataFrame:
    return update_ledger(ledger, split)


def test_no_group_straddles_and_classes_are_stratified():
    split = assign_splits(make_groups(300), EMPTY, PARAMS, seed=1)
    assert (split.groupby("group_id").split.nunique() == 1).all()
    share = split.groupby("label").split.value_counts(normalize=True)
    for label in ("normal", "precancer", "cancer"):
        assert share[label, "train"] == pytest.approx(0.55, abs=0.04)
        for held_out in ("val", "calibration", "test"):
            assert share[label, held_out] == pytest.approx(0.15, abs=0.04)


def test_deterministic_and_seeded():
    groups = make_groups(120)
    first = assign_splits(groups, EMPTY, PARAMS, seed=1)
    assert first.equals(assign_splits(groups.sample(frac=1, random_state=3), EMPTY, PARAMS, seed=1))
    assert not first.split.equals(assign_splits(groups, EMPTY, PARAMS, seed=2).split)


def test_existing_images_keep_their_split_when_data_grows():
    old = make_groups(150)
    first = assign_splits(old, EMPTY, PARAMS, seed=1)
    previous = dict(zip(first.path, first.split))
    grown = pd.concat([old, make_groups(90, prefix="new")])
    second = assign_splits(grown, ledger_of(first), PARAMS, seed=1)
    kept = second[second.path.isin(list(previous))]
    assert all(previous[p] == s for p, s in zip(kept.path, kept.split))
    assert set(second[~second.path.isin(list(previous))].split) == {"train", "val", "calibration", "test"}


def test_new_image_joins_its_groups_split():
    old = make_groups(60)
    first = assign_splits(old, EMPTY, PARAMS, seed=1)
    test_group = first[first.split == "test"].group_id.iloc[0]
    extra = old[old.group_id == test_group].iloc[[0]].assign(path="cancer/late arrival.jpg", sha256="late")
    second = assign_splits(pd.concat([old, extra]), ledger_of(first), PARAMS, seed=1)
    assert second.set_index("path").loc["cancer/late arrival.jpg", "split"] == "test"


def test_merged_group_goes_to_train_never_into_held_out():
    groups = make_groups(2, labels=("normal",))
    before = groups.assign(split="test")
    before.loc[len(groups) - 1, "split"] = "train"
    merged = groups.assign(group_id="gmerged")  # a new image linked the two groups
    split = assign_splits(merged, ledger_of(before), PARAMS, seed=1)
    assert set(split.split) == {"train"}


def test_conflicts_and_exact_copies_are_left_out():
    groups = make_groups(9)
    groups.loc[0, "conflict"] = True
    groups.loc[5, "duplicate_of"] = groups.loc[4, "path"]
    rows = training_rows(groups)
    assert groups.loc[0, "path"] not in set(rows.path) and groups.loc[5, "path"] not in set(rows.path)
    assert len(rows) == len(groups) - 2


def stage_paths(tmp_path) -> tuple[Inputs, Outputs]:
    return Inputs(tmp_path / "groups.csv"), Outputs(tmp_path / "split.csv", tmp_path / "ledger.csv", tmp_path / "split.json")


def test_stage_keeps_its_previous_output(tmp_path, small_params):
    groups = make_groups(60)
    groups.to_csv(tmp_path / "groups.csv", index=False)
    out, report = tmp_path / "split.csv", tmp_path / "split.json"
    run(small_params, *stage_paths(tmp_path))
    first = pd.read_csv(out)
    assert list(first.columns) == ["path", "label", "group_id", "split", "sha256"]
    pd.concat([groups, make_groups(30, prefix="n")]).to_csv(tmp_path / "groups.csv", index=False)
    summary = run(small_params, *stage_paths(tmp_path))
    second = pd.read_csv(out).set_index("path")
    assert (second.loc[first.path, "split"].values == first.split.values).all()
    assert summary["kept_from_ledger"] == len(first)
    assert json.loads(report.read_text())["newly_assigned"] == len(second) - len(first)


def test_trained_content_never_returns_to_held_out_whatever_its_path_or_group():
    groups = make_groups(60)
    first = assign_splits(groups, EMPTY, PARAMS, seed=1)
    ledger = ledger_of(first)
    trained = first[first.split == "train"].iloc[0]
    # the same content comes back under a new path, a new label and a group of its own, after leaving the data
    gone = groups[groups.sha256 != trained.sha256]
    back = pd.DataFrame([{"path": "cancer/renamed.jpg", "label": "cancer", "group_id": "gnew", "conflict": False,
                          "sha256": trained.sha256, "duplicate_of": "", "perceptual_hash": ""}])
    ledger = ledger_of(assign_splits(gone, ledger, PARAMS, seed=1), ledger)  # it was absent for one version
    again = assign_splits(pd.concat([gone, back]), ledger, PARAMS, seed=1).set_index("path")
    assert again.loc["cancer/renamed.jpg", "split"] == "train"
    assert again.loc["cancer/renamed.jpg", "train_reason"] == "was in training before"


def test_near_duplicate_of_trained_content_goes_to_train():
    groups = make_groups(30)
    rng = np.random.default_rng(0)  # random 64-bit hashes: about 32 bits apart, far beyond the distance
    groups["perceptual_hash"] = [f"phash:8:{int(v):x}" for v in rng.integers(0, 2**63, len(groups))]
    first = assign_splits(groups, EMPTY, PARAMS, seed=1)
    trained = first[first.split == "train"].iloc[0]
    near = format(int(trained.perceptual_hash.split(":")[2], 16) ^ 0b101, "x")  # 2 bits away
    new = pd.DataFrame([{"path": "normal/rescan.jpg", "label": "normal", "group_id": "gfresh", "conflict": False,
                         "sha256": "fresh", "duplicate_of": "", "perceptual_hash": f"phash:8:{near}"}])
    for _ in range(5):  # whatever the placement order, it cannot land in val or test
        out = assign_splits(pd.concat([groups, new]), ledger_of(first), PARAMS, seed=_, max_distance=6)
        out = out.set_index("path")
        assert out.loc["normal/rescan.jpg", "split"] == "train"
        assert "near-duplicate (distance 2)" in out.loc["normal/rescan.jpg", "train_reason"]


def test_ledger_moves_only_toward_training():
    groups = make_groups(9)
    split = assign_splits(groups, EMPTY, PARAMS, seed=1)
    ledger = ledger_of(split)
    flipped = split.assign(split="test")
    after = update_ledger(ledger, flipped).set_index("sha256")
    assert (after.loc[split[split.split == "train"].sha256, "split"] == "train").all()
    assert (after.first_split.loc[split.sha256].values == split.split.values).all()


def test_a_ledger_from_before_the_calibration_split_shares_validation_out_once():
    from pipeline.split import moves

    groups = make_groups(150)
    before = assign_splits(groups, EMPTY, Split(val=0.3, calibration=0.0, test=0.15), seed=1)
    assert "calibration" not in set(before.split)
    old = ledger_of(before)
    now = assign_splits(groups, old, PARAMS, seed=1)
    was = dict(zip(before.path, before.split))
    changed = now[[was[p] != s for p, s in zip(now.path, now.split)]]
    assert len(changed) and set(zip(changed.path.map(was), changed.split)) == {("val", "calibration")}
    assert all(now.split[now.path.map(was) == "test"] == "test") and all(now.split[now.path.map(was) == "train"] == "train")
    reasons = {m["reason"] for m in moves(now, old)}
    assert reasons == {"the calibration split was introduced: validation groups were shared out between validation "
                       "and calibration, once"}
    ledger = update_ledger(old, now)
    assert (ledger.split == "calibration").sum() == len(changed)  # recorded: the next run changes nothing
    assert assign_splits(groups, ledger, PARAMS, seed=1).split.equals(now.split)


def test_tables_from_before_perceptual_hash_was_named_are_read(tmp_path, capsys):
    """groups.csv and the persisted ledger.csv of an older project call the column `phash`: renamed on
    read, the ledger still keeps near-duplicates of trained content out of val and test."""
    groups = make_groups(30)
    rng = np.random.default_rng(0)
    groups["perceptual_hash"] = [f"dhash:8:{int(v):x}" for v in rng.integers(0, 2**63, len(groups))]
    groups.rename(columns={"perceptual_hash": "phash"}).to_csv(tmp_path / "groups.csv", index=False)
    params = shrink_params(tmp_path, **SMALL_DATA)
    run(load_params(params), *stage_paths(tmp_path))
    ledger = pd.read_csv(tmp_path / "ledger.csv", keep_default_na=False)
    assert list(ledger.columns) == LEDGER and ledger.perceptual_hash.str.startswith("dhash:8:").all()
    ledger.rename(columns={"perceptual_hash": "phash"}).to_csv(tmp_path / "ledger.csv", index=False)  # an old ledger
    trained = ledger[ledger.split == "train"].iloc[0]
    near = format(int(trained.perceptual_hash.split(":")[2], 16) ^ 0b11, "x")
    rescan = pd.DataFrame([{"path": "normal/rescan.jpg", "label": "normal", "group_id": "gfresh", "conflict": False,
                            "sha256": "fresh", "duplicate_of": "", "phash": f"dhash:8:{near}"}])
    pd.concat([groups.rename(columns={"perceptual_hash": "phash"}), rescan]).to_csv(tmp_path / "groups.csv", index=False)
    argv = ["--params", str(params), "--groups", str(tmp_path / "groups.csv"),
            "--out", str(tmp_path / "split.csv"), "--ledger", str(tmp_path / "ledger.csv"),
            "--report", str(tmp_path / "split.json")]
    main(argv)  # as dvc.yaml runs it
    assert "kept by the ledger" in capsys.readouterr().out
    split = pd.read_csv(tmp_path / "split.csv").set_index("path")
    assert split.loc["normal/rescan.jpg", "split"] == "train"  # near-duplicate of trained content
    after = pd.read_csv(tmp_path / "ledger.csv", keep_default_na=False).set_index("sha256")
    assert list(after.columns) == LEDGER[1:] and after.perceptual_hash[trained.sha256] == trained.perceptual_hash
    assert after.perceptual_hash["fresh"] == f"dhash:8:{near}"
