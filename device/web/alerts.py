"""The alert rules and their recent matches: GET /alerts (page) and GET /api/alerts (JSON).

Rules are checked by `edgecap run` as captures arrive (device/alerts.py); the matches shown are those
since the service started (they are events, also sent over MQTT and webhooks, not stored)."""
from __future__ import annotations

from flask import Blueprint, jsonify, render_template

from .state import state

bp = Blueprint("alerts", __name__)


def _status() -> dict:
    alerts = state().alerts
    if alerts is None:
        return {"running": False, "rules": [], "recent": [], "checked": 0}
    return {"running": True, **alerts.status()}


@bp.get("/api/alerts")
def api_alerts():
    """GET /api/alerts : the rules with their match counts, and the recent matches, newest first."""
    return jsonify(_status())


@bp.get("/alerts")
def alerts_page():
    return render_template("alerts.html", **_status())
