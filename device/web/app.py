"""The Flask app factory and the waitress server: authentication, CSRF, security headers, errors.

Routes live in api.py (JSON) and views.py (HTML); both read the shared objects from
`app.extensions["edgecap"]` (an `AppState`).
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Request, current_app, g, jsonify, render_template, request, session, url_for
from werkzeug.datastructures import Authorization
from werkzeug.exceptions import HTTPException
from werkzeug.http import parse_cookie
from werkzeug.routing import IntegerConverter

from .auth import (
    ENV_PASSWORD,
    FailureLimiter,
    PasswordChecker,
    RevokedSessions,
    check_password_strength,
    new_csrf_token,
    same_token,
)
from .server import ADMIT, UNVERIFIED, Limits
from .settings import WebConfigError, WebSettings, host_allowed, load_or_create_secret, settings_from

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
# Reachable without credentials: health checks, the login form and its stylesheet (no data in them).
PUBLIC_ENDPOINTS = frozenset({"healthz", "views.login", "static"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SESSION_LIFETIME_S = 30 * 24 * 3600
LOGIN_PATH = "/login"
LOGIN_MAX_BODY = 16 * 1024  # the login form: a password, a token and a path
REVOKED_FILE = "web_revoked_sessions.json"
BASIC_CHALLENGE = 'Basic realm="edgecap", charset="UTF-8"'
BAD_HOST = ("this page answers without a password only to localhost names and IP addresses (a "
            "protection against DNS rebinding); open it by IP address, or set a password")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


class CaptureIdConverter(IntegerConverter):
    """<id:cid>: a capture id SQLite can hold (0..2**63-1); anything else simply does not match (404)."""

    def __init__(self, map, *args, **kwargs):
        super().__init__(map, min=0, max=2**63 - 1)


@dataclass
class AppState:
    settings: WebSettings
    store: Any
    captioner: Any
    embedder: Any
    started: float
    checker: PasswordChecker
    limiter: FailureLimiter
    revoked: RevokedSessions
    # TFLite interpreters are not thread-safe, and a large photo decodes to tens of MB: uploads are
    # decoded and captioned one at a time.
    caption_lock: threading.Lock = field(default_factory=threading.Lock)
    static_version: str = ""
    metrics: Any = None  # device.metrics.Registry of the running daemon, or None (`edgecap serve`)
    alerts: Any = None  # device.alerts.Alerts of the running daemon, or None


class InMemoryUploadRequest(Request):
    """Uploaded files stay in memory (the body already is, within the server's budget): werkzeug would
    put those over 500 KB in temporary files, which may share the data disk."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


def state() -> AppState:
    return current_app.extensions["edgecap"]


def is_api() -> bool:
    """Machine routes: JSON errors and an HTTP Basic challenge instead of the login page."""
    return request.path.startswith("/api/") or request.path == "/metrics"


def csrf_token() -> str:
    """The per-session token for forms and fetch() calls (creates the session on first use)."""
    tok = session.get("csrf")
    if not tok:
        tok = session["csrf"] = new_csrf_token()
    return tok


def error_response(status: int, message: str, **extra: Any):
    """One clear message: JSON under /api/ (and for JSON clients), an HTML page otherwise."""
    if is_api() or request.path == "/healthz" or request.accept_mimetypes.best == "application/json":
        resp = jsonify({"error": message, "status": status, **extra})
    else:
        try:
            resp = current_app.make_response(
                render_template("error.html", status=status, message=message), )
        except Exception:  # never let a template problem turn an error page into a traceback
            log.exception("error page failed")
            resp = current_app.make_response(f"{status} {message}")
            resp.mimetype = "text/plain"
    resp.status_code = status
    return resp


def _client_addr() -> str:
    return request.remote_addr or "?"


def _unauthorized(message: str = "authentication required"):
    if is_api() or request.path == "/healthz":
        resp = error_response(401, message)
        resp.headers.extend(challenge(request.path))
        return resp
    resp = current_app.make_response(
        render_template("login.html", next=request.full_path.rstrip("?"), error=None)
    )
    resp.status_code = 401
    return resp


def session_authenticated(st: AppState, data: Any) -> bool:
    """A session made by logging in with the current password, and not logged out since."""
    sid = data.get("sid") if hasattr(data, "get") else None
    return bool(sid) and data.get("auth") == st.checker.fingerprint and not st.revoked.revoked(str(sid))


def check_basic(st: AppState, password: str | None, addr: str) -> bool | None:
    """Check a password under the failure limiter: True / False, or None when the address is blocked."""
    if not st.limiter.begin(addr):
        return None
    ok = st.checker.verify(password)
    st.limiter.finish(addr, ok)
    if not ok:
        log.info("rejected credentials from %s", addr)  # never the credentials themselves
    return ok


def _authenticate():
    """before_request: sets g.auth_via to "basic", "session" or "none" (auth disabled)."""
    st = state()
    g.auth_via = None
    if not host_allowed(request.host, st.settings):
        return error_response(403, BAD_HOST)
    if not st.settings.auth:
        g.auth_via = "none"
        return None
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    creds = request.authorization
    if creds is not None and creds.type == "basic":
        ok = check_basic(st, creds.password, _client_addr())
        if ok is None:
            return error_response(429, "too many failed logins; try again in a minute")
        if ok:
            g.auth_via = "basic"
            return None
        return _unauthorized("wrong password")
    if session_authenticated(st, session):
        g.auth_via = "session"
        return None
    return _unauthorized()


def challenge(path: str) -> tuple[tuple[str, str], ...]:
    # Basic only for machines (the API, /metrics): on pages it would pop the browser's own dialog over
    # our login form.
    machine = path.startswith("/api/") or path in ("/healthz", "/metrics")
    return (("WWW-Authenticate", BASIC_CHALLENGE),) if machine else ()


def body_gate(app: Flask):
    """For the server (server.py): judge a request with a body from its headers alone, before the body
    is read. Returns ADMIT, UNVERIFIED (a Basic password not checked yet: the app checks it) or
    (status, message, headers)."""
    st: AppState = app.extensions["edgecap"]
    serializer = app.session_interface.get_signing_serializer(app)
    cookie_name = app.config["SESSION_COOKIE_NAME"]

    def gate(path: str, headers: dict[str, str], addr: str):
        if not host_allowed(headers.get("HOST", ""), st.settings):
            return 403, BAD_HOST, ()
        if not st.settings.auth:
            return ADMIT
        if path == LOGIN_PATH:
            if int(headers.get("CONTENT_LENGTH") or LOGIN_MAX_BODY + 1) > LOGIN_MAX_BODY:
                return 413, "the login form is larger than a login form can be", ()
            return ADMIT
        password = _basic_password(headers.get("AUTHORIZATION", ""))
        if password is not None:
            if st.limiter.blocked(addr):
                return 429, "too many failed logins; try again in a minute", (("Retry-After", "60"),)
            known = st.checker.verify_cheaply(password)
            if known is None:
                return UNVERIFIED
            if known:
                return ADMIT
            check_basic(st, password, addr)  # cheap here: counts the failure
            return 401, "wrong password", challenge(path)
        cookie = parse_cookie(headers.get("COOKIE", "")).get(cookie_name)
        if serializer is not None and cookie:
            try:
                data = serializer.loads(cookie, max_age=SESSION_LIFETIME_S)
            except Exception:  # noqa: BLE001 - any bad or expired cookie is simply not a session
                data = {}
            if session_authenticated(st, data):
                return ADMIT
        return 401, "authentication required", challenge(path)

    return gate


def _basic_password(value: str) -> str | None:
    auth = Authorization.from_header(value or None)
    return auth.password if auth is not None and auth.type == "basic" else None


def server_limits(app: Flask) -> Limits:
    """The server's limits from the app's settings: bodies up to the upload limit (plus the form's own
    bytes), and memory for a few such uploads at once."""
    max_body = int(app.config["MAX_CONTENT_LENGTH"]) + 64 * 1024
    settings: WebSettings = app.extensions["edgecap"].settings
    return Limits(max_body=max_body, body_budget=settings.concurrent_uploads * max_body)


def _check_origin_and_csrf():
    """before_request for POSTs: refuse cross-site requests; cookie sessions must echo the CSRF token."""
    if request.method not in UNSAFE_METHODS:
        return None
    # Browsers replay Basic credentials and cookies on cross-site form posts; the Origin and
    # Sec-Fetch-Site headers they send make those recognisable. curl sends neither.
    origin = request.headers.get("Origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.host:
        return error_response(403, "cross-site request refused")
    if origin == "null" or request.headers.get("Sec-Fetch-Site") == "cross-site":
        return error_response(403, "cross-site request refused")
    needs_token = g.get("auth_via") == "session" or request.endpoint == "views.login" or (
        g.get("auth_via") == "none" and "session" in request.cookies
    )
    if needs_token:
        sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token")
        if not same_token(sent, session.get("csrf")):
            return error_response(400, "missing or stale form token; reload the page and try again")
    return None


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


def create_app(config: Any, store: Any, captioner: Any = None, embedder: Any = None, *,
               started: float | None = None, metrics: Any = None, alerts: Any = None) -> Flask:
    """Build the web app.

    config: a `Config` (device/config.py) or a `WebSettings`. store: a `Store`. captioner / embedder:
    loaded models or None (no uploads / keyword-only search). started: the process start time, for
    uptime. metrics / alerts: the daemon's Registry and Alerts (for /metrics and /alerts), or None.
    Raises WebConfigError when authentication is on but no password is configured.
    """
    settings = settings_from(config)
    env_password = settings.password or os.environ.get(ENV_PASSWORD) or None
    if env_password and settings.auth:
        try:
            check_password_strength(env_password, ENV_PASSWORD)
        except ValueError as e:
            raise WebConfigError(str(e)) from None
    checker = PasswordChecker(settings.password_hash, env_password)
    if settings.auth and not checker.configured:
        raise WebConfigError(
            "no web password is set: run `edgecap hash-password` and put the hash in [web] password_hash, "
            "or set EDGECAP_PASSWORD, or start with --no-auth (then it listens on 127.0.0.1 only)"
        )
    app = Flask(__name__, template_folder=str(HERE / "templates"), static_folder=str(HERE / "static"))
    app.request_class = InMemoryUploadRequest
    secret = settings.secret_key
    if not secret:
        secret = load_or_create_secret(settings.data_dir) if settings.data_dir else secrets.token_hex(32)
    app.url_map.converters["id"] = CaptureIdConverter
    app.config.update(
        SECRET_KEY=secret,
        MAX_CONTENT_LENGTH=settings.max_upload_bytes,
        # Text form fields are tiny; files count against MAX_CONTENT_LENGTH. (werkzeug also applies
        # this to its parse buffer, which reads 64 KB chunks: keep it well above that.)
        MAX_FORM_MEMORY_SIZE=1024 * 1024,
        MAX_FORM_PARTS=32,
        SESSION_COOKIE_NAME="edgecap_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME_S,
        SEND_FILE_MAX_AGE_DEFAULT=7 * 24 * 3600,  # static URLs carry a content hash
        JSON_SORT_KEYS=False,
        TRAP_HTTP_EXCEPTIONS=False,
        PROPAGATE_EXCEPTIONS=False,
    )
    app.json.sort_keys = False
    app.json.compact = True
    app.extensions["edgecap"] = AppState(
        settings=settings, store=store, captioner=captioner, embedder=embedder,
        started=time.time() if started is None else started, checker=checker,
        limiter=FailureLimiter(max_failures=settings.max_login_failures), static_version=_static_version(),
        metrics=metrics, alerts=alerts,
        revoked=RevokedSessions(settings.data_dir / REVOKED_FILE if settings.data_dir else None,
                                SESSION_LIFETIME_S),
    )

    app.before_request(_authenticate)
    app.before_request(_check_origin_and_csrf)
    app.after_request(_security_headers)

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException):
        code = e.code or 500
        msg = {
            413: f"upload too large (limit {settings.max_upload_bytes // (1024 * 1024)} MB)",
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
            "csrf_token": csrf_token,
            "static_url": lambda name: url_for("static", filename=name, v=st.static_version),
            "auth_enabled": st.settings.auth,
            "logged_in": g.get("auth_via") in ("session", "basic"),
        }

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok", "uptime_s": round(time.time() - state().started, 1)})

    from . import alerts as alert_routes
    from . import api, bulk, views  # routes import state() from here
    from . import metrics as metrics_routes

    app.register_blueprint(api.bp)
    app.register_blueprint(bulk.bp)
    app.register_blueprint(views.bp)
    app.register_blueprint(alert_routes.bp)
    app.register_blueprint(metrics_routes.bp)
    return app
