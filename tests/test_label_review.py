import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageEnhance

from pipeline.contact_sheet import draw_label_issue_sheet
from pipeline.label_review import (Inputs, Outputs, find_issues, grouped_folds, issue_table, main,
                                   out_of_fold_probabilities, run)
from pipeline.labels import from_sheet
from pipeline.models import WeightsUnavailable
from pipeline.stage import StageError
from tests.conftest import shrink_params, shrunk, tree_digest

CLASSES = ("normal", "precancer", "cancer")
THESE_CLASSES = {"classes": list(CLASSES)}  # base.classes, whatever order params.yaml lists them in
WEIGHTS_224 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"  # no-top: any input size


def planted_features(seed=0, n_groups=150, flips=12):
    """Three gaussian classes in 32-d; groups of 1-3 near copies; `flips` singletons given a wrong label."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1, (3, 32)) * 1.5
    sizes = rng.integers(1, 4, n_groups)
    sizes[:flips] = 1
    truth = np.repeat(rng.integers(0, 3, n_groups), sizes)
    groups = np.repeat(np.arange(n_groups), sizes)
    centres = means[truth] + rng.normal(0, 1, (len(truth), 32))
    features = centres[np.unique(groups, return_index=True)[1]][groups] + rng.normal(0, 0.05, centres.shape)
    labels = truth.copy()
    planted = np.flatnonzero(groups < flips)
    labels[planted] = (truth[planted] + rng.integers(1, 3, len(planted))) % 3
    return features, labels, groups, set(planted.tolist())


def test_out_of_fold_cleanlab_finds_planted_flips_and_folds_keep_groups_whole():
    features, labels, groups, planted = planted_features()
    folds = grouped_folds(labels, groups, 5, seed=42)
    scored = np.concatenate([score for _, score in folds])
    assert sorted(scored.tolist()) == list(range(len(labels)))  # every image scored exactly once
    for fit, score in folds:
        assert not set(groups[fit]) & set(groups[score])  # a group never on both sides
    probs, seen = out_of_fold_probabilities(features, labels, folds, 3, seed=42)
    assert seen.all() and np.allclose(probs.sum(1), 1)
    flagged = find_issues(labels, probs)
    found = planted & set(flagged.tolist())
    assert len(found) >= 0.8 * len(planted), (sorted(planted), flagged)
    assert len(set(flagged.tolist()) - planted) <= 0.05 * len(labels)
    ranks = {i: r for r, i in enumerate(flagged)}  # ranked by self-confidence: lowest first
    quality = probs[flagged, labels[flagged]]
    assert np.all(np.diff(quality) >= 0) and min(ranks[i] for i in found) == 0


def test_folds_shrink_to_the_number_of_groups_and_a_class_in_one_group_is_not_checked():
    labels = np.array([0, 0, 1, 1, 2])
    groups = np.array(["a", "b", "c", "d", "e"])  # class 2 lives in one group
    folds = grouped_folds(labels, groups, 10, seed=0)
    assert len(folds) == 5
    features = np.eye(5) + np.arange(5)[:, None]
    probs, seen = out_of_fold_probabilities(features, labels, folds, 3, seed=0)
    assert seen.tolist() == [True, True, True, True, False]  # the head never saw class 2 beside it
    with pytest.raises(StageError, match="at least 2 duplicate groups"):
        grouped_folds(labels, np.zeros(5), 5, seed=0)


def test_issue_table_carries_sha256_only_when_split_has_it_and_feeds_label_corrections(tmp_path):
    table = pd.DataFrame({"path": ["a", "b"], "label": ["normal", "cancer"], "group_id": ["g1", "g2"],
                          "split": ["train", "test"]})
    probs = np.array([[0.1, 0.1, 0.8], [0.2, 0.2, 0.6]])
    out = issue_table(table, np.array([0, 2]), probs, np.array([0]), CLASSES)
    assert out.to_dict("records") == [{"path": "a", "label": "normal", "suggested_label": "cancer",
                                       "label_quality": 0.1, "p_normal": 0.1, "p_precancer": 0.1, "p_cancer": 0.8,
                                       "split": "train", "group_id": "g1", "rank": 1, "correct_label": ""}]
    with_sha = issue_table(table.assign(sha256=["a" * 64, "b" * 64]), np.array([0, 2]), probs, np.array([0]), CLASSES)
    assert list(with_sha.columns[:3]) == ["path", "sha256", "label"]
    with_sha.assign(correct_label="precancer").to_csv(tmp_path / "reviewed.csv", index=False)  # a clinician's answer
    assert from_sheet(tmp_path / "reviewed.csv", "dr. a", "2026-01-01")[0]["correct_label"] == "precancer"


def texture(label: str, seed: int, size: int = 120) -> Image.Image:
    """Two random colours in a class texture: stripes (normal), checks (precancer), dots (cancer).
    Frozen ImageNet features tell textures apart at once, so a wrong label has to stand out."""
    rng = np.random.default_rng(seed)
    ink = rng.integers(0, 256, 3)
    paper = (ink + 128) % 256  # always a visible contrast
    y, x = np.mgrid[:size, :size] / size
    if label == "normal":
        angle, freq = rng.uniform(0, np.pi), rng.uniform(5, 9)
        mask = np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)) + rng.uniform(0, 6)) > 0
    elif label == "precancer":
        n = rng.integers(4, 8)
        mask = ((x * n).astype(int) + (y * n).astype(int)) % 2 == 0
    else:
        dots = Image.new("L", (size, size))
        for cx, cy, r in zip(*rng.uniform((0, 0, 5), (size, size, 12), (rng.integers(12, 20), 3)).T):
            ImageDraw.Draw(dots).ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        mask = np.asarray(dots) > 0
    return Image.fromarray(np.where(mask[..., None], ink, paper).astype(np.uint8))


PLANTED = {"normal/wrong_0.png": "cancer", "precancer/wrong_1.png": "normal", "cancer/wrong_2.png": "precancer",
           "cancer/wrong_2_copy.png": "precancer"}  # a near copy in the same duplicate group, also mislabelled
# cleanlab flags an image only when the head is confident in another class (above that class's mean
# self-confidence); of 60 seeds tried, 37 gave planted images that clear it at 96 px, none flagged an
# unplanted image. This one clears it by 0.15, so float noise cannot flip the test.
PLANTED_SEED = 939


def write_set(raw, per_class=16):
    rows = []
    for k, label in enumerate(CLASSES):
        for i in range(per_class):
            path = f"{label}/img_{i}.png"
            (raw / label).mkdir(parents=True, exist_ok=True)
            texture(label, 100 * k + i).save(raw / path)
            rows.append((path, label, f"g_{label}_{i // 2}"))  # pairs share a group, like dedup's groups
    for n, (path, truth) in enumerate(PLANTED.items()):
        image = texture(truth, PLANTED_SEED)  # the copy repeats image 2, a little brighter
        (ImageEnhance.Brightness(image).enhance(1.05) if path.endswith("_copy.png") else image).save(raw / path)
        rows.append((path, path.split("/")[0], f"g_planted_{min(n, 2)}"))
    split = pd.DataFrame(rows, columns=["path", "label", "group_id"])
    split["split"] = np.where(np.arange(len(split)) % 5 == 0, "test", "train")
    split["sha256"] = [f"sha{i}" for i in range(len(split))]
    return split


def test_stage_flags_planted_labels_on_real_images_with_the_genuine_network(tmp_path, keras_home):
    raw = tmp_path / "raw"
    split = write_set(raw)
    (raw / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 64)  # one bad file must not stop it
    with_broken = pd.concat([split, pd.DataFrame([["normal/broken.png", "normal", "g_broken", "train", "0b" * 32]],
                                                 columns=split.columns)])
    with_broken.to_csv(tmp_path / "split.csv", index=False)
    before = tree_digest(raw)
    params = shrunk(tmp_path, label_review={"image_size": 96, "folds": 4, "sheet_images": 12,
                                            "weights": str(keras_home / "models" / WEIGHTS_224)},
                    base=THESE_CLASSES)
    out = Outputs(out=tmp_path / "r" / "issues.csv", sheet=tmp_path / "r" / "issues.png",
                  report=tmp_path / "r" / "review.json")
    summary = run(params, Inputs(raw, tmp_path / "split.csv"), out)
    issues = pd.read_csv(out.out)
    assert set(PLANTED) <= set(issues.path), issues[["path", "label", "suggested_label", "label_quality"]]
    assert len(issues) <= len(PLANTED) + 3
    wrong = issues.set_index("path").loc[list(PLANTED)]
    assert wrong.suggested_label.tolist() == list(PLANTED.values())
    assert list(issues.columns) == ["path", "sha256", "label", "suggested_label", "label_quality",
                                    "p_normal", "p_precancer", "p_cancer", "split", "group_id", "rank",
                                    "correct_label"]
    assert json.loads(out.report.read_text()) == summary
    assert summary["images_reviewed"] == len(split) and summary["flagged"] == len(issues)
    assert list(summary["not_checked"]["unreadable"]) == ["0b" * 6]  # by image ID, never by path (committed)
    assert summary["head_out_of_fold_accuracy"] >= 0.85
    assert Image.open(out.sheet).size[0] > 0
    assert tree_digest(raw) == before  # nothing moved, changed or excluded


def test_missing_weights_stop_the_stage_with_the_file_named(tmp_path, keras_home):
    raw = tmp_path / "raw"
    write_set(raw, per_class=2).to_csv(tmp_path / "split.csv", index=False)
    params = shrink_params(tmp_path, label_review={"weights": str(tmp_path / "nope.h5")}, base=THESE_CLASSES)
    argv = ["--params", str(params), "--raw", str(raw), "--split", str(tmp_path / "split.csv"),
            "--out", str(tmp_path / "o.csv"), "--sheet", str(tmp_path / "o.png"), "--report", str(tmp_path / "o.json")]
    with pytest.raises(SystemExit, match=r"label_review: MobileNetV2: weights file .*nope\.h5 does not exist"):
        main(argv)
    assert not (tmp_path / "o.csv").exists()
    random = shrunk(tmp_path, label_review={"architecture": "SmallCNN", "weights": "none"}, base=THESE_CLASSES)
    with pytest.raises(WeightsUnavailable, match="needs pretrained features"):
        run(random, Inputs(raw, tmp_path / "split.csv"),
            Outputs(out=tmp_path / "o.csv", sheet=tmp_path / "o.png", report=tmp_path / "o.json"))


def test_empty_sheet_says_nothing_was_flagged(tmp_path):
    empty = pd.DataFrame(columns=["path", "label", "suggested_label", "label_quality", "rank"])
    draw_label_issue_sheet(empty, tmp_path, 24, tmp_path / "empty.png")
    assert Image.open(tmp_path / "empty.png").size[0] > 0
