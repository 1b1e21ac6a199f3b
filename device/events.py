"""Hands each stored capture to the event outputs (MQTT, alerts) without making the capture loop wait.

`Pipeline.save` calls `EventHub.submit(capture_id)`: an append to a bounded queue, nothing more. One
worker thread reads the capture back from the store (with its own SQLite connection), builds the JSON
every output publishes, and gives it to each output in turn. A slow or absent network therefore costs
the capture loop nothing; when the queue is full the oldest capture id is dropped and counted.
"""
from __future__ import annotations

import logging
import re
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from device.config import Config
from device.metrics import Sample, counter, gauge

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000  # capture ids waiting for the worker


class EventsError(RuntimeError):
    """MQTT or alerts cannot start as configured; the message says what to change."""


@dataclass
class CaptureEvent:
    capture: dict[str, Any]  # the store's row (Store.get_many)
    payload: dict[str, Any]  # the JSON published for it (capture_payload)
    thumbnail: bytes | None  # the stored thumbnail JPEG, None when it is gone


Output = Callable[[CaptureEvent], None]


def host_name() -> str:
    return socket.gethostname().split(".")[0] or "edgecap"


def page_base_url(config: Config) -> str:
    """Where others reach the page: [web] public_url, else http://<host name>:<port>."""
    return (config.web.public_url or f"http://{host_name()}:{config.web.port}").rstrip("/")


def device_id(config: Config) -> str:
    """[mqtt] device_id, else the host name, as a topic- and entity-id-safe word."""
    return re.sub(r"[^a-z0-9_-]+", "-", (config.mqtt.device_id or host_name()).lower()).strip("-") or "edgecap"


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def capture_payload(capture: dict[str, Any], base_url: str) -> dict[str, Any]:
    """The JSON a capture is published as (MQTT, webhooks): small, and self-explaining."""
    cid = int(capture["id"])
    score = capture.get("score")
    return {
        "id": cid,
        "time": iso(float(capture["time"])),
        "timestamp": round(float(capture["time"]), 3),
        "caption": capture.get("caption") or "",
        "score": None if score is None else round(float(score), 4),
        "tags": capture.get("tags") or [],
        "source": capture.get("source"),
        "model": capture.get("model_id"),
        "url": f"{base_url}/capture/{cid}",
        "image_url": f"{base_url}/api/captures/{cid}/image",
        "thumb_url": f"{base_url}/api/captures/{cid}/thumb",
    }


class EventHub:
    """The bounded queue between the capture loop and the outputs, and the thread that empties it."""

    def __init__(self, store: Any, outputs: list[Output], base_url: str, queue_size: int = QUEUE_SIZE) -> None:
        self.store = store
        self.outputs = outputs
        self.base_url = base_url
        self._queue: deque[int] = deque()
        self._queue_size = queue_size
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self.handled = 0
        self.dropped = 0
        self.errors = 0

    def submit(self, capture_id: int) -> None:
        """Called by the capture loop after a capture is committed; never blocks on the network."""
        with self._cond:
            if len(self._queue) >= self._queue_size:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(int(capture_id))
            self._cond.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edgecap-events", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Let the worker hand over what is queued (up to `timeout`), then end it."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("events: %d capture(s) not handed to the outputs before stopping", len(self._queue))

    def idle(self) -> bool:
        """Nothing queued and nothing being handled (for tests and the benchmark)."""
        with self._cond:
            return not self._queue and not self._busy

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                cid = self._queue.popleft()
                self._busy = True
            try:
                self._handle(cid)
            finally:
                with self._cond:
                    self._busy = False

    def _handle(self, cid: int) -> None:
        try:
            rows = self.store.get_many([cid])
            thumb_path = self.store.file_path(cid, "thumb") if rows else None
            thumbnail = thumb_path.read_bytes() if thumb_path is not None else None
        except Exception:  # the store closing under us at shutdown, a vanished file...
            self.errors += 1
            log.warning("events: cannot read capture #%d back", cid, exc_info=True)
            return
        if not rows:  # deleted by retention before we got to it
            return
        event = CaptureEvent(rows[0], capture_payload(rows[0], self.base_url), thumbnail)
        for output in self.outputs:
            try:
                output(event)
            except Exception:
                self.errors += 1
                log.exception("events: an output failed for capture #%d", cid)
        self.handled += 1

    def samples(self) -> list[Sample]:
        with self._cond:
            queued = len(self._queue)
        return [
            gauge("edgecap_events_queue_length", "Captures waiting to be published and checked against alerts",
                  queued),
            counter("edgecap_events_dropped_total", "Captures dropped because the event queue was full",
                    self.dropped),
            counter("edgecap_events_errors_total", "Errors while publishing a capture or checking alerts",
                    self.errors),
        ]
