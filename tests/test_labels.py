"""Clinicians' label decisions (by content, in a file people own) and the split ledger across data versions."""
import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from pipeline import labels, split
from pipeline.images import sha256_file
from tests.conftest import ROOT, data_stages, noise_image, shrunk, tree_digest

CLASSES = ("normal", "precancer", "cancer")


def test_decisions_apply_by_content_and_exclusions_keep_a_reason(tmp_path):
    manifest = pd.DataFrame({"path": ["normal/a.png", "cancer/a again.png", "normal/b.png"],
                             "label": ["normal", "cancer", "normal"], "sha256": ["a" * 64, "a" * 64, "b" * 64],
                             "status": ["ok", "ok", "ok"], "reason": ["", "", ""]})
    path = tmp_path / "corrections.csv"
    labels.append(path, [{"sha256": "a" * 64, "correct_label": "normal", "who": "dr. x", "when": "2026-01-01", "note": ""},
                         {"sha256": "b" * 64, "correct_label": "exclude", "who": "dr. y", "when": "2026-01-02",
                          "note": "not oral mucosa"},
                         {"sha256": "a" * 64, "correct_label": "cancer", "who": "dr. z", "when": "2026-02-01",
                          "note": "biopsy"}])  # a later decision for the same content replaces the earlier one
    out = labels.apply(manifest, labels.load(path, CLASSES)).set_index("path")
    assert list(out.label) == ["cancer", "cancer", "normal"] and list(out.folder_label) == ["normal", "cancer", "normal"]
    assert out.loc["normal/a.png", "decision"] == "cancer by dr. z on 2026-02-01: biopsy"
    assert out.loc["normal/b.png", "status"] == "excluded" and "not oral mucosa" in out.loc["normal/b.png", "reason"]


def test_a_bad_decision_names_its_row(tmp_path):
    path = tmp_path / "corrections.csv"
    labels.append(path, [{"sha256": "a" * 64, "correct_label": "melanoma", "who": "x", "when": "", "note": ""}])
    with pytest.raises(labels.CorrectionsError, match="row 2: correct_label 'melanoma'"):
        labels.load(path, CLASSES)


def test_import_command_records_a_filled_sheet_and_refuses_bad_labels(tmp_path):
    sheet = tmp_path / "conflicts.csv"
    pd.DataFrame({"sha256": ["c" * 64, "d" * 64], "correct_label": ["precancer", ""]}).to_csv(sheet, index=False)
    target = tmp_path / "labels" / "corrections.csv"
    cmd = [sys.executable, "-m", "pipeline.labels", "--params", str(ROOT / "params.yaml"), "--file", str(target)]
    done = subprocess.run(cmd + ["import", str(sheet), "--who", "dr. ana"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(target, keep_default_na=False)
    assert list(table.correct_label) == ["precancer"] and list(table.who) == ["dr. ana"]
    bad = subprocess.run(cmd + ["add", "e" * 64, "melanoma", "--who", "x"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and "nothing recorded" in bad.stderr
    assert len(pd.read_csv(target)) == 1  # the file is left as it was


def near_copy(image):
    return ImageEnhance.Brightness(image).enhance(1.04).resize((118, 118))


class Project:
    """validate -> dedup -> split, the real stages, on a folder that changes between data versions."""

    def __init__(self, tmp_path):
        self.root, self.raw = tmp_path, tmp_path / "raw"
        self.params = shrunk(tmp_path, validate={"min_images_per_class": 5, "max_excluded_share": 0.5})
        self.corrections = tmp_path / "corrections.csv"
        self.ever_trained: set[str] = set()

    def run(self) -> tuple[pd.DataFrame, dict]:
        out = self.root / "out"
        before = tree_digest(self.raw)
        report = data_stages(self.params, self.raw, out, corrections=self.corrections)["split"]
        assert tree_digest(self.raw) == before  # no stage touches data/raw
        table = pd.read_csv(out / "split.csv", keep_default_na=False)
        held_out = set(table[table.split != "train"].sha256)
        assert not held_out & self.ever_trained, "content that was trained on is in val/test"
        self.ever_trained |= set(table[table.split == "train"].sha256)
        return table, report


def test_ledger_keeps_trained_content_out_of_val_and_test_across_data_versions(tmp_path):
    p = Project(tmp_path)
    for k, label in enumerate(CLASSES):
        for i in range(16):
            (p.raw / label).mkdir(parents=True, exist_ok=True)
            noise_image(100 * k + i, (120, 120)).save(p.raw / label / f"{i}.png")
            if i < 8:  # a longer-named exact copy of each: excluded while the original is there
                shutil.copy(p.raw / label / f"{i}.png", p.raw / label / f"copy of {i}.png")
    v1, _ = p.run()
    trained = v1[v1.split == "train"].path.tolist()
    with_copy = [t for t in trained if t.split("/")[1] in {f"{i}.png" for i in range(8)}][:6]
    to_move = [t for t in trained if t not in with_copy][:6]
    to_rescan = [t for t in trained if t not in with_copy + to_move][:6]
    to_conflict = [t for t in trained if t not in with_copy + to_move + to_rescan][:4]
    assert len(with_copy) == len(to_move) == len(to_rescan) == 6 and len(to_conflict) == 4

    # version 2: originals deleted (their copies become the kept ones), files moved to another class
    # folder, trained images replaced by a rescan (near-duplicate, new bytes), the same bytes filed twice
    for path in with_copy:
        (p.raw / path).unlink()
    for path in to_move:
        label, name = path.split("/")
        other = CLASSES[(CLASSES.index(label) + 1) % 3]
        (p.raw / path).rename(p.raw / other / f"moved {name}")
    for path in to_rescan:
        image = Image.open(p.raw / path).convert("RGB")
        near_copy(image).save(p.raw / path.replace(".png", " rescan.png"))
        (p.raw / path).unlink()
    for path in to_conflict:
        label, name = path.split("/")
        shutil.copy(p.raw / path, p.raw / CLASSES[(CLASSES.index(label) + 1) % 3] / f"dup {name}")
    for i in range(12):  # and some genuinely new images
        noise_image(5000 + i, (120, 120)).save(p.raw / CLASSES[i % 3] / f"new {i}.png")
    v2, report2 = p.run()
    by_path = v2.set_index("path")
    assert all(by_path.loc[path.replace(f"/{path.split('/')[1]}", f"/copy of {path.split('/')[1]}"), "split"] == "train"
               for path in with_copy)
    assert all(by_path.loc[path.replace(".png", " rescan.png"), "split"] == "train" for path in to_rescan)
    conflicts = pd.read_csv(tmp_path / "out" / "quarantine" / "conflicts.csv", keep_default_na=False)
    assert set(conflicts.path) >= set(to_conflict) and set(conflicts.status) == {"open"}

    # version 3: a clinician resolves the conflicts in the corrections file; the images come back to training
    shas = {path: sha256_file(p.raw / path) for path in to_conflict}
    labels.append(p.corrections, [{"sha256": s, "correct_label": path.split("/")[0], "who": "dr. ana",
                                   "when": "2026-11-22", "note": "reviewed"} for path, s in shas.items()])
    v3, report3 = p.run()
    back = v3[v3.sha256.isin(shas.values())]
    assert len(back) == 4 and set(back.split) == {"train"}
    sheet = pd.read_csv(tmp_path / "out" / "quarantine" / "conflicts.csv", keep_default_na=False)
    resolved = sheet[sheet.status == "resolved"]
    assert set(resolved.sha256) == set(shas.values()) and resolved.decision.str.contains("dr. ana").all()
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False)
    decided = manifest[manifest.sha256.isin(shas.values())]
    assert len(decided) >= 8 and (decided.decision != "").all()  # every file of that content, copies included
    assert json.loads((tmp_path / "out" / "validation.json").read_text())["label_decisions_applied"] == len(decided)


def split_stage(tmp_path) -> tuple[split.Inputs, split.Outputs]:
    return split.Inputs(tmp_path / "groups.csv"), split.Outputs(
        out=tmp_path / "split.csv", ledger=tmp_path / "ledger.csv", report=tmp_path / "split.json")


def test_split_report_accounts_for_every_image_that_left_the_test_split(tmp_path):
    params = shrunk(tmp_path)
    rows = [{"path": f"normal/{i}.png", "label": "normal", "group_id": f"g{i}", "conflict": False,
             "sha256": f"s{i}", "duplicate_of": "", "perceptual_hash": "", "mixed_labels": False} for i in range(40)]
    pd.DataFrame(rows).to_csv(tmp_path / "groups.csv", index=False)
    out, ledger = tmp_path / "split.csv", tmp_path / "ledger.csv"
    split.run(params, *split_stage(tmp_path))
    first = pd.read_csv(out)
    test_path = first[first.split == "test"].path.iloc[0]
    train_path = first[first.split == "train"].path.iloc[0]
    for row in rows:  # a new image links a test group with a training group
        if row["path"] in (test_path, train_path):
            row["group_id"] = "gmerged"
    pd.DataFrame(rows).to_csv(tmp_path / "groups.csv", index=False)
    report = split.run(params, *split_stage(tmp_path))
    assert [m["sha256"] for m in report["left_test"]] == [first.set_index("path").loc[test_path, "sha256"]]  # by content, never by path
    assert report["left_test"][0]["to"] == "train" and "gmerged" in report["left_test"][0]["reason"]
    assert pd.read_csv(ledger).set_index("sha256").loc[first.set_index("path").loc[test_path, "sha256"], "split"] == "train"


def test_a_project_from_before_the_ledger_keeps_its_last_split(tmp_path):
    params = shrunk(tmp_path)
    rows = [{"path": f"normal/{i}.png", "label": "normal", "group_id": f"g{i}", "conflict": False,
             "sha256": f"s{i}", "duplicate_of": "", "perceptual_hash": "", "mixed_labels": False} for i in range(30)]
    pd.DataFrame(rows).to_csv(tmp_path / "groups.csv", index=False)
    old = pd.DataFrame({"path": [r["path"] for r in rows], "label": "normal", "group_id": [r["group_id"] for r in rows],
                        "split": ["test"] * 30})  # the old split.csv: by path, no sha256, no ledger beside it
    old.to_csv(tmp_path / "split.csv", index=False)
    report = split.run(params, *split_stage(tmp_path))
    assert report["kept_from_ledger"] == 30 and set(pd.read_csv(tmp_path / "split.csv").split) == {"test"}
