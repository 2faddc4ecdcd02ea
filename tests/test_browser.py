"""What a person sees, in a real browser: Debian's chromium, headless, driven by Playwright.

One small retrain run against a real Prefect server, then: the MLflow UI (served on loopback)
lists the architecture runs under the pipeline run and the champion's page shows its model card;
Data Docs and reports/index.html open from disk with every network request refused and still
show their results; the Prefect UI shows the run's decision and leaderboard as artifacts.
Checks read the rendered page (innerText), not the HTML source. Screenshots are kept in
test-artifacts/browser/ (or $TEST_ARTIFACTS).
"""
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED, free_port, prefect_server_at, scratch_workspace, server
from tests.conftest import TINY_PIPELINE

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
MODEL = "oralscan-classifier"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One retrain flow run on a scratch project (tiny params), against a real Prefect server."""
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium (make browser)")
    if not (SHARED / "weights" / "keras").is_dir():
        pytest.skip("shared ImageNet weights not found")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.retrain import retrain

    tmp = tmp_path_factory.mktemp("browser")
    root = scratch_workspace(tmp, TINY_PIPELINE)
    shutil.copytree(SHARED / "weights" / "keras", tmp / "keras_home")
    with pytest.MonkeyPatch.context() as mp, prefect_server_at(tmp / "prefect") as env:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("KERAS_HOME", str(tmp / "keras_home"))
        mp.chdir(root)
        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
            outcome = retrain(str(root))
            assert outcome["status"] == "trained", outcome
            yield {"root": root, "outcome": outcome, "prefect": env["PREFECT_API_URL"],
                   "version": outcome["data_version"].removesuffix(".dir")[:8],
                   "registry": json.loads((root / "reports" / "registry.json").read_text())}


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # no browser download: the system's chromium; host names resolve nowhere (file pages: no network)
        yield p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])


def open_page(browser, url: str, offline: bool = False):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.requests = []
    page.on("request", lambda r: page.requests.append(r.url))
    if offline:  # refuse everything that is not a local file: what a hospital PC without network does
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                   else route.abort("internetdisconnected"))
    page.goto(url)
    return page


def shoot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_mlflow_ui_lists_architecture_runs_under_the_pipeline_run(run, browser):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run['root'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("oralscan")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    port, v = free_port(), run["version"]
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{run['root'] / 'mlflow.db'}", "--workers", "1"]
    with server(cmd, f"http://127.0.0.1:{port}/health", "the MLflow UI"):
        page = open_page(browser, f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}"
                                  "?workflowType=machine_learning")
        parent = page.get_by_text(f"pipeline data {v}").first
        parent.wait_for(timeout=60_000)
        assert "SmallCNN" not in page.inner_text("body")  # children are nested: hidden until expanded
        row = parent.locator("xpath=ancestor::div[@role='row'][1]")
        row.locator("button[data-component-id*='runnamecellrenderer']").click()
        for arch in ("MobileNetV2", "SmallCNN"):
            page.get_by_text(f"{arch} data {v}").first.wait_for(timeout=30_000)
        shoot(page, "mlflow_experiment_runs")

        version = run["registry"]["version"]
        page = open_page(browser, f"http://127.0.0.1:{port}/#/models/{MODEL}/versions/{version}")
        page.get_by_text(f"Model card: {MODEL} version {version}").first.wait_for(timeout=60_000)
        page.get_by_text(f"MobileNetV2 data {v}").first.wait_for(timeout=60_000)  # "Source Run": the link to its run
        text = page.inner_text("body")
        assert "Research use only" in text
        assert re.search(r"Aliases\s*:\s*@\s*" + run["registry"]["alias"], text), text[:1500]  # the alias chip
        shoot(page, "mlflow_champion_version")


def test_data_docs_show_validation_results_with_no_network(run, browser):
    docs = run["root"] / "reports" / "validation"
    page = open_page(browser, (docs / "index.html").as_uri(), offline=True)
    page.get_by_text(f"data-{run['version']}").first.wait_for(timeout=30_000)  # rows built by bootstrap-table
    text = page.inner_text("body")
    assert {"files", "images", "classes"} <= set(text.split()), text[:2000]
    shoot(page, "datadocs_index")
    assert [u for u in page.requests if not u.startswith("file:")] == []  # nothing asked of the network

    detail = next((docs / "validations" / "images").rglob("*.html"))
    page = open_page(browser, detail.as_uri(), offline=True)
    page.get_by_text("Data asset: images: the usable images").first.wait_for(timeout=30_000)
    # bootstrap styled the page from its local copy (unstyled, a navbar is a plain block)
    assert page.evaluate("getComputedStyle(document.querySelector('.navbar')).display") == "flex"
    shoot(page, "datadocs_images")
    assert [u for u in page.requests if not u.startswith("file:")] == []


def test_run_report_shows_the_whole_run_with_no_network(run, browser):
    page = open_page(browser, (run["root"] / "reports" / "index.html").as_uri(), offline=True)
    page.get_by_role("heading", name="Leaderboard").wait_for(timeout=30_000)
    text = page.inner_text("body")
    registry = run["registry"]
    assert f"{MODEL} v{registry['version']} → @{registry['alias']}" in text
    assert registry["reason"][:60] in text
    for expected in ("MobileNetV2", "SmallCNN", "Excluded files, with reasons", "Quarantined label conflicts",
                     "Model card", "Where the chosen model looked"):
        assert expected in text, expected
    broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length")
    assert broken == 0 and page.evaluate("document.images.length") >= 4  # confusions, Grad-CAM, sheets
    assert [u for u in page.requests if not u.startswith(("file:", "data:"))] == []
    shoot(page, "run_report")


def test_prefect_ui_tells_what_the_run_did(run, browser):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = {a.key: a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retrain-decision", "leaderboard"])))}
    registry = run["registry"]
    assert f"v{registry['version']} → @{registry['alias']}" in found["retrain-decision"].data
    assert run["version"] in found["retrain-decision"].data
    table = found["leaderboard"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert {"MobileNetV2", "SmallCNN", "ensemble"} <= {row["architecture"] for row in table}  # and the probe

    ui = run["prefect"].removesuffix("/api")
    page = open_page(browser, f"{ui}/runs/flow-run/{found['retrain-decision'].flow_run_id}")
    page.get_by_text("Artifacts", exact=True).first.click()  # the flow run's tab
    for key in ("retrain-decision", "leaderboard"):
        page.get_by_text(key, exact=True).first.wait_for(timeout=60_000)
    shoot(page, "prefect_flow_run_artifacts")
    page = open_page(browser, f"{ui}/artifacts/artifact/{found['retrain-decision'].id}")
    page.get_by_text(f"{MODEL} v{registry['version']} → @{registry['alias']}").first.wait_for(timeout=60_000)
    page.get_by_text("Why:").first.wait_for(timeout=10_000)
    shoot(page, "prefect_decision_artifact")
