"""Web settings: the few values the web app needs, independent of how the config is loaded.

`create_app` accepts either a `WebSettings` or the project's `Config` (device/config.py: a `.web`
section with `auth`, `password_hash`, `password` (env only), `max_upload_mb`, `secret_key`; plus
`data_dir` and `model.beam_width`).
"""
from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
SECRET_FILE = "web_secret_key"


class WebConfigError(ValueError):
    """A setting makes the web app impossible to start; the message says what to change."""


@dataclass
class WebSettings:
    auth: bool = True
    password_hash: str | None = None  # werkzeug.security hash; never a plain password
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    secret_key: str | None = None  # signs the session cookie; from data_dir or generated when None
    password: str | None = field(default=None, repr=False)  # plain, only from EDGECAP_PASSWORD; wins
    data_dir: Path | None = None  # where a generated secret key is persisted
    username: str = "edgecap"  # shown in docs; any user name is accepted, only the password counts
    beam_width: int = 3  # for POST /api/caption
    max_login_failures: int = 20  # per client address per minute, then 429
    secure_cookies: bool = False  # set True behind an HTTPS reverse proxy
    concurrent_uploads: int = 4  # request bodies of the largest size held in memory at once


def settings_from(config: Any) -> WebSettings:
    """Build WebSettings from a WebSettings, a Config with a `.web` section, or None (defaults)."""
    if config is None:
        return WebSettings()
    if isinstance(config, WebSettings):
        return config
    web = getattr(config, "web", config)
    max_bytes = getattr(web, "max_upload_bytes", None)
    if max_bytes is None:
        mb = getattr(web, "max_upload_mb", None)
        max_bytes = int(float(mb) * 1024 * 1024) if mb is not None else DEFAULT_MAX_UPLOAD_BYTES
    beam = getattr(getattr(config, "model", None), "beam_width", None) or getattr(web, "beam_width", 3)
    data_dir = getattr(config, "data_dir", None)
    return WebSettings(
        auth=bool(getattr(web, "auth", True)),
        password_hash=getattr(web, "password_hash", None) or None,
        password=getattr(web, "password", None) or None,
        max_upload_bytes=int(max_bytes),
        secret_key=getattr(web, "secret_key", None) or None,
        beam_width=int(beam),
        data_dir=Path(data_dir) if data_dir else None,
        secure_cookies=bool(getattr(web, "secure_cookies", False)),
    )


def load_or_create_secret(data_dir: str | os.PathLike[str]) -> str:
    """Return the session-signing key kept in `data_dir`, creating it (mode 0600) on first use.

    Persisting it keeps users logged in across restarts of the service.
    """
    path = Path(data_dir) / SECRET_FILE
    try:
        key = path.read_text(encoding="ascii").strip()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("cannot read %s (%s); using a per-process session key", path, e.strerror)
        return secrets.token_hex(32)
    key = secrets.token_hex(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key + "\n")
    except OSError as e:
        log.warning("cannot write %s (%s); sessions end when the server restarts", path, e.strerror)
    return key


def host_allowed(host: str, settings: WebSettings) -> bool:
    """Whether to answer a request whose Host header is `host`.

    With a password, any: the password protects the data. Without one, only names a web page
    elsewhere cannot point at this device (DNS rebinding): localhost names, IP addresses, and this
    machine's own host name (also with .local).
    """
    if settings.auth:
        return True
    name = host.strip().lower()
    if name.startswith("["):  # [v6 address]:port
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    name = name.rstrip(".")
    if not name:
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    own = socket.gethostname().lower().partition(".")[0]
    return bool(own) and name in (own, f"{own}.local")


def exposure_warning(host: str, auth: bool) -> str | None:
    """A warning when the page is served to the network without a password (None otherwise)."""
    if auth:
        return None
    try:
        local = ipaddress.ip_address(host or "0.0.0.0").is_loopback
    except ValueError:
        local = host.lower() == "localhost"
    if local:
        return None
    return (f"the page is served on {host or '0.0.0.0'} WITHOUT a password: anyone who can reach this "
            "machine can read and add captures. Set a password (`edgecap hash-password`) or listen on "
            "127.0.0.1")


def effective_host(host: str | None, auth: bool, default: str = "0.0.0.0") -> str:
    """Where to listen: without authentication only localhost, unless a host was given explicitly."""
    if host:
        return host
    return default if auth else "127.0.0.1"
