"""pipeline.plots_page: `dvc plots show` writes a page that draws the confusion matrices with no network
(in Debian's chromium, every non-file request refused); `dvc metrics show` prints one readable line."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def dvc(cwd: Path, *args: str) -> str:
    done = subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture
def repo(tmp_path) -> Path:
    """A DVC repo with the project's dvc.yaml and a confusion plot and summary as evaluate and report write them."""
    from pipeline import datadocs

    if not datadocs.installed():
        pytest.skip(f"page assets not in {datadocs.vendor_dir()} (make install fetches them)")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc(tmp_path, "init", "-q")
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "reports" / "confusion").mkdir(parents=True)
    rows = [{"actual": a, "predicted": p} for a, p in [("cancer", "cancer")] * 5 + [("normal", "cancer"), ("normal", "normal")]]
    (tmp_path / "reports" / "confusion" / "SmallCNN.json").write_text(json.dumps(rows))
    return tmp_path


def test_dvc_plots_page_draws_with_no_network(repo):
    from pipeline.plots_page import install

    install(repo)
    assert "html_template = ../.vendor/dvc-plots.html" in (repo / ".dvc" / "config.local").read_text()
    dvc(repo, "plots", "show", "-o", "plots")  # plain `dvc plots show`: the template comes from DVC's config
    page = (repo / "plots" / "index.html").read_text()
    assert "<script src=" not in page and "cdn.jsdelivr" not in page
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        page_ = browser.new_page()
        refused = []
        page_.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                    else (refused.append(route.request.url), route.abort("internetdisconnected")))
        page_.goto((repo / "plots" / "index.html").as_uri())
        page_.wait_for_selector(".vega-embed canvas", timeout=30000)  # Vega drew the matrix on a canvas
        inked = page_.evaluate("""() => { const c = document.querySelector('.vega-embed canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && d[i] + d[i + 1] + d[i + 2] < 600) n++;
            return n; }""")
        browser.close()
    assert inked > 500 and not refused, (inked, refused)  # cells, axes and labels are drawn; nothing fetched


def test_metrics_show_prints_one_short_line(repo):
    """Only reports/summary.json is declared as metrics; the full JSON reports stay outputs."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    declared = [next(iter(m)) if isinstance(m, dict) else m for s in spec.values()
                for m in s.get("do", s).get("metrics") or []]
    assert declared == ["reports/summary.json"]
    from pipeline.report import summary

    (repo / "reports" / "metrics.json").write_text(json.dumps(example_metrics()))
    (repo / "reports" / "registry.json").write_text(json.dumps({"alias": "champion", "version": 3}))
    (repo / "reports" / "validation.json").write_text(json.dumps({"data_version": "0b2cc7aba298.dir", "ok": 313,
                                                                  "excluded": 9}))
    flat = summary(repo / "reports")
    assert all(not isinstance(v, (dict, list)) for v in flat.values())
    (repo / "reports" / "summary.json").write_text(json.dumps(flat))
    shown = dvc(repo, "metrics", "show")
    assert max(len(line) for line in shown.splitlines()) < 200, shown
    assert "0b2cc7ab" in shown and "champion" in shown and "sens_cancer" in shown


def example_metrics() -> dict:
    test = {"balanced_accuracy": 0.9123, "sensitivity_cancer": 0.85, "sensitivity_precancer": 0.8}
    return {"select_by": "balanced_accuracy",
            "architectures": {"SmallCNN": {"test": test}},
            "best": {"architecture": "SmallCNN", "val_value": 0.95, "test_value": 0.9123,
                     "test_interval": {"low": 0.81, "high": 0.97}}}
