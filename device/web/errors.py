"""Every error the web side answers, in one shape: {"error": message, "status": code} for machines
(the API, /metrics, /healthz, JSON clients), an HTML page for people."""
from __future__ import annotations

import logging
from typing import Any

from flask import current_app, jsonify, render_template, request

log = logging.getLogger(__name__)


def error_json(status: int, message: str, **extra: Any) -> dict[str, Any]:
    """The JSON body of an error (also written by the server for refusals made before the app runs)."""
    return {"error": message, "status": status, **extra}


def is_api() -> bool:
    """Machine routes: JSON errors and an HTTP Basic challenge instead of the login page."""
    return request.path.startswith("/api/") or request.path == "/metrics"


def error_response(status: int, message: str, **extra: Any):
    """One clear message: JSON under /api/ (and for JSON clients), an HTML page otherwise."""
    if is_api() or request.path == "/healthz" or request.accept_mimetypes.best == "application/json":
        resp = jsonify(error_json(status, message, **extra))
    else:
        try:
            resp = current_app.make_response(render_template("error.html", status=status, message=message))
        except Exception:  # never let a template problem turn an error page into a traceback
            log.exception("error page failed")
            resp = current_app.make_response(f"{status} {message}")
            resp.mimetype = "text/plain"
    resp.status_code = status
    return resp
