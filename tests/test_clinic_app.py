"""The clinic's page through FastAPI's TestClient: every route, every bad input, every role, on a real
project (validate and dedup outputs, a SQLite MLflow registry with a champion and two versions waiting)."""
import io
import re

import pandas as pd
import pytest
from PIL import Image

from tests.clinic_project import NAME, USERS, make_project, registry
from tests.colour_project import COLOURS


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from fastapi.testclient import TestClient

    from clinic.app import create_app

    root = make_project(tmp_path_factory.mktemp("clinic") / "project", max_upload_mb=0.5)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # MLflow's default store is the project's mlflow.db, as for `python -m clinic serve`
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        registry(root)
        yield root, create_app(root), TestClient


def signed_in(app, name):
    root, application, TestClient = app
    client = TestClient(application, follow_redirects=False)
    token = re.search(r'name="token" value="([^"]+)"', client.get("/login").text).group(1)
    reply = client.post("/login", data={"name": name, "password": USERS[name][1], "token": token, "next": "/queue"})
    assert reply.status_code == 303 and reply.headers["location"] == "/queue", reply.text
    return client


def csrf(client, path):
    page = client.get(path)
    assert page.status_code == 200, page.text
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def registry_client():
    from pipeline.registry.client import registry_client as opened
    return opened()


def png(colour, size=(80, 80)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_health_answers_without_sign_in_and_pages_ask_for_it(app):
    root, application, TestClient = app
    client = TestClient(application, follow_redirects=False)
    assert client.get("/health").json() == {"status": "ok"}
    for path in ("/", "/queue", "/approvals", "/try", "/preview/" + "0" * 64):
        reply = client.get(path)
        assert reply.status_code == 303 and reply.headers["location"].startswith("/login?next="), path
    assert client.post("/queue/answer", data={"item": "x", "answer": "normal"}).status_code == 403
    page = client.get("/login")
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert not re.search(r'(src|href)="(https?:)?//', page.text)  # nothing from another host


def test_sign_in_refuses_a_wrong_password_and_a_form_without_its_token(app):
    root, application, TestClient = app
    client = TestClient(application, follow_redirects=False)
    token = re.search(r'name="token" value="([^"]+)"', client.get("/login").text).group(1)
    wrong = client.post("/login", data={"name": "dr.ana", "password": "not it at all", "token": token})
    assert wrong.status_code == 401 and "Wrong name or password" in wrong.text and "clinic_session" not in wrong.cookies
    unknown = client.post("/login", data={"name": "nobody", "password": "whatever-123", "token": token})
    assert unknown.status_code == 401
    forged = client.post("/login", data={"name": "dr.ana", "password": USERS["dr.ana"][1], "token": "forged"})
    assert forged.status_code == 400 and "stale or not from this site" in forged.text


def test_wrong_passwords_lock_the_name_but_not_the_others_and_tls_cookies_are_secure(app):
    from clinic import accounts
    from clinic.web import Throttle
    from pipeline.params import load_params

    root, application, TestClient = app
    accounts.add_user(root / load_params(root / "params.yaml").clinic.accounts, "locum", "viewer", "locum-pass-123")
    client = TestClient(application, follow_redirects=False)
    token = re.search(r'name="token" value="([^"]+)"', client.get("/login").text).group(1)
    for _ in range(Throttle.attempts):
        assert client.post("/login", data={"name": "locum", "password": "guess", "token": token}).status_code == 401
    locked = client.post("/login", data={"name": "Locum", "password": "locum-pass-123", "token": token})
    assert locked.status_code == 429 and "Too many wrong passwords" in locked.text and "clinic_session" not in locked.cookies
    assert signed_in(app, "dr.ana").get("/queue").status_code == 200  # other names are not locked
    behind_tls = TestClient(application, follow_redirects=False, base_url="https://clinic.example")
    token = re.search(r'name="token" value="([^"]+)"', behind_tls.get("/login").text).group(1)
    reply = behind_tls.post("/login", data={"name": "dr.ana", "password": USERS["dr.ana"][1], "token": token})
    assert reply.status_code == 303 and "secure" in reply.headers["set-cookie"].lower()
    assert "secure" not in client.post("/login", data={"name": "dr.ana", "password": USERS["dr.ana"][1], "token": token}
                                       ).headers["set-cookie"].lower()


def test_an_expired_session_is_sent_back_to_sign_in(app, monkeypatch):
    import time

    from itsdangerous import TimestampSigner

    client = signed_in(app, "dr.ana")
    assert client.get("/queue").status_code == 200
    old = time.time() - 9 * 3600  # params: session_minutes 480
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: int(old))
    root, application, _ = app
    from clinic.web import COOKIE, Sessions
    client.cookies.set(COOKIE, Sessions(root / ".clinic" / "accounts.sqlite", 480).start("dr.ana"))
    monkeypatch.undo()
    reply = client.get("/queue")
    assert reply.status_code == 303 and reply.headers["location"].startswith("/login")
    assert "expired" in client.get(reply.headers["location"]).text


def test_queue_shows_conflicts_and_suspected_errors_by_content_id_and_records_answers(app):
    root, _, _ = app
    client = signed_in(app, "dr.ana")
    page = client.get("/queue").text
    sheet = pd.read_csv(root / "data" / "quarantine" / "conflicts" / "conflicts.csv", dtype=str)
    shas = sorted(set(sheet.sha256))
    assert "0 of 3 reviewed" in page  # one conflict group, two suspected errors
    assert "Label conflict: the same image filed as cancer and normal" in page and "Suspected label error" in page
    assert shas[0][:12] in page and "patient 0042" not in page  # privacy: content IDs, never file names
    assert client.get(f"/preview/{shas[0]}").headers["content-type"] == "image/jpeg"
    assert client.get("/preview/" + "f" * 64).status_code == 404  # only queued images
    item = f"c-{sheet.group_id[0]}"
    token = csrf(client, "/queue")
    corrections = root / "data" / "labels" / "corrections.csv"
    before = corrections.read_text()
    assert client.post("/queue/answer", data={"item": item, "answer": "normal"}).status_code == 403  # no CSRF
    assert client.post("/queue/answer", data={"item": item, "answer": "tumour", "csrf": token}).status_code == 400
    assert corrections.read_text() == before
    done = client.post("/queue/answer", data={"item": item, "answer": "normal", "note": "seen twice", "csrf": token})
    assert done.status_code == 303
    table = pd.read_csv(corrections, dtype=str)
    assert sorted(table.sha256) == shas and len(table) == len(shas) and set(table.correct_label) == {"normal"} and set(table.who) == {"dr.ana"}
    assert "1 of 3 reviewed" in client.get("/queue").text
    assert "normal by dr.ana" in client.get("/queue?status=reviewed").text
    issue = pd.read_csv(root / "reports" / "label_issues.csv", dtype=str).iloc[0]
    assert client.post("/queue/answer", data={"item": f"l-{issue.sha256}", "answer": "keep", "csrf": token}).status_code == 303
    kept = pd.read_csv(corrections, dtype=str).iloc[-1]
    assert (kept.sha256, kept.correct_label) == (issue.sha256, issue.label)
    filtered = client.get(f"/queue?cls={issue.label}&status=all").text
    assert "2 of 3 reviewed" in filtered


def test_a_viewer_may_read_but_not_answer_approve_or_roll_back(app):
    client = signed_in(app, "vic")
    token = csrf(client, "/queue")
    answer = client.post("/queue/answer", data={"item": "c-x", "answer": "normal", "csrf": token})
    assert answer.status_code == 403 and "viewer" in answer.text
    approve = client.post("/approvals/decide", data={"version": "3", "decision": "approve", "csrf": token})
    assert approve.status_code == 403 and "needs a clinician account" in approve.text
    assert str(registry_client().get_model_version_by_alias(NAME, "champion").version) == "1"


def test_approvals_reject_approve_and_an_admins_rollback_record_the_signed_in_user(app):
    from pipeline.registry.history import history

    client = signed_in(app, "dr.ana")
    page = client.get("/approvals").text
    assert "v2 is waiting for approval" in page and "v3 is waiting for approval" in page
    assert "@champion v1" in page and "<script>alert(1)</script>" not in page  # the card's HTML is shown as text
    token = csrf(client, "/approvals")
    assert client.post("/approvals/decide", data={"version": "3", "decision": "reject"}).status_code == 403
    no_reason = client.post("/approvals/decide", data={"version": "3", "decision": "reject", "csrf": token})
    assert no_reason.status_code == 400 and "say why" in no_reason.text
    assert client.post("/approvals/decide", data={"version": "3", "decision": "reject", "note": "too few cancer images",
                                                  "csrf": token}).status_code == 303
    assert client.post("/approvals/decide", data={"version": "2", "decision": "approve", "csrf": token}).status_code == 303
    registry = registry_client()
    assert str(registry.get_model_version_by_alias(NAME, "champion").version) == "2"
    assert registry.get_model_version(NAME, "3").tags["decision"] == "rejected"
    again = client.post("/approvals/decide", data={"version": "2", "decision": "approve", "csrf": token})
    assert again.status_code == 400 and "not awaiting approval" in again.text
    refused = client.post("/approvals/rollback", data={"version": "1", "reason": "x", "csrf": token})
    assert refused.status_code == 403 and "admin" in refused.text
    admin = signed_in(app, "root")
    admin_token = csrf(admin, "/approvals")
    assert "Roll back @champion" in admin.get("/approvals").text
    assert admin.post("/approvals/rollback", data={"version": "1", "reason": "", "csrf": admin_token}).status_code == 400
    assert admin.post("/approvals/rollback", data={"version": "1", "reason": "v2 misreads clinic B",
                                                   "csrf": admin_token}).status_code == 303
    assert str(registry.get_model_version_by_alias(NAME, "champion").version) == "1"
    events = history(registry, NAME)[-3:]
    assert [(e["actor"], e["decision"]) for e in events] == [("dr.ana", "rejected"), ("dr.ana", "approved"),
                                                              ("root", "rollback")]
    assert "v2 misreads clinic B" in admin.get("/approvals").text


def test_try_a_photo_answers_with_probabilities_decision_and_overlay(app):
    client = signed_in(app, "vic")
    token = csrf(client, "/try")
    reply = client.post("/try", data={"csrf": token}, files={"photo": ("x.png", png(COLOURS["cancer"]), "image/png")})
    assert reply.status_code == 200, reply.text
    assert re.search(r"@champion v\d+: cancer", reply.text) and ">refer<" in reply.text
    assert 'src="data:image/png;base64,' in reply.text


@pytest.mark.parametrize("content, message", [
    (b"%PDF-1.4 not a photo at all", "not a readable image"),
    (None, "truncated"),
    (b"", "empty"),
    (b"\xff" * 600_000, "limit"),  # clinic.max_upload_mb is 0.5 here
])
def test_try_a_photo_refuses_bad_files_in_words(app, content, message):
    if content is None:  # a JPEG cut in half
        buffer = io.BytesIO()
        Image.new("RGB", (400, 300), (90, 30, 160)).save(buffer, format="JPEG", quality=95)
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    client = signed_in(app, "vic")
    reply = client.post("/try", data={"csrf": csrf(client, "/try")}, files={"photo": ("photo.jpg", content, "image/jpeg")})
    assert reply.status_code == 400 and message in reply.text and "Traceback" not in reply.text


def test_try_a_photo_needs_the_forms_csrf_token(app):
    client = signed_in(app, "vic")
    reply = client.post("/try", files={"photo": ("x.png", png(COLOURS["normal"]), "image/png")})
    assert reply.status_code == 403 and "CSRF" in reply.text


def test_sign_out_ends_the_session(app):
    client = signed_in(app, "vic")
    assert client.post("/logout", data={"csrf": csrf(client, "/try")}).status_code == 303
    assert client.get("/try").status_code == 303


def test_file_names_are_shown_only_when_the_settings_say_so(app):
    import yaml

    from clinic.app import create_app

    root, _, TestClient = app
    params = root / "params.yaml"
    before = params.read_text()
    settings = yaml.safe_load(before)
    settings["clinic"]["show_file_names"] = True
    params.write_text(yaml.safe_dump(settings))
    try:
        named = create_app(root)
    finally:
        params.write_text(before)
    client = TestClient(named, follow_redirects=False)
    token = re.search(r'name="token" value="([^"]+)"', client.get("/login").text).group(1)
    client.post("/login", data={"name": "vic", "password": USERS["vic"][1], "token": token})
    assert "patient 0042 copy.png" in client.get("/queue?status=all").text
