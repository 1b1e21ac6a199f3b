"""The Flask app factory and the waitress server: authentication, CSRF, security headers, errors.

Routes live in api.py (JSON) and views.py (HTML); both read the shared objects from
`app.extensions["edgecap"]` (an `AppState`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, current_app, g, jsonify, render_template, request, session, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter

from .auth import (
    ENV_PASSWORD,
    FailureLimiter,
    PasswordChecker,
    check_password_strength,
    new_csrf_token,
    same_token,
)
from .settings import WebConfigError, WebSettings, load_or_create_secret, settings_from

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
# Reachable without credentials: health checks, the login form and its stylesheet (no data in them).
PUBLIC_ENDPOINTS = frozenset({"healthz", "views.login", "static"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

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
    # TFLite interpreters are not thread-safe; uploads are captioned one at a time.
    caption_lock: threading.Lock = field(default_factory=threading.Lock)
    static_version: str = ""


def state() -> AppState:
    return current_app.extensions["edgecap"]


def is_api() -> bool:
    return request.path.startswith("/api/")


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
        # Basic only on the API: on pages it would pop the browser's own dialog over our login form.
        resp.headers["WWW-Authenticate"] = 'Basic realm="edgecap", charset="UTF-8"'
        return resp
    resp = current_app.make_response(
        render_template("login.html", next=request.full_path.rstrip("?"), error=None)
    )
    resp.status_code = 401
    return resp


def _authenticate():
    """before_request: sets g.auth_via to "basic", "session" or "none" (auth disabled)."""
    st = state()
    g.auth_via = None
    if not st.settings.auth:
        g.auth_via = "none"
        return None
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    creds = request.authorization
    if creds is not None and creds.type == "basic":
        addr = _client_addr()
        if st.limiter.blocked(addr):
            return error_response(429, "too many failed logins; try again in a minute")
        if st.checker.verify(creds.password):
            g.auth_via = "basic"
            return None
        st.limiter.fail(addr)
        log.info("rejected credentials from %s", addr)  # never the credentials themselves
        return _unauthorized("wrong password")
    if session.get("auth") == st.checker.fingerprint:
        g.auth_via = "session"
        return None
    return _unauthorized()


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
               started: float | None = None) -> Flask:
    """Build the web app.

    config: a `Config` (device/config.py) or a `WebSettings`. store: a `Store`. captioner / embedder:
    loaded models or None (no uploads / keyword-only search). started: the process start time, for
    uptime. Raises WebConfigError when authentication is on but no password is configured.
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
        PERMANENT_SESSION_LIFETIME=30 * 24 * 3600,
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

    from . import api, bulk, views  # routes import state() from here

    app.register_blueprint(api.bp)
    app.register_blueprint(bulk.bp)
    app.register_blueprint(views.bp)
    return app


class WebServer:
    """A waitress server that can be stopped cleanly from another thread or a signal handler.

    waitress's own `close()` tears the sockets down under a running select() loop; here the loop
    runs in short slices and the serving thread closes everything itself once `stop()` is called.
    """

    def __init__(self, app: Flask, host: str, port: int, threads: int):
        from waitress.server import create_server

        max_body = int(app.config.get("MAX_CONTENT_LENGTH") or 10 * 1024 * 1024) + 64 * 1024
        # Requests larger than the upload limit are refused by waitress before they reach the app.
        self._server = create_server(
            app, host=host, port=port, threads=threads, ident="edgecap",
            max_request_body_size=max_body, clear_untrusted_proxy_headers=True,
            channel_timeout=60, connection_limit=200,
        )
        self._stop = threading.Event()

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def host(self) -> str:
        return str(self._server.effective_host)

    def serve_forever(self) -> None:
        """Serve until `stop()`; then close the sockets and wait for running requests to finish."""
        from waitress import wasyncore

        srv = self._server
        try:
            while not self._stop.is_set():
                wasyncore.loop(timeout=srv.adj.asyncore_loop_timeout, map=srv._map,
                               use_poll=srv.adj.asyncore_use_poll, count=1)
        finally:
            srv.task_dispatcher.shutdown()
            wasyncore.close_all(srv._map)

    def stop(self) -> None:
        self._stop.set()
        try:
            self._server.pull_trigger()  # wake the select() now rather than at its timeout
        except OSError:
            pass


def make_server(app: Flask, host: str = "0.0.0.0", port: int = 8080, threads: int = 8) -> WebServer:
    """A waitress server bound to host:port (port 0 = any free port). Run it with
    `.serve_forever()` (in a thread if you like) and end it with `.stop()`; `.port` is the real port."""
    return WebServer(app, host, port, threads)


def serve(app: Flask, host: str = "0.0.0.0", port: int = 8080, threads: int = 8) -> None:
    """Serve `app` with waitress until interrupted (never Flask's development server)."""
    server = make_server(app, host, port, threads)
    log.info("serving on http://%s:%s/", host, server.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
