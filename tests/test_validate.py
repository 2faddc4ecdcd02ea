import json
import re
import zlib

import pandas as pd
import pytest

from pipeline.validate import COLUMNS, Inputs, Outputs, ValidationFailed, main, precheck, run
from tests.conftest import SMALL_DATA, noise_image, shrink_params, shrunk, tree_digest

CLASSES = ("normal", "precancer", "cancer")


@pytest.mark.parametrize("rel, reason", [
    ("normal/.DS_Store", "hidden file"),
    (".hidden/a.jpg", "hidden file"),
    ("loose.jpg", "not inside a class folder"),
    ("unsorted/a.jpg", "top folder is not one of the classes"),
])
def test_precheck_reasons(rel, reason):
    from pathlib import Path
    assert reason in precheck(Path(rel), CLASSES)


def test_precheck_accepts_class_files():
    from pathlib import Path
    assert precheck(Path("cancer/lésion 01.jpg"), CLASSES) is None


def run_validate(tmp_path, raw, params):
    out = tmp_path / "out"
    summary = run(params, Inputs(raw), Outputs(out / "manifest.csv", out / "docs", out / "summary.json"))
    return summary, pd.read_csv(out / "manifest.csv", keep_default_na=False), out


def test_demo_folder_is_validated_and_every_bad_file_explained(tmp_path, demo_raw, small_params):
    before = tree_digest(demo_raw)
    summary, manifest, out = run_validate(tmp_path, demo_raw, small_params)
    assert list(manifest.columns) == COLUMNS + ["folder_label", "decision"]
    assert len(manifest) == len(before)  # every file is listed, none silently dropped
    reasons = dict(zip(manifest.path, manifest.reason))
    assert reasons["normal/empty.png"].startswith("empty file")
    assert reasons["normal/scan_broken.jpg"].startswith("not a readable image")
    assert reasons["precancer/notes.jpg"].startswith("not a readable image")
    assert reasons["cancer/truncated.jpg"].startswith("truncated or corrupt")
    assert "decompression bomb" in reasons["precancer/bomb.png"]
    assert reasons["cancer/.DS_Store"].startswith("hidden file")
    assert "smaller than" in reasons["normal/thumbnail.jpg"]
    assert "not one of the classes" in reasons["unsorted/unsorted_0.jpg"]
    excluded = manifest[manifest.status == "excluded"]
    assert (excluded.reason != "").all() and (manifest[manifest.status == "ok"].reason == "").all()
    odd = manifest.set_index("path")
    assert odd.loc["precancer/plaque 16bit.png", "status"] == "ok"
    assert odd.loc["cancer/ulcer cmyk.jpg", "mode"] == "CMYK"
    assert odd.loc["normal/口腔 palette.png", "status"] == "ok"
    assert tuple(odd.loc["cancer/phone photo.jpg", ["width", "height"]]) == (200, 150)  # EXIF-oriented
    assert summary["suite_success"] and (out / "docs" / "index.html").is_file()
    assert json.loads((out / "summary.json").read_text())["excluded"] == len(excluded)
    for page in (out / "docs").rglob("*.html"):  # no page loads anything from the network (offline hospital PCs)
        loads = re.findall(r"<(?:script|link|img)[^>]*(?:src|href)=[\"'](https?://[^\"']+)", page.read_text())
        assert loads == [], (page.name, loads)
    assert tree_digest(demo_raw) == before  # data/raw is never modified


def test_suite_failure_names_each_broken_expectation(tmp_path, demo_raw):
    params = shrunk(tmp_path, validate={"min_images_per_class": 1000, "max_excluded_share": 0.001})
    with pytest.raises(ValidationFailed) as err:
        run_validate(tmp_path, demo_raw, params)
    message = str(err.value)
    assert "every class has at least 1000 usable images" in message and "normal:" in message
    assert "at most 0% of files may be excluded" in message
    assert (tmp_path / "out" / "docs" / "index.html").is_file()  # docs are written even on failure


def test_missing_class_fails_the_suite(tmp_path, small_params):
    raw = tmp_path / "raw"
    for label in ("normal", "cancer"):
        for i in range(6):
            (raw / label).mkdir(parents=True, exist_ok=True)
            noise_image(zlib.crc32(f"{label}{i}".encode()) % 10_000).save(raw / label / f"{i}.png")
    with pytest.raises(ValidationFailed, match="precancer: 0"):
        run_validate(tmp_path, raw, small_params)


def test_missing_raw_folder_is_a_clear_error(tmp_path, small_params):
    with pytest.raises(ValidationFailed, match="does not exist"):
        run_validate(tmp_path, tmp_path / "nope", small_params)


def test_missing_data_docs_assets_leave_plain_pages_not_a_failure(tmp_path, demo_raw, monkeypatch, capsys):
    """The page assets come from npm at install time (`make install`): a checkout without them still
    validates and writes its Data Docs, and says how to get them."""
    empty = tmp_path / "no-assets"
    empty.mkdir()
    monkeypatch.setenv("DATADOCS_ASSETS", str(empty))
    out = tmp_path / "out"
    main(["--params", str(shrink_params(tmp_path, **SMALL_DATA)), "--raw", str(demo_raw),
          "--manifest", str(out / "manifest.csv"), "--docs", str(out / "docs"), "--summary", str(out / "summary.json")])
    printed = capsys.readouterr().out
    assert "usable" in printed and (out / "docs" / "index.html").is_file()
    assert [line for line in printed.splitlines() if "python -m pipeline.datadocs --install" in line] == [
        f"validate: the Data Docs pages in {out / 'docs'} will look plain (no page assets in {empty}) until "
        f"`python -m pipeline.datadocs --install` is run"]
    assert not (out / "docs" / "static" / "vendor").exists()
