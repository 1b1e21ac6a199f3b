"""What every route and hook of the web app shares: one `AppState` per app, and `state()` to reach it.

`create_app` (app.py) builds the state; blueprints, the login checks and the server's early gate read
it only through `state()` / `app_state(app)`.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app

from device.config import Config

from .auth import FailureLimiter, PasswordChecker, RevokedSessions

EXTENSION = "edgecap"  # the key in app.extensions


@dataclass
class AppState:
    config: Config  # [web] settings are config.web; also data_dir and model.beam_width
    store: Any
    captioner: Any
    embedder: Any
    pipeline: Any  # device.pipeline.Pipeline over store, captioner and embedder; None without captioner
    started: float
    checker: PasswordChecker
    limiter: FailureLimiter
    revoked: RevokedSessions
    concurrent_uploads: int  # request bodies of the largest size the server holds in memory at once
    # TFLite interpreters are not thread-safe, and a large photo decodes to tens of MB: uploads are
    # decoded and captioned one at a time.
    caption_lock: threading.Lock = field(default_factory=threading.Lock)
    static_version: str = ""
    metrics: Any = None  # device.metrics.Registry of the running daemon, or None (`edgecap serve`)
    alerts: Any = None  # device.alerts.Alerts of the running daemon, or None

    @property
    def max_upload_bytes(self) -> int:
        return self.config.web.max_upload_bytes


def app_state(app: Flask) -> AppState:
    return app.extensions[EXTENSION]


def state() -> AppState:
    """The state of the app serving the current request."""
    return app_state(current_app)
