"""The web page's start-up rules: where it listens, the warning when it is open without a password,
the Host names it answers without one, and the session-signing key kept in the data folder.

Its settings are `config.web` (device/config.py's `WebConfig`), used directly.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import socket
from pathlib import Path

log = logging.getLogger(__name__)

SECRET_FILE = "web_secret_key"


class WebConfigError(ValueError):
    """A setting makes the web app impossible to start; the message says what to change."""


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


def host_allowed(host: str, auth: bool) -> bool:
    """Whether to answer a request whose Host header is `host`.

    With a password, any: the password protects the data. Without one, only names a web page
    elsewhere cannot point at this device (DNS rebinding): localhost names, IP addresses, and this
    machine's own host name (also with .local).
    """
    if auth:
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
