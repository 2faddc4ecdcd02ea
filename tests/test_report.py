"""The run report, the Prefect decision summary and offline Data Docs, on the paths one small run
does not take: a challenger with a paired comparison, a version awaiting approval, a missing value,
hostile file names and reasons."""
import json

import pandas as pd
from PIL import Image

from flows.artifacts import decision_markdown, leaderboard_rows
from pipeline import datadocs
from pipeline.report import render

COMPARISON = {"new": 0.91, "old": 0.87, "difference": 0.04, "lower": -0.02, "upper": 0.10,
              "one_sided_lower": -0.01, "confidence": 0.95, "method": "Paired: sign-flip over 40 duplicate groups"}


def reports_dir(tmp_path, alias: str, comparison: dict | None):
    reports = tmp_path / "reports"
    (reports / "evaluate" / "gradcam").mkdir(parents=True)
    registry = {"model_name": "m", "version": 7, "alias": alias, "reason": "difference +0.040, not shown <b>",
                "rule": "superiority", "select_by": "balanced_accuracy", "comparison": comparison,
                "champion_before": {"version": 6, "data_version": "d"}}
    (reports / "registry.json").write_text(json.dumps(registry))
    (reports / "metrics.json").write_text(json.dumps({"select_by": "balanced_accuracy",
                                                      "best": {"architecture": "A", "run_id": "r"}}))
    (reports / "validation.json").write_text(json.dumps({"files": 3, "ok": 2, "excluded": 1, "suite_success": True,
                                                         "per_class": {"a": 1, "b": 1}, "data_version": "abc.dir"}))
    pd.DataFrame([{"architecture": "A", "chosen": True, "val_balanced_accuracy": 0.9,
                   "test_balanced_accuracy": float("nan"), "test_balanced_accuracy_low": None,
                   "test_balanced_accuracy_high": None, "test_roc_auc": 0.8}]).to_csv(reports / "leaderboard.csv",
                                                                                     index=False)
    Image.new("RGB", (8, 8)).save(reports / "evaluate" / "A_test_confusion.png")
    (reports / "model_card.md").write_text("# Card\n\n> **Research use only.**\n\n<script>alert(1)</script>\n")
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame([{"path": 'a/<img src=x onerror=alert(1)>".jpg', "sha256": "ab" * 32, "status": "excluded",
                   "reason": "empty file <b>"},
                  {"path": "a/ok.jpg", "sha256": "cd" * 32, "status": "ok", "reason": ""}]).to_csv(manifest, index=False)
    return reports, manifest, registry


def test_report_of_a_challenger_shows_the_paired_comparison_and_escapes_names(tmp_path):
    reports, manifest, _ = reports_dir(tmp_path, "challenger", COMPARISON)
    page = render(reports, manifest, tmp_path / "none.csv", reports / "model_card.md")
    assert "m v7 &rarr; @challenger" in page and 'class="decision other"' in page
    assert "-0.020 to 0.100" in page and "Paired: sign-flip" in page  # the interval and its method
    assert "not shown &lt;b&gt;" in page  # the reason is text, not markup
    assert "onerror" not in page and "ab" * 6 in page  # an excluded file by its ID, never its (hostile) name
    assert "empty file &lt;b&gt;" in page
    assert "<script>" not in page and "<blockquote>" in page  # the card's HTML is inert, its markdown kept
    assert page.count("not measured") >= 3  # NaN score and missing interval bounds
    assert "data:image/png;base64," in page and "https://" not in page


def test_report_of_a_version_awaiting_approval_without_a_champion(tmp_path):
    reports, manifest, _ = reports_dir(tmp_path, "awaiting_approval", None)
    page = render(reports, manifest, tmp_path / "none.csv", reports / "model_card.md")
    assert "@awaiting_approval" in page and "No champion to compare with" in page
    assert "register has not run" not in page


def test_decision_summary_for_prefect(tmp_path):
    _, _, registry = reports_dir(tmp_path, "challenger", COMPARISON)
    text = decision_markdown(registry, {"select_by": "balanced_accuracy", "best": {"architecture": "A"}},
                             "abcdef123456.dir", {"message": "model v7 is challenger: ..."})
    assert text.startswith("## m v7 → @challenger") and "`abcdef12`" in text
    assert "| 95% interval | -0.020 to 0.100 |" in text and "Outcome" not in text
    asked = decision_markdown(registry, {}, "abc", {"message": "v7 awaits a clinician's approval"})
    assert "Outcome: v7 awaits a clinician's approval" in asked
    rows = leaderboard_rows(pd.DataFrame([{"architecture": "A", "test": float("nan"), "val": 0.123456}]))
    assert rows == [{"architecture": "A", "test": None, "val": 0.1235}]  # JSON-safe: no NaN


def test_data_docs_pages_point_at_local_copies(tmp_path):
    if not datadocs.installed():
        import pytest
        pytest.fail(f"Data Docs assets missing in {datadocs.vendor_dir()}: run make install")
    page = tmp_path / "validations" / "images" / "run" / "p.html"
    page.parent.mkdir(parents=True)
    page.write_text('<script src="https://cdn.jsdelivr.net/npm/vega@5"></script>'
                    '<link href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css">'
                    "<p>Data asset: None</p>")
    assert datadocs.localize(tmp_path, {"images": "images: the usable images"}) == 1
    text = page.read_text()
    assert "https://" not in text and "Data asset: images: the usable images" in text
    assert 'src="../../../static/vendor/vega@5.33.1/build/vega.min.js"' in text
    assert (tmp_path / "static" / "vendor" / "vega@5.33.1" / "build" / "vega.min.js").is_file()
