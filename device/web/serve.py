"""Serving the app: `make_server` (the guarded waitress server for an app) and `start_web`, the one
way `edgecap run` and `edgecap serve` start the page (the password rule, the port-in-use message)."""
from __future__ import annotations

import dataclasses
import errno
import logging
import threading
from typing import Any

from flask import Flask

from device.config import Config
from device.pipeline import Device, StartupError

from .app import create_app
from .login import body_gate
from .server import Limits, WebServer
from .settings import WebConfigError, effective_host, exposure_warning
from .state import app_state

log = logging.getLogger(__name__)


def server_limits(app: Flask) -> Limits:
    """The server's limits from the app's settings: bodies up to the upload limit (plus the form's own
    bytes), and memory for a few such uploads at once."""
    max_body = int(app.config["MAX_CONTENT_LENGTH"]) + 64 * 1024
    return Limits(max_body=max_body, body_budget=app_state(app).concurrent_uploads * max_body)


def make_server(app: Flask, host: str = "0.0.0.0", port: int = 8080, threads: int = 8,
                limits: Limits | None = None) -> WebServer:
    """A guarded waitress server for an app from `create_app`, bound to host:port (0 = any free port).
    Run it with `.serve_forever()` (in a thread if you like), end it with `.stop()`; `.port` is the
    real port. `limits` default to the app's settings."""
    return WebServer(app, host, port, threads, limits or server_limits(app), body_gate(app))


def start_web(config: Config, device: Device, started: float, metrics: Any = None,
              alerts: Any = None) -> WebServer:
    """Serve the page in a thread; returns the server (call .stop()). Raises StartupError."""
    web = config.web
    if web.auth and not (web.password_hash or web.password) and not web.host:
        # A first run with no config should still show the page, but never to the LAN without a
        # password: serve it on this machine only until a password is set.
        log.warning("no web password set: serving the page on 127.0.0.1 only, without a password; run "
                    "`edgecap hash-password` and set [web] password_hash to open it to the network")
        config = dataclasses.replace(config, web=dataclasses.replace(web, auth=False, host="127.0.0.1"))
    host = effective_host(config.web.host or None, config.web.auth)
    port = config.web.port
    try:
        app = create_app(config, device.store, device.captioner, device.embedder, pipeline=device.pipeline,
                         started=started, metrics=metrics, alerts=alerts)
        server = make_server(app, host, port)
    except WebConfigError as e:
        raise StartupError(str(e)) from e
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {port} on {host} is already in use (another edgecap, or another server?): stop it, "
                f"or choose another port with --port {port + 1} or [web] port") from e
        raise StartupError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    if warning := exposure_warning(host, config.web.auth):
        log.warning("%s", warning)
    thread = threading.Thread(target=server.serve_forever, name="edgecap-web", daemon=True)
    thread.start()
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # an address a browser here can open
    log.info("web page on http://%s:%s/%s", shown, server.port,
             " (password required)" if config.web.auth else " (no password: this machine only)")
    return server
