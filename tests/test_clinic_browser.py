"""The clinic's page as a person uses it: `python -m clinic serve` on a loopback port, Debian's chromium
(headless, Playwright) with every request to another address refused. Sign in, resolve a conflict and
see corrections.csv change, approve a waiting version and see @champion move, try a 12 MP phone photo
(JPEG and HEIC) and see the answer with its Grad-CAM overlay, and a viewer refused on approve.
Screenshots in test-artifacts/clinic/ (or $TEST_ARTIFACTS/clinic)."""
import os
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.clinic_project import NAME, USERS, make_project, phone_photos, registry
from tests.conftest import ROOT, SHARED, free_port, server

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("TEST_ARTIFACTS", ROOT / "test-artifacts")) / "clinic"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium")
    source = SHARED / "datasets" / "isic-skin-9class-180px" / "Test" / "melanoma" / "ISIC_0000043.jpg"
    if not source.is_file():
        pytest.skip(f"real image not found at {source}")
    tmp = tmp_path_factory.mktemp("clinic_browser")
    port = free_port()
    root = make_project(tmp / "project", port=port)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        registry(root)
        env = {"PYTHONPATH": str(ROOT), "STACK_DIR": str(tmp / "no-stack")}
        with server([sys.executable, "-m", "clinic", "--root", str(root), "serve"],
                    f"http://127.0.0.1:{port}/health", "the clinic's page", env):
            yield {"root": root, "base": f"http://127.0.0.1:{port}", "photos": phone_photos(source, tmp / "photos")}


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])


def signed_in_page(browser, site, name):
    """A fresh browser context signed in as `name`; requests to anything but the app are refused and counted."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    refused = []

    def only_the_app(route):
        if route.request.url.startswith(site["base"]) or route.request.url.startswith("data:"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_the_app)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(site["base"] + "/queue")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", USERS[name][1])
    page.click("button:has-text('Sign in')")
    page.wait_for_load_state()
    return page, refused


def images_loaded(page) -> bool:
    """Scroll through the page (previews load lazily) until every image has pixels, for up to 10 s."""
    page.mouse.wheel(0, 5000)
    check = "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
    for _ in range(100):  # (wait_for_function evaluates a string: the page's CSP refuses that, rightly)
        if page.evaluate(check):
            break
        page.wait_for_timeout(100)
    page.mouse.wheel(0, -5000)
    return page.evaluate(check)


def shoot(page, name):
    images_loaded(page)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def champion():
    from pipeline.registry.client import registry_client
    return str(registry_client().get_model_version_by_alias(NAME, "champion").version)


def test_a_clinician_resolves_a_conflict_and_approves_a_version(site, browser):
    page, refused = signed_in_page(browser, site, "dr.ana")
    assert page.locator("h1").inner_text() == "Review queue"
    assert "0 of 3 reviewed" in page.inner_text("body")
    assert images_loaded(page)
    shoot(page, "1-queue")
    conflict = page.locator("section.item").filter(has_text="Label conflict")
    conflict.locator("button", has_text="It is normal").click()
    page.wait_for_load_state()
    assert "Recorded for 2 image(s): normal (by dr.ana)" in page.inner_text(".flash")
    assert "1 of 3 reviewed" in page.inner_text("body")
    shoot(page, "2-queue-after-answer")
    table = pd.read_csv(site["root"] / "data" / "labels" / "corrections.csv", dtype=str)
    sheet = pd.read_csv(site["root"] / "data" / "quarantine" / "conflicts" / "conflicts.csv", dtype=str)
    assert set(table.sha256) == set(sheet.sha256) and set(table.who) == {"dr.ana"}

    page.click("text=Approvals")
    assert champion() == "1" and "@champion v1" in page.inner_text("body")
    page.locator("#v2 summary").click()  # the model card
    shoot(page, "3-approvals")
    page.locator("#v2 button", has_text="Approve v2").click()
    page.wait_for_load_state()
    assert "v2: approved by dr.ana" in page.inner_text(".flash") and "@champion v2" in page.inner_text("body")
    assert champion() == "2"
    shoot(page, "4-approved")
    assert refused == []


@pytest.mark.parametrize("kind", ["jpeg", "heic"])
def test_a_phone_photo_gets_the_champions_answer_and_overlay(site, browser, kind):
    page, refused = signed_in_page(browser, site, "vic")
    page.click("text=Try a photo")
    page.set_input_files("input[name=photo]", str(site["photos"][kind]))
    started = time.perf_counter()
    page.click("text=Ask the champion")
    page.wait_for_selector("section.result")
    elapsed = time.perf_counter() - started
    text = page.inner_text("section.result")
    assert "@champion v" in text and ("refer" in text) and text.count("%") == 3
    assert page.evaluate("document.querySelector('img.overlay').naturalWidth") > 100
    shoot(page, f"5-try-{kind}")
    print(f"{kind}: upload to answer in the browser {elapsed:.2f} s")
    assert refused == []


def test_a_viewer_is_refused_on_approve(site, browser):
    page, refused = signed_in_page(browser, site, "vic")
    page.click("text=Approvals")
    before = champion()
    assert "approving or rejecting needs a clinician's account" in page.inner_text("body")
    page.locator("#v3 button", has_text="Approve v3").click()
    page.wait_for_load_state()
    assert "Your role (viewer) may not approve or reject a model" in page.inner_text("body")
    shoot(page, "6-viewer-refused")
    assert champion() == before
    assert refused == []
