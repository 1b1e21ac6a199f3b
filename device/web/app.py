"""The Flask app factory: the app's state, its hooks (login, CSRF, security headers), its error
handlers and its routes.

Routes live in api.py and bulk.py (JSON), views.py (HTML), alerts.py and metrics.py; all of them read
the shared objects through `state()` (state.py). Who may come in is login.py's business.
"""
from __future__ import annotations

import hashlib
import io
import logging
import time
from pathlib import Path
from typing import Any

from flask import Flask, Request, g, jsonify, request, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter

from device.config import ENV_PASSWORD, Config
from device.pipeline import Pipeline

from . import alerts as alert_routes
from . import api, bulk, login, views
from . import metrics as metrics_routes
from .auth import FailureLimiter, PasswordChecker, RevokedSessions, check_password_strength
from .errors import error_response
from .settings import WebConfigError, load_or_create_secret
from .state import EXTENSION, AppState, state

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
REVOKED_FILE = "web_revoked_sessions.json"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


class CaptureIdConverter(IntegerConverter):
    """<id:cid>: a capture id SQLite can hold (0..2**63-1); anything else simply does not match (404)."""

    def __init__(self, map, *args, **kwargs):
        super().__init__(map, min=0, max=2**63 - 1)


class InMemoryUploadRequest(Request):
    """Uploaded files stay in memory (the body already is, within the server's budget): werkzeug would
    put those over 500 KB in temporary files, which may share the data disk."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


def _security_headers(resp):
    h = resp.headers
    h.setdefault("Content-Security-Policy", CSP)
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("Referrer-Policy", "same-origin")
    h.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    h.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    if request.endpoint != "static" and "Cache-Control" not in h:
        h["Cache-Control"] = "no-store"
    if request.endpoint != "static" and g.get("auth_via") not in (None, "none"):
        h.add("Vary", "Authorization, Cookie")
    return resp


def _static_version() -> str:
    """A short hash of the static files: changes their URLs when they change (long browser caching)."""
    hsh = hashlib.sha256()
    for p in sorted((HERE / "static").glob("*")):
        hsh.update(p.name.encode())
        hsh.update(p.read_bytes())
    return hsh.hexdigest()[:10]


def create_app(config: Config, store: Any, captioner: Any = None, embedder: Any = None, *,
               pipeline: Pipeline | None = None, started: float | None = None, metrics: Any = None,
               alerts: Any = None, max_login_failures: int = 20, concurrent_uploads: int = 4) -> Flask:
    """Build the web app.

    config: the `Config` (its [web] section, data_dir for the session key, model.beam_width for
    uploads). store: a `Store`. captioner / embedder: loaded models or None (no uploads / keyword-only
    search). pipeline: the running daemon's `Pipeline`, so kept uploads are stored (and announced to
    MQTT and alerts) exactly as camera frames are; without one the app builds its own over the store
    and models. started: the process start time, for uptime. metrics / alerts: the daemon's Registry and
    Alerts (for /metrics and /alerts), or None. max_login_failures: per client address per minute, then
    429. concurrent_uploads: request bodies of the largest size held in memory at once.
    Raises WebConfigError when authentication is on but no password is configured.
    """
    web = config.web
    if web.password and web.auth:
        try:
            check_password_strength(web.password, ENV_PASSWORD)
        except ValueError as e:
            raise WebConfigError(str(e)) from None
    checker = PasswordChecker(web.password_hash or None, web.password or None)
    if web.auth and not checker.configured:
        raise WebConfigError(
            "no web password is set: run `edgecap hash-password` and put the hash in [web] password_hash, "
            "or set EDGECAP_PASSWORD, or start with --no-auth (then it listens on 127.0.0.1 only)"
        )
    app = Flask(__name__, template_folder=str(HERE / "templates"), static_folder=str(HERE / "static"))
    app.request_class = InMemoryUploadRequest
    app.url_map.converters["id"] = CaptureIdConverter
    app.config.update(
        SECRET_KEY=web.secret_key or load_or_create_secret(config.data_dir),
        MAX_CONTENT_LENGTH=web.max_upload_bytes,
        # Text form fields are tiny; files count against MAX_CONTENT_LENGTH. (werkzeug also applies
        # this to its parse buffer, which reads 64 KB chunks: keep it well above that.)
        MAX_FORM_MEMORY_SIZE=1024 * 1024,
        MAX_FORM_PARTS=32,
        SESSION_COOKIE_NAME="edgecap_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=web.secure_cookies,
        PERMANENT_SESSION_LIFETIME=login.SESSION_LIFETIME_S,
        SEND_FILE_MAX_AGE_DEFAULT=7 * 24 * 3600,  # static URLs carry a content hash
        JSON_SORT_KEYS=False,
        TRAP_HTTP_EXCEPTIONS=False,
        PROPAGATE_EXCEPTIONS=False,
    )
    app.json.sort_keys = False
    app.json.compact = True
    # Uploads kept with keep=1 are stored like camera frames, through the one caption -> store path.
    if pipeline is None and captioner is not None:
        pipeline = Pipeline(store, captioner, embedder, config.model.beam_width)
    app.extensions[EXTENSION] = AppState(
        config=config, store=store, captioner=captioner, embedder=embedder, pipeline=pipeline,
        started=time.time() if started is None else started, checker=checker,
        limiter=FailureLimiter(max_failures=max_login_failures), concurrent_uploads=concurrent_uploads,
        static_version=_static_version(), metrics=metrics, alerts=alerts,
        revoked=RevokedSessions(Path(config.data_dir) / REVOKED_FILE, login.SESSION_LIFETIME_S),
    )

    app.before_request(login.authenticate)
    app.before_request(login.check_origin_and_csrf)
    app.after_request(_security_headers)

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException):
        code = e.code or 500
        msg = {
            413: f"upload too large (limit {web.max_upload_bytes // (1024 * 1024)} MB)",
            404: "not found",
            405: "method not allowed",
        }.get(code) or (e.description if code < 500 else "internal error")
        resp = error_response(code, msg)
        if code == 405 and e.get_response().headers.get("Allow"):
            resp.headers["Allow"] = e.get_response().headers["Allow"]
        return resp

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal error (details are in the server log)")

    @app.context_processor
    def _template_globals():
        st = state()
        return {
            "csrf_token": login.csrf_token,
            "static_url": lambda name: url_for("static", filename=name, v=st.static_version),
            "auth_enabled": st.config.web.auth,
            "logged_in": g.get("auth_via") in ("session", "basic"),
        }

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok", "uptime_s": round(time.time() - state().started, 1)})

    app.register_blueprint(api.bp)
    app.register_blueprint(bulk.bp)
    app.register_blueprint(views.bp)
    app.register_blueprint(alert_routes.bp)
    app.register_blueprint(metrics_routes.bp)
    return app
