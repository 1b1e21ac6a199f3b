"""The waitress server, hardened for a small device on a shared network.

Stock waitress reads a whole request body, spooling anything over 512 KB to a temporary file, before
the app sees the request and can ask for a password; it serves up to `connection_limit` sockets and
then stops accepting, whoever holds them. Here:

- A request with a body is judged as soon as its headers are in (`body_gate` in login.py): a wrong
  Host, no credentials or a blocked address is answered and the connection closed without reading
  the body. Credentials that cannot be checked cheaply yet (a Basic password not seen before) are
  allowed one body per address at a time.
- Bodies are held in memory only, never in temporary files (which may share the data disk), within
  one budget for all clients; past it a request is answered 503 before its body is read.
- Each address may hold `per_address` connections and all together `connections`; a new connection
  over either closes the oldest idle one (no request in service, no body arriving), so idle or
  half-sent requests cannot lock others out.
- Request headers must arrive within `header_timeout`, a body at `min_body_rate` on average, and an
  idle kept-alive connection is closed after `idle_timeout`.
- waitress's own refusals (413, 400, 431...) are answered like the app's: JSON under /api/, HTML else.
"""
from __future__ import annotations

import html
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.utilities import Error

from .errors import error_json

log = logging.getLogger(__name__)

# What admit_body answers: admit, admit as not yet verified, or refuse with (status, message, headers).
ADMIT, UNVERIFIED = "admit", "unverified"
Gate = Callable[[str, dict[str, str], str], Any]


@dataclass
class Limits:
    max_body: int  # the largest request body accepted (the upload limit plus form overhead)
    body_budget: int  # request bodies held in memory at once, all clients together
    per_address: int = 64  # open connections per client address (a browser uses ~6, bench.search 50)
    connections: int = 200  # open connections in all
    header_timeout: float = 10.0  # seconds for a request's line and headers
    idle_timeout: float = 15.0  # seconds a connection may wait with nothing to do
    min_body_rate: float = 32 * 1024  # bytes per second a body must average, after header_timeout


class HttpError(Error):
    """A refusal made before the app runs, in the app's format (JSON for the API, HTML for pages)."""

    def __init__(self, code: int, message: str, api: bool, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.code, self.reason, self.api, self.extra = code, _REASONS.get(code, "Error"), api, headers

    def to_response(self, ident: str | None = None):
        if self.api:
            body = json.dumps(error_json(self.code, self.body)).encode()
            ctype = "application/json"
        else:
            text = html.escape(self.body)
            body = (
                f'<!doctype html><html lang="en"><meta charset="utf-8"><title>{self.code} {self.reason}</title>'
                f'<link rel="stylesheet" href="/static/app.css"><main class="error"><h1>{self.code} '
                f'{self.reason}</h1><p>{text}</p><p><a href="/">Back to search</a></p></main></html>'
            ).encode()
            ctype = "text/html; charset=utf-8"
        headers = [
            ("Content-Type", ctype), ("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store"),
            ("Content-Security-Policy", "default-src 'none'; style-src 'self'"), *self.extra,
        ]
        return f"{self.code} {self.reason}", headers, body


_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 411: "Length Required",
            413: "Content Too Large", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
            501: "Not Implemented", 503: "Service Unavailable"}
_MESSAGES = {413: "the request is too large", 431: "the request headers are too large",
             400: "the request is malformed", 501: "this transfer encoding is not supported"}


def _wants_json(path: str, headers: dict[str, str]) -> bool:
    return path.startswith("/api/") or path == "/healthz" or "application/json" in headers.get("ACCEPT", "")


class GuardedParser(HTTPRequestParser):
    """waitress's parser, plus: a body is admitted (or refused) when the headers are complete."""

    def __init__(self, adj: Adjustments, channel: GuardedChannel):
        super().__init__(adj)
        self.channel = channel
        self.started = time.time()
        self.reserved = 0
        self.unverified_addr: str | None = None
        self.request_start = b""

    def received(self, data: bytes) -> int:
        had_headers = self.headers_finished
        if len(self.request_start) < 1024:  # to answer in the right format even if the headers fail
            self.request_start += data[:1024]
        consumed = super().received(data)
        if self.error is not None and not isinstance(self.error, HttpError):
            code = getattr(self.error, "code", 400)
            words = self.request_start.split(b" ", 2)
            path = words[1].decode("latin-1") if len(words) > 2 else "/"
            self.error = HttpError(code, _MESSAGES.get(code, str(self.error.body)),
                                   _wants_json(path, self.headers))
        if not had_headers and self.headers_finished and self.error is None and self.body_rcv is not None:
            refusal = self.channel.server.guard.admit(self)
            if refusal is not None:
                self.error, self.completed, self.expect_continue = refusal, True, False
                return len(data)  # the rest is body: never looked at
        return consumed

    def close(self) -> None:
        self.channel.server.guard.release(self)
        super().close()


class GuardedChannel(HTTPChannel):
    def parser_class(self, adj: Adjustments) -> GuardedParser:  # waitress calls self.parser_class(adj)
        return GuardedParser(adj, self)

    def __init__(self, server: GuardedServer, sock, addr, adj, map=None):
        super().__init__(server, sock, addr, adj, map)
        server.guard.make_room(server, self)

    def handle_close(self) -> None:
        if self.request is not None:  # a body was still arriving: give its budget back
            self.request.close()
        super().handle_close()


class Guard:
    """Budgets and limits shared by a server's channels (the event loop and the worker threads)."""

    def __init__(self, limits: Limits, gate: Gate):
        self.limits, self.gate = limits, gate
        self._lock = threading.Lock()
        self.in_memory = 0
        self._unverified: Counter[str] = Counter()
        self._evicted, self._evicted_logged = 0, float("-inf")

    def admit(self, req: GuardedParser) -> HttpError | None:
        addr = str(req.channel.addr[0]) if req.channel.addr else "?"
        api = _wants_json(req.path, req.headers)
        verdict = self.gate(req.path, req.headers, addr)
        if verdict not in (ADMIT, UNVERIFIED):
            status, message, headers = verdict
            return HttpError(status, message, api, tuple(headers))
        size = self.limits.max_body if req.chunked else req.content_length
        with self._lock:
            if verdict == UNVERIFIED and self._unverified[addr] >= 1:
                return HttpError(429, "one upload at a time until the password has been checked", api,
                                 (("Retry-After", "5"),))
            if self.in_memory + size > self.limits.body_budget:
                log.warning("uploads: %d bytes already arriving; refusing %d more from %s", self.in_memory,
                            size, addr)
                return HttpError(503, "the device is busy receiving other uploads; try again shortly", api,
                                 (("Retry-After", "5"),))
            self.in_memory += size
            req.reserved = size
            if verdict == UNVERIFIED:
                self._unverified[addr] += 1
                req.unverified_addr = addr
        return None

    def release(self, req: GuardedParser) -> None:
        with self._lock:
            self.in_memory -= req.reserved
            req.reserved = 0
            if req.unverified_addr is not None:
                self._unverified[req.unverified_addr] -= 1
                if self._unverified[req.unverified_addr] <= 0:
                    del self._unverified[req.unverified_addr]
                req.unverified_addr = None

    @staticmethod
    def _idle(ch: HTTPChannel) -> bool:
        return not ch.requests and (ch.request is None or not ch.request.headers_finished)

    def make_room(self, server: GuardedServer, new: HTTPChannel) -> None:
        """Keep the per-address and total connection caps by closing the oldest idle connections."""
        addr = new.addr[0] if new.addr else None
        open_ = [c for c in server.active_channels.values() if not c.will_close]
        for group, cap in (([c for c in open_ if c.addr and c.addr[0] == addr], self.limits.per_address),
                           (open_, self.limits.connections)):
            over = len(group) - cap
            if over <= 0:
                continue
            idle = sorted((c for c in group if self._idle(c) and c is not new), key=lambda c: c.last_activity)
            victims = (idle + [new])[:over]  # the newcomer only when nothing else is idle
            for c in victims:
                c.will_close = True
            self._note_evictions(len(victims), addr)
            open_ = [c for c in open_ if not c.will_close]

    def _note_evictions(self, n: int, addr: str | None) -> None:
        """One warning a minute at most: a flood of connections must not flood the log too."""
        self._evicted += n
        now = time.monotonic()
        if now - self._evicted_logged >= 60:
            log.warning("connections: closed %d idle connection(s) to make room (latest for %s)",
                        self._evicted, addr)
            self._evicted, self._evicted_logged = 0, now

    def expire(self, server: GuardedServer, now: float) -> None:
        """Close connections that wait too long for a request, its headers or its body."""
        lim = self.limits
        for c in list(server.active_channels.values()):
            if c.requests or c.will_close:
                continue
            req = c.request
            if req is None:
                late = now - c.last_activity > lim.idle_timeout
            elif not req.headers_finished:
                late = now - req.started > lim.header_timeout
            else:
                size = lim.max_body if req.chunked else req.content_length
                late = (now - req.started > lim.header_timeout + size / lim.min_body_rate
                        or now - c.last_activity > lim.header_timeout)
            if late:
                c.will_close = True


class GuardedServer(TcpWSGIServer):
    channel_class = GuardedChannel

    def __init__(self, app: Any, guard: Guard, **adjustments: Any):
        self.guard = guard
        super().__init__(app, adj=Adjustments(**adjustments))

    def maintenance(self, now: float) -> None:
        self.guard.expire(self, now)


class WebServer:
    """A guarded waitress server that can be stopped cleanly from another thread or a signal handler.

    waitress's own `close()` tears the sockets down under a running select() loop; here the loop runs
    in short slices and the serving thread closes everything itself once `stop()` is called.
    """

    def __init__(self, app: Any, host: str, port: int, threads: int, limits: Limits, gate: Gate):
        self.guard = Guard(limits, gate)
        self._server = GuardedServer(
            app, self.guard, host=host, port=port, threads=threads, ident="edgecap",
            max_request_body_size=limits.max_body, inbuf_overflow=limits.max_body + 1,
            clear_untrusted_proxy_headers=True, cleanup_interval=1, connection_limit=limits.connections + limits.per_address,
        )
        self._stop = threading.Event()

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def host(self) -> str:
        return str(self._server.effective_host)

    def serve_forever(self) -> None:
        """Serve until `stop()`; then close the sockets and wait for running requests to finish."""
        from waitress import wasyncore

        srv = self._server
        try:
            while not self._stop.is_set():
                wasyncore.loop(timeout=srv.adj.asyncore_loop_timeout, map=srv._map,
                               use_poll=srv.adj.asyncore_use_poll, count=1)
        finally:
            srv.task_dispatcher.shutdown()
            wasyncore.close_all(srv._map)

    def stop(self) -> None:
        self._stop.set()
        try:
            self._server.pull_trigger()  # wake the select() now rather than at its timeout
        except OSError:
            pass
