"""The clinic's web application (FastAPI + Jinja2, server-rendered, every asset local).

    GET  /health                      no sign-in
    GET  /login, POST /login, POST /logout
    GET  /queue, POST /queue/answer   review conflicts and suspected label errors (clinician)
    GET  /preview/{sha256}            a queued image's preview from the pixel cache
    GET  /approvals                   versions awaiting approval, @champion and its history
    POST /approvals/decide            approve or reject (clinician); POST /approvals/rollback (admin)
    GET  /try, POST /try              try a photo on @champion (viewer)
"""
from __future__ import annotations

import io
import threading
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from clinic import approvals, photo, review
from clinic.web import FLASH, COOKIE, Refusal, Sessions, Throttle, User, check_csrf, require, safe_next
from pipeline.params import load_params

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 25
SECURITY_HEADERS = {  # nothing but this server: no CDN, no framing, no referrer leaving the page
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
}


class Champion:
    """@champion's classifier, loaded once per version (the registry says which), for try-a-photo and the queue."""

    def __init__(self, name: str):
        self.name, self.version, self.classifier, self.lock = name, None, None, threading.Lock()

    def get(self, client):
        from pipeline.inference import load_classifier
        from pipeline.registry.client import alias_version

        version = alias_version(client, self.name)
        with self.lock:
            if version is None:
                return None, None
            if version != self.version:
                self.classifier, self.version = load_classifier(f"models:/{self.name}@champion"), version
            return self.version, self.classifier


def create_app(root: Path) -> FastAPI:
    root = Path(root).resolve()
    params = load_params(root / "params.yaml")
    settings, classes, name = params.clinic, list(params.base.classes), params.register.model_name
    sessions, throttle = Sessions(root / settings.accounts, settings.session_minutes), Throttle()
    paths = review.Paths.of(root)
    champion, predict_lock = Champion(name), threading.Lock()
    scored = {}  # (champion version, sha256) -> the champion's probabilities of a conflict image
    templates = Jinja2Templates(directory=HERE / "templates")
    app = FastAPI(title="Clinic", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def shown(image: review.Image) -> str:
        return image.path if settings.show_file_names else image.sha256[:12]

    templates.env.globals.update(shown=shown, classes=classes, show_file_names=settings.show_file_names)

    def page(request: Request, template: str, user: User | None, code: int = 200, **context):
        flash = request.cookies.get(FLASH, "")
        response = templates.TemplateResponse(request, template, {"user": user, "flash": flash, **context},
                                              status_code=code)
        if flash:
            response.delete_cookie(FLASH)
        return response

    def done(target: str, message: str) -> RedirectResponse:
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(FLASH, message[:300].encode("ascii", "replace").decode(), httponly=True,
                            samesite="strict", max_age=60)
        return response

    def user_of(request: Request) -> User:
        return sessions.user(request.cookies.get(COOKIE))

    async def form_of(request: Request, user: User) -> dict:
        form = await request.form()
        check_csrf(user, form.get("csrf"))
        return {k: str(v) for k, v in form.items()}

    def client():
        from pipeline.registry.client import registry_client
        return registry_client()

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(Refusal)
    async def refused(request: Request, err: Refusal):
        if err.login:
            target = f"/login?next={quote(safe_next(request.url.path))}"
            return done(target, err.message) if request.method == "GET" else \
                page(request, "message.html", None, 403, title="Please sign in", message=err.message)
        try:
            user = user_of(request)
        except Refusal:
            user = None
        return page(request, "message.html", user, err.status, title="Not done", message=err.message)

    @app.get("/health")
    def health():
        return JSONResponse({"status": "ok"})

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/"):
        return page(request, "login.html", None, token=sessions.login_token(), next=safe_next(next))

    @app.post("/login")
    async def login(request: Request):
        from clinic.accounts import authenticate

        form = await request.form()
        sessions.check_login_token(str(form.get("token", "")))
        who = str(form.get("name", "")).strip()
        if throttle.locked(who):
            return page(request, "login.html", None, 429, token=sessions.login_token(), next=safe_next(form.get("next")),
                        error=f"Too many wrong passwords for this name: try again in {throttle.window // 60} minutes, "
                              "or ask an administrator.")
        if await run_in_threadpool(authenticate, sessions.db, who, str(form.get("password", ""))) is None:
            throttle.failed(who)
            return page(request, "login.html", None, 401, token=sessions.login_token(), next=safe_next(form.get("next")),
                        error="Wrong name or password.")
        throttle.succeeded(who)
        response = RedirectResponse(safe_next(str(form.get("next", "/"))), status_code=303)
        response.set_cookie(COOKIE, sessions.start(who), max_age=sessions.seconds, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")  # over TLS (the stack's front) never sent in clear
        return response

    @app.post("/logout")
    async def logout(request: Request):
        await form_of(request, user_of(request))
        response = done("/login", "Signed out.")
        response.delete_cookie(COOKIE)
        return response

    @app.get("/")
    def home(request: Request):
        user = user_of(request)
        return RedirectResponse("/queue" if user.may("clinician") else "/try", status_code=303)

    def queue_probabilities(items: list[review.Item]) -> None:
        """Conflicts carry no probabilities of their own: the champion's, from the pixel cache."""
        from pipeline import pixels

        todo = [(i, img) for i in items if i.kind == "conflict" for img in i.images[:1]]
        if not todo:
            return
        try:
            version, classifier = champion.get(client())
        except Exception:  # no registry or no model: the queue still works without probabilities
            return
        if classifier is None:
            return
        import numpy as np
        cache, missing = pixels.cache_dir(paths.raw), [img for _, img in todo if (version, img.sha256) not in scored]
        try:
            if missing:
                x = np.stack([pixels.model_array(cache, i.sha256, paths.raw / i.path, classifier.size) for i in missing])
                with predict_lock:
                    scored.update({(version, i.sha256): dict(zip(classifier.classes, map(float, p)))
                                   for i, p in zip(missing, classifier.predict(x))})
        except Exception:  # an image gone from data/raw and the cache: shown without probabilities
            return
        for item, img in todo:
            item.probabilities = scored[(version, img.sha256)]

    @app.get("/queue", response_class=HTMLResponse)
    def queue(request: Request, cls: str = "", status: str = "open", page_number: int = 1):
        user = user_of(request)
        items = review.load_queue(paths, classes)
        chosen = review.select(items, cls if cls in classes else "", status if status in ("open", "reviewed", "all") else "open")
        pages = max(1, -(-len(chosen) // PAGE_SIZE))
        page_number = min(max(page_number, 1), pages)
        shown_items = chosen[(page_number - 1) * PAGE_SIZE: page_number * PAGE_SIZE]
        queue_probabilities(shown_items)
        return page(request, "queue.html", user, items=shown_items, total=len(items),
                    reviewed=sum(i.reviewed for i in items), matching=len(chosen), cls=cls, status=status,
                    page_number=page_number, pages=pages)

    @app.post("/queue/answer")
    async def queue_answer(request: Request):
        user = user_of(request)
        form = await form_of(request, user)
        require(user, "clinician", "answer the review queue")
        found = {i.key: i for i in review.load_queue(paths, classes)}.get(form.get("item", ""))
        if found is None:
            raise Refusal(400, "That item is no longer in the queue (the pipeline ran meanwhile); reload the queue.")
        try:
            await run_in_threadpool(review.record_answer, paths, found, form.get("answer", ""), user.name, classes,
                                    form.get("note", "").strip())
        except review.labels.CorrectionsError as err:
            raise Refusal(400, f"Nothing recorded: {err}") from None
        back = f"/queue?cls={quote(form.get('cls', ''))}&status={quote(form.get('status', 'open'))}"
        return done(back, f"Recorded for {len(found.images)} image(s): {form['answer']} (by {user.name}); "
                          "the next pipeline run applies it.")

    @app.get("/preview/{sha}")
    def preview(request: Request, sha: str):
        from pipeline import pixels

        user_of(request)
        images = {img.sha256: img for i in review.load_queue(paths, classes) for img in i.images}
        if sha not in images:
            return Response("not in the review queue", status_code=404, media_type="text/plain")
        image = pixels.preview(pixels.cache_dir(paths.raw), sha, paths.raw / images[sha].path)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)  # pixels only: no metadata leaves the machine
        return Response(buffer.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/approvals", response_class=HTMLResponse)
    def approvals_page(request: Request):
        user = user_of(request)
        registry = client()
        return page(request, "approvals.html", user, name=name, waiting=approvals.waiting(registry, name),
                    **approvals.status(registry, name))

    @app.post("/approvals/decide")
    async def decide(request: Request):
        from flows.approval import resume_waiting_run

        user = user_of(request)
        form = await form_of(request, user)
        require(user, "clinician", "approve or reject a model")
        version, approve, note = form.get("version", ""), form.get("decision") == "approve", form.get("note", "").strip()
        try:
            event = await run_in_threadpool(approvals.decide, client(), name, version, approve, user.name, note,
                                            params.register.lock_timeout_seconds)
        except Exception as err:  # not awaiting any more, champion moved, registry busy: say so
            raise Refusal(400, f"Nothing changed: {str(err).splitlines()[0]}") from None
        try:
            resumed = await run_in_threadpool(resume_waiting_run, root, version, approve, user.name, note)
            after = " The waiting flow run was resumed." if resumed else ""
        except Exception as err:  # the decision stands; a paused run finds it when its wait ends
            after = f" (Prefect could not be reached to resume a waiting run: {str(err).splitlines()[0][:120]})"
        return done("/approvals", f"v{version}: {event['reason']}.{after}")

    @app.post("/approvals/rollback")
    async def rollback(request: Request):
        user = user_of(request)
        form = await form_of(request, user)
        require(user, "admin", "roll back @champion")
        try:
            event = await run_in_threadpool(approvals.rollback, client(), name, form.get("version", ""),
                                            form.get("reason", ""), user.name, params.register.lock_timeout_seconds)
        except Exception as err:
            raise Refusal(400, f"Nothing changed: {str(err).splitlines()[0]}") from None
        return done("/approvals", f"@champion rolled back to v{event['new']}: {event['reason']}")

    @app.get("/try", response_class=HTMLResponse)
    def try_form(request: Request):
        return page(request, "try.html", user_of(request), limit=settings.max_upload_mb)

    @app.post("/try", response_class=HTMLResponse)
    async def try_upload(request: Request):
        user = user_of(request)
        limit = int(settings.max_upload_mb * 1e6)
        try:
            csrf, data = await photo.upload_of(request, limit)
            check_csrf(user, csrf)
            photo.check_size(len(data), limit)
            version, classifier = await run_in_threadpool(champion.get, client())
            if classifier is None:
                raise photo.Refused("there is no @champion model yet: the pipeline has not promoted one")
            with predict_lock:
                result = await run_in_threadpool(photo.try_photo, classifier, data, params.validate.max_pixels)
        except photo.Refused as err:
            return page(request, "try.html", user, 400, limit=settings.max_upload_mb, error=str(err))
        return page(request, "try.html", user, limit=settings.max_upload_mb, result=result, version=version,
                    operating_point=classifier.operating_point)

    return app

