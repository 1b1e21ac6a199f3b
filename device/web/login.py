"""Who may use the page: the Host rule, the password (HTTP Basic for machines, the login form for
people, both through `check_login`), sessions, and the cross-site checks on POSTs.

`authenticate` and `check_origin_and_csrf` run before every request; `body_gate` makes the same
decision for the server (server.py) from a request's headers alone, before its body is read.
"""
from __future__ import annotations

import logging
import secrets
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, current_app, g, render_template, request, session
from werkzeug.datastructures import Authorization
from werkzeug.http import parse_cookie

from .auth import new_csrf_token, same_token
from .errors import error_response, is_api
from .server import ADMIT, UNVERIFIED
from .settings import host_allowed
from .state import AppState, app_state, state

log = logging.getLogger(__name__)

# Reachable without credentials: health checks, the login form and its stylesheet (no data in them).
PUBLIC_ENDPOINTS = frozenset({"healthz", "views.login", "static"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SESSION_LIFETIME_S = 30 * 24 * 3600
LOGIN_PATH = "/login"
LOGIN_MAX_BODY = 16 * 1024  # the login form: a password, a token and a path
BASIC_CHALLENGE = 'Basic realm="edgecap", charset="UTF-8"'
BAD_HOST = ("this page answers without a password only to localhost names and IP addresses (a "
            "protection against DNS rebinding); open it by IP address, or set a password")
TOO_MANY = "too many failed logins; try again in a minute"


def check_login(st: AppState, password: str | None, addr: str) -> bool | None:
    """The one password check, for Basic credentials and the login form alike: True / False, or None
    when the address is blocked by the failure limiter (too many wrong passwords)."""
    if not st.limiter.begin(addr):
        return None
    ok = st.checker.verify(password)
    st.limiter.finish(addr, ok)
    if not ok:
        log.info("rejected credentials from %s", addr)  # never the credentials themselves
    return ok


def start_session(st: AppState) -> None:
    """After a successful login on the form: a fresh session (and CSRF token), no fixation."""
    session.clear()
    session.permanent = True
    session["auth"] = st.checker.fingerprint
    session["sid"] = secrets.token_urlsafe(16)  # what logging out revokes


def session_authenticated(st: AppState, data: Any) -> bool:
    """A session made by logging in with the current password, and not logged out since."""
    sid = data.get("sid") if hasattr(data, "get") else None
    return bool(sid) and data.get("auth") == st.checker.fingerprint and not st.revoked.revoked(str(sid))


def csrf_token() -> str:
    """The per-session token for forms and fetch() calls (creates the session on first use)."""
    tok = session.get("csrf")
    if not tok:
        tok = session["csrf"] = new_csrf_token()
    return tok


def challenge(path: str) -> tuple[tuple[str, str], ...]:
    # Basic only for machines (the API, /metrics): on pages it would pop the browser's own dialog over
    # our login form.
    machine = path.startswith("/api/") or path in ("/healthz", "/metrics")
    return (("WWW-Authenticate", BASIC_CHALLENGE),) if machine else ()


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


def authenticate():
    """before_request: sets g.auth_via to "basic", "session" or "none" (auth disabled)."""
    st = state()
    g.auth_via = None
    if not host_allowed(request.host, st.config.web.auth):
        return error_response(403, BAD_HOST)
    if not st.config.web.auth:
        g.auth_via = "none"
        return None
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    creds = request.authorization
    if creds is not None and creds.type == "basic":
        ok = check_login(st, creds.password, request.remote_addr or "?")
        if ok is None:
            return error_response(429, TOO_MANY)
        if ok:
            g.auth_via = "basic"
            return None
        return _unauthorized("wrong password")
    if session_authenticated(st, session):
        g.auth_via = "session"
        return None
    return _unauthorized()


def check_origin_and_csrf():
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


def body_gate(app: Flask):
    """For the server (server.py): judge a request with a body from its headers alone, before the body
    is read. Returns ADMIT, UNVERIFIED (a Basic password not checked yet: the app checks it) or
    (status, message, headers)."""
    st = app_state(app)
    serializer = app.session_interface.get_signing_serializer(app)
    cookie_name = app.config["SESSION_COOKIE_NAME"]

    def gate(path: str, headers: dict[str, str], addr: str):
        if not host_allowed(headers.get("HOST", ""), st.config.web.auth):
            return 403, BAD_HOST, ()
        if not st.config.web.auth:
            return ADMIT
        if path == LOGIN_PATH:
            if int(headers.get("CONTENT_LENGTH") or LOGIN_MAX_BODY + 1) > LOGIN_MAX_BODY:
                return 413, "the login form is larger than a login form can be", ()
            return ADMIT
        password = _basic_password(headers.get("AUTHORIZATION", ""))
        if password is not None:
            # Only what costs no password hashing here; a password not seen yet is checked by
            # authenticate() once the body is in (one such body per address at a time).
            if st.limiter.blocked(addr):
                return 429, TOO_MANY, (("Retry-After", "60"),)
            known = st.checker.verify_cheaply(password)
            if known is None:
                return UNVERIFIED
            if known:
                return ADMIT
            check_login(st, password, addr)  # cheap here: counts the failure
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
