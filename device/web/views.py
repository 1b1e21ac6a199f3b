"""The HTML pages: search, one capture, caption-a-photo, login. Results are filled in by static JS
from the JSON API, so the page and the API can never disagree."""
from __future__ import annotations

import logging

from flask import Blueprint, abort, redirect, render_template, request, session, url_for

from . import params
from .app import state

log = logging.getLogger(__name__)
bp = Blueprint("views", __name__)

K_CHOICES = (12, 24, 48, 100)


def _safe_next(target: str | None) -> str:
    """Only same-site paths: a crafted ?next= must not send the user elsewhere after login."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("views.index")
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
        max_mb=st.settings.max_upload_bytes / (1024 * 1024),
    )


@bp.route("/login", methods=["GET", "POST"])
def login():
    st = state()
    nxt = _safe_next(request.values.get("next"))
    if not st.settings.auth:
        return redirect(nxt)
    if request.method == "GET":
        return render_template("login.html", next=nxt, error=None)
    addr = request.remote_addr or "?"
    if st.limiter.blocked(addr):
        resp = render_template("login.html", next=nxt, error="Too many failed attempts; wait a minute.")
        return resp, 429
    if st.checker.verify(request.form.get("password")):
        st.limiter.reset(addr)
        session.clear()  # a fresh session (and CSRF token) after login: no fixation
        session.permanent = True
        session["auth"] = st.checker.fingerprint
        return redirect(nxt, code=303)
    st.limiter.fail(addr)
    return render_template("login.html", next=nxt, error="Wrong password."), 401


@bp.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("views.login"), code=303)
