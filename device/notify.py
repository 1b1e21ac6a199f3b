"""systemd's notify protocol for `edgecap run`: READY, STATUS, WATCHDOG and STOPPING."""
from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


def sd_notify(state: str, env: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1") to systemd's NOTIFY_SOCKET. False when not under systemd.

    The protocol is one datagram on a unix socket; a name starting with '@' is an abstract socket.
    Written here rather than depending on python-systemd, which is not on PyPI for every platform.
    """
    env = os.environ if env is None else env
    addr = env.get("NOTIFY_SOCKET")
    if not addr or addr[0] not in "/@":
        return False
    target = "\0" + addr[1:] if addr[0] == "@" else addr
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(state.encode())
    except OSError as e:
        log.debug("sd_notify(%s) failed: %s", state, e)
        return False
    return True


class Notifier:
    """READY / STATUS / WATCHDOG / STOPPING for systemd; silent no-ops elsewhere."""

    def __init__(self, env: dict[str, str] | os._Environ[str] | None = None) -> None:
        self.env = dict(os.environ if env is None else env)
        self.enabled = bool(self.env.get("NOTIFY_SOCKET"))
        usec = self.env.get("WATCHDOG_USEC", "")
        pid = self.env.get("WATCHDOG_PID", "")
        watchdog = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        # ping at half the timeout, as sd_watchdog_enabled(3) recommends
        self.watchdog_interval = int(usec) / 2e6 if watchdog else None
        self._last_ping = float("-inf")

    def send(self, state: str) -> None:
        if self.enabled:
            sd_notify(state, self.env)

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

