"""[[alerts]] rules: each new capture is checked against every rule; a match is published (MQTT) and
POSTed to the rule's webhook.

A `query` rule scores the capture with the same `search()` the page uses, restricted to that one
moment, so its score is the `rank_score` that `edgecap search "<query>"` shows for the capture: pick the
threshold (`min_score`) by searching. A `phrase` rule matches when the caption says those words in that
order (singular and plural alike). After a match a rule stays silent for `quiet` seconds of capture time.
"""
from __future__ import annotations

import http.client
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from device.config import AlertRule, redact_url
from device.events import CaptureEvent, iso
from device.metrics import Sample, counter, gauge
from device.search import textnorm

log = logging.getLogger(__name__)

RECENT = 50  # matches kept for the page
WEBHOOK_QUEUE = 100
WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_RETRY_DELAYS_S = (1.0, 4.0, 15.0)  # after the first try; then the match is given up

OnMatch = Callable[[AlertRule, dict[str, Any]], None]


def phrase_matches(phrase: str, caption: str) -> bool:
    """The caption contains the phrase's words, consecutively ("dogs" and "dog" alike)."""
    want = [textnorm.inflections(w) for w in textnorm.words(phrase)]
    have = textnorm.words(caption)
    if not want:
        return False
    return any(all(have[i + j] in forms for j, forms in enumerate(want)) for i in range(len(have) - len(want) + 1))


def query_score(store: Any, embedder: Any, query: str, capture: dict[str, Any]) -> float | None:
    """search()'s rank_score for this capture, or None when search would not return it at all."""
    from device.search import search

    t = float(capture["time"])
    # The one moment [t, next float after t): search ranks only this capture (and any stored at the
    # very same time), with the same keyword, caption and image scores as the page.
    res = search(store, query, k=20, embedder=embedder, since=t, until=math.nextafter(t, math.inf))
    for item in res.items:
        if int(item["id"]) == int(capture["id"]):
            return float(item["rank_score"])
    return None


class QueryVectors:
    """The text embedder, remembering the vectors of the rules' queries. They never change, and
    embedding one costs several times the rest of the scoring (and holds the embedder's lock, which
    the capture loop needs for every caption)."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self._vectors: dict[str, np.ndarray] = {}

    def embed(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing:
            self._vectors.update(zip(missing, self.embedder.embed(missing)))
        return np.stack([self._vectors[t] for t in texts])

    def __getattr__(self, name: str) -> Any:  # token_ids, model_id, dim: the embedder's own
        return getattr(self.embedder, name)


class Alerts:
    """The rules, their counters and the recent matches (for the page and /api/alerts)."""

    def __init__(self, rules: list[AlertRule], store: Any, embedder: Any, on_match: list[OnMatch]) -> None:
        self.rules = rules
        self.store = store
        self.embedder = None if embedder is None else QueryVectors(embedder)
        self.on_match = on_match
        self._lock = threading.Lock()
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.matches = {r.name: 0 for r in rules}
        self.suppressed = {r.name: 0 for r in rules}
        self.last_match: dict[str, float] = {}  # rule name -> capture time of its last published match
        self.checked = 0

    def score(self, rule: AlertRule, capture: dict[str, Any]) -> float | None:
        """The rule's score for the capture when it matches, else None."""
        if rule.phrase:
            return 1.0 if phrase_matches(rule.phrase, capture.get("caption") or "") else None
        s = query_score(self.store, self.embedder, rule.query, capture)
        return s if s is not None and s >= rule.min_score else None

    def check(self, event: CaptureEvent) -> None:
        """An EventHub output: score the capture against every rule, publish the matches."""
        t = float(event.capture["time"])
        for rule in self.rules:
            score = self.score(rule, event.capture)
            if score is None:
                continue
            with self._lock:
                last = self.last_match.get(rule.name)
                if last is not None and 0 <= t - last < rule.quiet:
                    self.suppressed[rule.name] += 1
                    log.info("alert %r: #%d matches but the rule is quiet", rule.name, event.capture["id"])
                    continue
                self.last_match[rule.name] = t
                self.matches[rule.name] += 1
                match = {
                    "event_type": rule.name,  # Home Assistant's MQTT event entity reads this key
                    "rule": rule.name,
                    "query": rule.query or rule.phrase,
                    "kind": "query" if rule.query else "phrase",
                    "score": round(score, 4) if rule.query else None,
                    "min_score": rule.min_score if rule.query else None,
                    "matched_at": iso(time.time()),
                    "capture": event.payload,
                }
                self.recent.appendleft(match)
            log.info("alert %r: #%d %s", rule.name, event.capture["id"], event.payload["caption"])
            for publish in self.on_match:
                publish(rule, match)
        with self._lock:
            self.checked += 1

    def status(self) -> dict[str, Any]:
        """Rules with their counts and the recent matches, newest first (JSON-ready)."""
        with self._lock:
            rules = [{
                "name": r.name, "kind": "query" if r.query else "phrase", "text": r.query or r.phrase,
                "min_score": r.min_score if r.query else None, "quiet_s": r.quiet,
                "webhook": redact_url(r.webhook) or None, "matches": self.matches[r.name],
                "suppressed": self.suppressed[r.name],
                "last_match": iso(self.last_match[r.name]) if r.name in self.last_match else None,
            } for r in self.rules]
            return {"rules": rules, "recent": list(self.recent), "checked": self.checked}

    def samples(self) -> list[Sample]:
        with self._lock:
            out = [counter("edgecap_alert_matches_total", "Alert matches published, per rule", n, rule=name)
                   for name, n in self.matches.items()]
            out += [counter("edgecap_alert_suppressed_total", "Alert matches not published (quiet period)",
                            n, rule=name) for name, n in self.suppressed.items()]
        return out


class WebhookSender:
    """POSTs matches as JSON from its own thread, retrying connection errors, 5xx and 429 answers."""

    def __init__(self, retry_delays: tuple[float, ...] = WEBHOOK_RETRY_DELAYS_S,
                 timeout: float = WEBHOOK_TIMEOUT_S, queue_size: int = WEBHOOK_QUEUE) -> None:
        self.retry_delays = retry_delays
        self.timeout = timeout
        self._queue: deque[tuple[str, bytes]] = deque(maxlen=queue_size)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered = self.failed = self.retries = self.dropped = 0

    def deliver(self, rule: AlertRule, match: dict[str, Any]) -> None:
        """An Alerts on_match: queue the POST (never blocks; a full queue drops the oldest)."""
        if not rule.webhook:
            return
        with self._cond:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
            self._queue.append((rule.webhook, json.dumps(match).encode()))
            self._cond.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edgecap-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Finish what is queued within `timeout` (no more retry waits), then end the thread."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait()
                if not self._queue:
                    return
                url, body = self._queue.popleft()
            self._post_with_retries(url, body)

    def _post_with_retries(self, url: str, body: bytes) -> None:
        for attempt in range(len(self.retry_delays) + 1):
            ok, retry, why = post_json(url, body, self.timeout)
            if ok:
                self.delivered += 1
                return
            if not retry or attempt == len(self.retry_delays) or self._stop.is_set():
                break
            self.retries += 1
            log.warning("webhook %s: %s; retrying in %.0f s", redact_url(url), why, self.retry_delays[attempt])
            if self._stop.wait(self.retry_delays[attempt]):
                break
        self.failed += 1
        log.error("webhook %s: %s; giving up on this match", redact_url(url), why)

    def samples(self) -> list[Sample]:
        with self._cond:
            queued = len(self._queue)
        return [
            gauge("edgecap_webhook_queue_length", "Alert webhooks waiting to be sent", queued),
            counter("edgecap_webhook_delivered_total", "Alert webhooks answered with 2xx", self.delivered),
            counter("edgecap_webhook_failed_total", "Alert webhooks given up after retries", self.failed),
            counter("edgecap_webhook_retries_total", "Alert webhook attempts repeated", self.retries),
            counter("edgecap_webhook_dropped_total", "Alert webhooks dropped because the queue was full",
                    self.dropped),
        ]


def post_json(url: str, body: bytes, timeout: float) -> tuple[bool, bool, str]:
    """One POST -> (delivered?, worth retrying?, what happened). Redirects are not followed."""
    parts = urlsplit(url)
    conn_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn = conn_type(parts.hostname, parts.port, timeout=timeout)
        try:
            conn.request("POST", path, body=body, headers={
                "Content-Type": "application/json", "User-Agent": "edgecap"})
            status = conn.getresponse().status
        finally:
            conn.close()
    except (OSError, http.client.HTTPException) as e:
        return False, True, f"cannot connect ({e})"
    if 200 <= status < 300:
        return True, False, str(status)
    return False, status >= 500 or status == 429, f"answered HTTP {status}"
