"""Nothing identifying leaves data/raw, and the check fails closed (pipeline/privacy.py).

Planted phone photos (tests/planted.py: GPS, dates, a serial, owner, XMP, IPTC, an EXIF thumbnail and
PHI-looking names in JPEG, MPO, HEIC, PNG and TIFF) go through the data stages, augment and the report
page; then the check passes and a byte search of every file written finds none of the planted values.
The same search over the MLflow store, the bucket and Prefect runs in tests/test_stack.py.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import privacy
from tests.conftest import ROOT, data_stages, shrunk
from tests.planted import plant

# outputs dvc.yaml marks local-only, by the file names the tests' stages write them under
LOCAL_ONLY = {"manifest.csv", "identifiers.csv", "groups.csv", "split.csv", "ledger.csv", "conflicts.csv",
              "augmented.csv"}


def every_file(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def ran(demo_raw, tmp_path_factory):
    """validate -> dedup -> split -> augment -> the report page, on the demo images plus the planted ones."""
    from pipeline import augment, report
    from pipeline.pixels import cache_dir

    tmp = tmp_path_factory.mktemp("privacy")
    raw = tmp / "data" / "raw"
    shutil.copytree(demo_raw, raw)
    planted = plant(raw)
    params = shrunk(tmp, validate={"min_images_per_class": 5}, augment={"target_per_class": 45})
    work = tmp / "out"
    data_stages(params, raw, work)
    augment.run(params, augment.Inputs(raw, work / "split.csv"),
                augment.Outputs(out=work / "augmented", listing=work / "augmented.csv"))
    (work / "index.html").write_text(report.render(work, work / "manifest.csv", work / "quarantine" / "conflicts.csv",
                                                   work / "model_card.md"), encoding="utf-8")
    written = every_file(work) + every_file(cache_dir(raw))
    leaving = [p for p in every_file(work) if p.name not in LOCAL_ONLY and "docs" not in p.relative_to(work).parts]
    return {"raw": raw, "work": work, "planted": planted, "written": written, "leaving": leaving,
            "images": [p for p in written if privacy.is_image(p)]}


def search(ran) -> dict:
    listed = pd.read_csv(ran["work"] / "manifest.csv", keep_default_na=False, dtype=str)
    table = pd.read_csv(ran["work"] / "identifiers.csv", keep_default_na=False, dtype=str)
    return privacy.needles(listed, table)


def test_planted_identifiers_are_collected_locally(ran):
    table = pd.read_csv(ran["work"] / "identifiers.csv", keep_default_na=False, dtype=str)
    assert set(ran["planted"]["values"]) <= set(table.value)  # the check knows every planted value
    manifest = pd.read_csv(ran["work"] / "manifest.csv", keep_default_na=False)
    planted = manifest[manifest.path.str.contains("Jane Doe|Smith|7781|Roe|Poe")]
    assert len(planted) == 6 and (planted.status == "ok").all(), planted[["path", "reason"]]
    assert set(planted.format) == {"JPEG", "MPO", "HEIF", "PNG", "TIFF"}
    assert "Planted PhoneCam 9" in set(manifest.camera)  # make/model kept, on its own, for the shift check


def test_the_check_passes_and_no_planted_value_is_in_any_file_written(ran):
    assert privacy.check(ran["leaving"], ran["images"], search(ran), ran["work"]) == []
    assert len(ran["images"]) > 150 and any(p.suffix == ".png" and "quarantine" in p.parts for p in ran["images"])
    values = [v.encode() for v in ran["planted"]["values"]] + ran["planted"]["thumbnails"]
    for path in ran["written"]:
        if path.name != "identifiers.csv":  # the local table of what to search for
            data = path.read_bytes()
            assert not [v for v in values if v in data], path
    names = [n.encode() for n in ran["planted"]["names"]]
    for path in ran["leaving"]:
        data = path.read_bytes() + path.name.encode()
        assert not [n for n in names if n in data], path


def test_quarantine_copies_are_the_same_pixels_without_metadata_or_names(ran):
    from pipeline.images import load_rgb

    sheet = pd.read_csv(ran["work"] / "quarantine" / "conflicts.csv", keep_default_na=False)
    opened = sheet[sheet.status == "open"]
    assert "cancer/referral 2023-114 Jane Doe.jpg" in set(opened.path)
    for row in opened.itertuples():
        copy = ran["work"] / "quarantine" / row.quarantined_copy
        assert copy.name == f"{row.current_label}__{row.sha256[:12]}.png"
        assert privacy.metadata_in_image(copy) == []
        with Image.open(copy) as image:
            assert np.array_equal(np.asarray(image), np.asarray(load_rgb(ran["raw"] / row.path)))


def test_report_and_split_name_images_by_id(ran):
    page = (ran["work"] / "index.html").read_text()
    manifest = pd.read_csv(ran["work"] / "manifest.csv", keep_default_na=False)
    excluded = manifest[manifest.status == "excluded"]
    assert len(excluded) and all(sha[:12] in page for sha in excluded.sha256)
    assert not [p for p in excluded.path if p in page]
    assert all(p.name.split("__")[0] in ("image",) or len(p.name.split("__")[0]) == 12
               for p in (ran["work"] / "augmented").rglob("*.png"))


def test_a_copy_with_metadata_fails_the_check_naming_the_file(ran, tmp_path):
    leak = tmp_path / "reports" / "leak.jpg"
    leak.parent.mkdir()
    shutil.copyfile(ran["raw"] / "cancer" / "referral 2023-114 Jane Doe.jpg", leak)
    found = privacy.check([], [leak], search(ran), tmp_path)
    assert any(f.startswith("reports/leak.jpg: a JPEG APP1 segment") for f in found), found
    assert any("APP13" in f for f in found) and any("second JPEG image" in f for f in found)
    from PIL.PngImagePlugin import PngInfo

    png, info = tmp_path / "text.png", PngInfo()
    info.add_text("Comment", "x")
    Image.open(leak).save(png, pnginfo=info)
    assert privacy.check([], [png], {}, tmp_path) == ["text.png: a PNG tEXt chunk"]


def test_names_paths_and_metadata_values_in_a_file_that_leaves_fail_the_check(ran, tmp_path):
    from pipeline.privacy import PrivacyLeak

    needles = search(ran)
    sha = pd.read_csv(ran["work"] / "manifest.csv").set_index("path").sha256["precancer/MRN 00412 Smith.mpo"]
    cases = {"name.json": json.dumps({"example": "MRN 00412 Smith"}),  # the stem alone
             "path.html": "<td>data/raw/precancer/MRN 00412 Smith.mpo</td>",
             "serial.csv": "camera,serial\nx,SN-77881299\n",
             "gps.txt": "where: 40.4201, -3.7020\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    found = privacy.check(sorted(tmp_path.iterdir()), [], needles, tmp_path)
    assert f"name.json: the file name of image {sha[:12]}" in found
    assert f"path.html: the path of image {sha[:12]}" in found
    assert any(f.startswith("serial.csv: the body serial number of image") for f in found)
    assert any(f.startswith("gps.txt: the GPS latitude") for f in found) and any("GPS longitude" in f for f in found)
    assert not [f for f in found if "SN-77881299" in f or "Smith" in f]  # named, never repeated in the log
    # and on a project, the check raises (the report stage fails) naming them
    project = tmp_path / "project"
    (project / "reports").mkdir(parents=True)
    shutil.copy(ROOT / "dvc.yaml", project)
    shutil.copy(ROOT / "params.yaml", project)
    (project / "reports" / "summary.json").write_text(cases["path.html"])
    with pytest.raises(PrivacyLeak, match="reports/summary.json: the path of image"):
        privacy.run_check(project, ran["raw"], ran["work"] / "manifest.csv", ran["work"] / "identifiers.csv")


def test_single_words_are_searched_as_whole_file_names():
    assert privacy.named_stem("referral 2023-114") and privacy.named_stem("IMG_0231") and privacy.named_stem("Jane Doe")
    assert not privacy.named_stem("truncated") and not privacy.named_stem("a 1")


def test_dvc_yaml_marks_the_outputs_that_may_name_originals_local_only():
    declared = dict(privacy.declared_outputs(ROOT))
    local = {name for name, is_local in declared.items() if is_local}
    assert local == {"data/interim/manifest.csv", "data/interim/identifiers.csv", "data/interim/groups.csv",
                     "data/interim/augmented.csv", "data/quarantine/conflicts", "data/splits/split.csv",
                     "data/splits/ledger.csv", "reports/validation", "reports/label_issues.csv"}
    assert declared["reports/index.html"] is False and declared["export"] is False
    assert "models/MobileNetV2" in declared and "models/${key}" not in declared  # foreach expanded


def test_folder_names_that_look_identifying_are_searched_too():
    listed = pd.DataFrame({"path": ["Jane Doe 2023/scan.jpg"], "sha256": ["ab" * 32]})
    search = privacy.needles(listed, pd.DataFrame(columns=privacy.COLUMNS))
    assert search[b"Jane Doe 2023"] == "the folder name of image " + "ab" * 6
    assert b"scan" not in search and search[b"scan.jpg"] == "the file name of image " + "ab" * 6


def test_a_short_original_name_is_not_found_inside_an_id_named_file():
    listed = pd.DataFrame({"path": ["normal/21.png"], "sha256": ["cd" * 32]})
    search = privacy.needles(listed, pd.DataFrame(columns=privacy.COLUMNS))
    assert not any(privacy.found(n, w, b"cdcdcdcdcdcd__aug0_21.png") for n, w in search.items())
    assert any(privacy.found(n, w, b'{"file": "21.png"}') for n, w in search.items())


def test_one_pass_per_file_finds_what_searching_each_needle_finds(tmp_path):
    """The automaton (one read per file) against the plain search, needle by needle: overlapping needles
    (a name inside its path), non-ASCII names in both Unicode forms, a zip member, a name inside a word."""
    import zipfile

    listed = pd.DataFrame({"path": ["cancer/José Núñez 2021.jpg", "normal/21.png", "precancer/IMG_0231.heic"],
                           "sha256": ["ab" * 32, "cd" * 32, "ef" * 32]})
    table = pd.DataFrame({"sha256": ["ab" * 32], "kind": ["body serial number"], "value": ["SN-0042"]})
    search = privacy.needles(listed, table)
    files = {"a.html": "<td>data/raw/cancer/Jos&#233; N&#250;&#241;ez 2021.jpg</td>".replace("&#233;", "é")
                       .replace("&#250;", "ú").replace("&#241;", "ñ"),
             "b.json": json.dumps({"x": "José Núñez 2021"}, ensure_ascii=True),
             "c.txt": "cdcdcdcdcdcd__aug0_21.png, serial SN-0042",
             "d.txt": __import__("unicodedata").normalize("NFD", "precancer/IMG_0231.heic and José Núñez 2021"),
             "e.txt": "nothing here"}
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    with zipfile.ZipFile(tmp_path / "model.keras", "w") as z:
        z.writestr("config.json", '{"name": "21.png"}')
    paths = sorted(tmp_path.iterdir())
    plain = []
    for path in paths:
        blobs = privacy.contents(path)
        plain += [f"{path.name}: {w}" for w in sorted({w for n, w in search.items()
                                                       if any(privacy.found(n, w, b) for b in blobs)})]
    assert sorted(privacy.check(paths, [], search, tmp_path)) == sorted(plain)
    assert len({f.split(":")[0] for f in plain}) == 5  # every file but e.txt has a finding
    assert "c.txt: the body serial number of image " + "ab" * 6 in plain
    assert not any(f.startswith("c.txt: the file name") for f in plain)  # 21.png inside an ID-named file


def test_the_command_passes_on_a_clean_project_and_exits_naming_a_leak(ran, tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    (project / "data" / "interim").mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, project)
    (project / "data" / "raw").symlink_to(ran["raw"])
    for name in ("manifest.csv", "identifiers.csv"):
        shutil.copy(ran["work"] / name, project / "data" / "interim" / name)
    shutil.copytree(ran["work"] / "quarantine", project / "data" / "quarantine" / "conflicts")
    monkeypatch.chdir(project)
    privacy.main([])
    assert "privacy: " in capsys.readouterr().out
    (project / "export").mkdir()
    shutil.copy(ran["raw"] / "precancer" / "MRN 00412 Smith.mpo", project / "export" / "sample.jpg")
    with pytest.raises(SystemExit, match=r"export/sample.jpg: a JPEG APP1 segment"):
        privacy.main([])
