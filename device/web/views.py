"""The HTML pages: search, one capture, caption-a-photo, login. Results are filled in by static JS
from the JSON API, so the page and the API can never disagree."""
from __future__ import annotations

import logging
from urllib.parse import urlsplit

from flask import Blueprint, abort, redirect, render_template, request, session, url_for

from . import params
from .login import check_login, start_session
from .state import state

log = logging.getLogger(__name__)
bp = Blueprint("views", __name__)

K_CHOICES = (12, 24, 48, 100)


def _safe_next(target: str | None) -> str:
    """Only a path on this site: a crafted ?next= must not send the user elsewhere after login.

    Browsers drop tabs and newlines from URLs and read a backslash as a slash, so "/\t/evil.example"
    would become "//evil.example": anything but printable ASCII, and any backslash, is refused.
    """
    fallback = url_for("views.index")
    if not target or any(not (32 < ord(ch) < 127) for ch in target) or "\\" in target:
        return fallback
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/") or parts.path.startswith("//"):
        return fallback
    return target


def _sources() -> list[str]:
    try:
        return list(state().store.sources())
    except Exception:  # the filter list is a nicety; the page must still load
        log.warning("could not list the sources for the filter", exc_info=True)
        return []


@bp.get("/")
def index():
    # Validate here too, so a bad link shows a clear message rather than an empty page.
    q = params.query_arg(request.args)
    k = params.int_arg(request.args, "k", 24, 1, params.MAX_K)
    params.filter_args(request.args)
    return render_template(
        "index.html", q=q, k=k, k_choices=sorted({*K_CHOICES, k}), sources=_sources(),
        source=params.source_arg(request.args) or "",
        since=request.args.get("since", ""), until=request.args.get("until", ""),
        from_time=request.args.get("from_time", ""), to_time=request.args.get("to_time", ""),
        has_embedder=state().embedder is not None,
    )


@bp.get("/capture/<id:cid>")
def capture_page(cid: int):
    c = state().store.get(cid)
    if c is None:
        abort(404)
    return render_template("capture.html", c=params.capture_json(c, full=True))


@bp.get("/upload")
def upload_page():
    st = state()
    return render_template(
        "upload.html", has_captioner=st.captioner is not None,
        max_mb=st.max_upload_bytes / (1024 * 1024),
    )


@bp.route("/login", methods=["GET", "POST"])
def login():
    st = state()
    nxt = _safe_next(request.values.get("next"))
    if not st.config.web.auth:
        return redirect(nxt)
    if request.method != "POST":  # GET, and HEAD (which is not a login attempt)
        return render_template("login.html", next=nxt, error=None)
    ok = check_login(st, request.form.get("password"), request.remote_addr or "?")
    if ok is None:
        resp = render_template("login.html", next=nxt, error="Too many failed attempts; wait a minute.")
        return resp, 429
    if ok:
        start_session(st)
        return redirect(nxt, code=303)
    return render_template("login.html", next=nxt, error="Wrong password."), 401


@bp.post("/logout")
def logout():
    sid = session.get("sid")
    if sid:
        state().revoked.revoke(str(sid))  # a copy of the cookie must not outlive the logout
    session.clear()
    return redirect(url_for("views.login"), code=303)
