import json

import pandas as pd
from PIL import Image, ImageEnhance

from pipeline.dedup import HASHES, build_groups, compute_hash, group_contents
from pipeline.params import HASH_KINDS
from tests.conftest import data_stages, noise_image, tree_digest


def test_every_hash_kind_params_allow_has_a_hash_function():
    assert sorted(HASHES) == sorted(HASH_KINDS)


def distance(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def test_hash_identical_near_and_distinct(tmp_path):
    noise_image(1, (160, 160)).save(tmp_path / "a.png")
    noise_image(1, (160, 160)).save(tmp_path / "same.png")
    near = ImageEnhance.Brightness(noise_image(1, (160, 160))).enhance(1.05).resize((140, 140))
    near.save(tmp_path / "near.jpg", quality=75)
    noise_image(2, (160, 160)).save(tmp_path / "other.png")
    h = {p: compute_hash(tmp_path / p, "phash", 8) for p in ("a.png", "same.png", "near.jpg", "other.png")}
    assert h["a.png"] == h["same.png"]
    assert distance(h["a.png"], h["near.jpg"]) <= 6
    assert distance(h["a.png"], h["other.png"]) > 12


def test_hash_is_computed_on_oriented_rgb_pixels(tmp_path):
    noise_image(3, (120, 90)).save(tmp_path / "a.png")
    noise_image(3, (120, 90)).convert("RGBA").save(tmp_path / "rgba.png")
    assert compute_hash(tmp_path / "a.png", "dhash", 8) == compute_hash(tmp_path / "rgba.png", "dhash", 8)


def test_groups_are_transitive_and_named_by_smallest_member():
    group_of, copies = group_contents({"c": 0b0, "a": 0b11, "b": 0b1111, "z": 2**63 - 1}, max_distance=2, bits=64,
                                      strict_distance=0)
    assert group_of["a"] == group_of["b"] == group_of["c"] == "ga"  # c~a and a~b link c to b
    assert group_of["z"] == "gz"
    assert len(set(copies.values())) == 4  # no two hashes are equal: no copies


def test_only_near_identical_copies_with_different_labels_are_conflicts():
    images = pd.DataFrame({"path": ["n/a.jpg", "c/a rescan.jpg", "n/b.jpg", "c/look-alike.jpg"],
                           "label": ["n", "c", "n", "c"], "sha256": ["a", "a2", "b", "b2"]})
    hashes = {"a": 0, "a2": 0b1, "b": 2**40 - 1, "b2": (2**40 - 1) ^ 0b111111}  # a~a2 at 1 bit, b~b2 at 6 bits
    group_of, copies = group_contents(hashes, max_distance=6, bits=64, strict_distance=2)
    groups = build_groups(images, group_of, copies).set_index("path")
    assert groups.loc["n/a.jpg", "conflict"] and groups.loc["c/a rescan.jpg", "conflict"]
    assert not groups.loc["n/b.jpg", "conflict"] and groups.loc["n/b.jpg", "mixed_labels"]
    assert groups.loc["n/b.jpg", "group_id"] == groups.loc["c/look-alike.jpg", "group_id"]  # still one split


def test_conflicts_and_exact_copies():
    images = pd.DataFrame({"path": ["n/1.jpg", "c/1.jpg", "n/2.jpg", "n/2 copy.jpg", "n/3.jpg"],
                           "label": ["n", "c", "n", "n", "n"],
                           "sha256": ["s1", "s1", "s2", "s2", "s3"]})
    groups = build_groups(images, {"s1": "g1", "s2": "g2", "s3": "g3"}).set_index("path")
    assert groups.loc["n/1.jpg", "conflict"] and groups.loc["c/1.jpg", "conflict"]
    assert not groups.loc["n/2.jpg", "conflict"]
    assert groups.loc["n/2 copy.jpg", "group_id"] == groups.loc["n/2.jpg", "group_id"] == "g2"
    assert groups.loc["n/2.jpg", "duplicate_of"] == ""
    assert groups.loc["n/2 copy.jpg", "duplicate_of"] == "n/2.jpg"
    assert not groups.mixed_labels.any()


def test_stage_on_demo_data(tmp_path, demo_raw, small_params):
    before = tree_digest(demo_raw)
    out = tmp_path / "out"
    summary = data_stages(small_params, demo_raw, out, upto="dedup")["dedup"]
    groups = pd.read_csv(out / "groups.csv", keep_default_na=False)
    ok = pd.read_csv(out / "manifest.csv", keep_default_na=False).query("status == 'ok'")
    assert sorted(groups.path) == sorted(ok.path)  # every usable image has a group
    assert summary["exact_duplicate_images"] == 3 + 1  # three copies plus the one filed twice
    assert summary["conflict_groups"] == 1 and summary["conflict_images"] == 2
    conflict = groups[groups.conflict.astype(str) == "True"]
    assert set(conflict.path) == {"cancer/referral 2023-114.jpg", "normal/normal_003.jpg"}
    sheet = pd.read_csv(out / "quarantine" / "conflicts.csv", keep_default_na=False)
    assert set(sheet.path) == set(conflict.path) and "correct_label" in sheet.columns
    for copy in sheet.quarantined_copy:
        assert (out / "quarantine" / copy).is_file()
    near = groups[groups.path.str.contains("rescan")]
    for row in near.itertuples():  # every re-encoded scan joins its original
        original = row.path.replace("_rescan.jpg", ".jpg").replace(".jpg", "")
        assert (groups[groups.path.str.startswith(original)].group_id == row.group_id).sum() >= 2
    assert groups.perceptual_hash.str.fullmatch(r"phash:8:[0-9a-f]+").all()  # the kind and size params chose
    assert Image.open(out / "dedup_groups.png").size[0] > 0
    assert tree_digest(demo_raw) == before  # copied, never moved


def test_rerun_hashes_only_new_images(tmp_path, small_params):
    raw = tmp_path / "raw"
    for k, label in enumerate(("normal", "precancer", "cancer")):
        (raw / label).mkdir(parents=True)
        for i in range(5):  # fixed seeds: hash() of a str changes per process, and two images once came out alike
            noise_image(1000 * k + i).save(raw / label / f"{i}.png")
    out = tmp_path / "out"

    def stage():
        return data_stages(small_params, raw, out, upto="dedup")["dedup"]

    assert stage()["hashed_now"] == 15
    assert stage()["hashed_now"] == 0
    noise_image(999).save(raw / "cancer" / "new.png")
    second = stage()
    assert (second["hashed_now"], second["hashed_from_cache"]) == (1, 15)
    assert len(json.loads((out / "hash_cache.json").read_text())) == 16


def test_hash_of_the_preview_validate_kept_is_the_hash_of_the_file(tmp_path):
    """dedup hashes the preview validate kept (no second decode of the 12 MP original); a preview
    made on a cache miss gives the same hash, and both stay within 2 bits of the full-size hash."""
    import imagehash

    from pipeline import pixels
    from pipeline.dedup import compute_hash, hash_image
    from pipeline.images import load_rgb
    from tests.conftest import noise_image

    root = tmp_path / "pixels"
    for seed in range(4):
        path = tmp_path / f"{seed}.jpg"
        noise_image(seed, (4000, 3000)).save(path, quality=90)
        pixels.store(root, f"sha{seed}", path, (224,), 40_000_000)
        kept = pixels.preview(root, f"sha{seed}", path)
        assert min(kept.size) == pixels.PREVIEW_SIDE
        assert hash_image(kept, "phash", 8) == compute_hash(path, "phash", 8)
        full = imagehash.phash(load_rgb(path), hash_size=8).hash.flatten()
        expected = int("".join("1" if b else "0" for b in full), 2)
        assert bin(compute_hash(path, "phash", 8) ^ expected).count("1") <= 2, seed
