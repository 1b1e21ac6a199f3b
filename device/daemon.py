"""The capture loop behind `edgecap run`: source -> gate -> caption -> embed -> store, plus retention,
signals, systemd notifications and the web page in a thread.

It never exits because of the camera or a full disk: a failing camera is reopened with back-off and a
full store makes room by deleting the oldest captures. SIGTERM/SIGINT finish the current frame, and the
store has committed it before the process exits 0.
"""
from __future__ import annotations

import dataclasses
import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from device.config import Config
from device.event_outputs import start_events
from device.events import EventsError
from device.gate import Backoff, ChangeGate
from device.metrics import Registry, Sample, counter
from device.notify import Notifier
from device.pipeline import Pipeline, StartupError, open_device
from device.runtime import tune_malloc
from device.sources import Frame, Source, SourceError, detect_source, open_source

log = logging.getLogger(__name__)

MB = 1024 * 1024
RETENTION_EVERY_S = 60.0


# ---------------------------------------------------------------------------------------------- the loop

@dataclass
class RunStats:
    stored: int = 0
    skipped_same: int = 0
    errors: int = 0
    deleted: int = 0


class Daemon:
    """One capture loop. `run()` returns when `stop` is set, max_captures is reached, or a finite source
    ends with no web page to keep serving."""

    def __init__(self, config: Config, pipeline: Pipeline, stop: threading.Event,
                 notifier: Notifier | None = None, keep_alive: Callable[[], bool] = lambda: False) -> None:
        self.config = config
        self.pipeline = pipeline
        self.store = pipeline.store
        self.stop = stop
        self.notifier = notifier or Notifier({})
        self.keep_alive = keep_alive  # True while something else (the web page) should keep us running
        self.gate = ChangeGate(config.capture.min_change)
        self.stats = RunStats()
        from device.store import StoreError, StoreFullError

        self._full_error: type[BaseException] = StoreFullError
        # everything the store may raise for a capture it could not write (disk, SQLite, files)
        self._store_errors: tuple[type[BaseException], ...] = (StoreError, OSError, sqlite3.Error)
        self._last_retention = float("-inf")
        self._store_backoff = Backoff()
        self.pending: tuple[Frame, np.ndarray | None] | None = None  # a frame the store could not take yet

    # waits that wake for stop and keep the watchdog fed
    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + max(0.0, seconds)
        tick = min(1.0, self.notifier.watchdog_interval or 1.0)
        while not self.stop.is_set():
            self.notifier.watchdog()
            left = end - time.monotonic()
            if left <= 0:
                return
            self.stop.wait(min(left, tick))

    def _resolved_config(self) -> Config:
        """Auto-detect once: a camera that vanishes later is retried, not swapped for the samples."""
        cfg = self.config
        if cfg.camera.source != "auto":
            return cfg
        kind, device, why = detect_source(cfg)
        log.info("camera: auto-detected %s (%s)", kind, why)
        return dataclasses.replace(cfg, camera=dataclasses.replace(cfg.camera, source=kind, device=device))

    def retention(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_retention < RETENTION_EVERY_S:
            return
        self._last_retention = now
        st = self.config.store
        try:
            n = self.store.enforce_retention(int(st.max_size_mb * MB), int(st.min_free_mb * MB))
        except self._store_errors as e:
            log.error("retention failed: %s", e)
            return
        if n:
            self.stats.deleted += n
            log.info("retention: deleted %d oldest capture(s)", n)

    def handle(self, frame: Frame, gated: bool) -> None:
        """Gate, caption, embed and store one frame; errors are logged, never raised."""
        sig = None
        if gated:
            keep, diff, sig = self.gate.check(frame.image)
            if not keep:
                self.stats.skipped_same += 1
                log.debug("skipped: change %.4f < min_change %.4f", diff, self.gate.min_change)
                return
        self.store_frame(frame, sig)

    def store_frame(self, frame: Frame, sig: np.ndarray | None) -> None:
        """Caption, embed and store a frame that passed the gate. When the store cannot take it (disk
        full, database locked...), the frame is kept and tried again after a back-off (`retry_pending`)."""
        try:
            try:
                cid, cap = self.pipeline.process(frame)
            except self._full_error as e:
                # make room and try once more; if still full, keep the frame and try again later
                log.warning("store full (%s): deleting the oldest captures", e)
                self.retention(force=True)
                cid, cap = self.pipeline.process(frame)
        except self._store_errors as e:
            self.stats.errors += 1
            delay = self._store_backoff.next()
            log.error("cannot store the capture from %s (%s); trying it again in %.0f s", frame.source, e, delay)
            self.pending = (frame, sig)
            self._sleep(delay)
            return
        except Exception:
            self.stats.errors += 1
            log.exception("captioning a frame from %s failed; skipping it", frame.source)
            return
        self._store_backoff.reset()
        if sig is not None:
            self.gate.remember(sig)
        self.stats.stored += 1
        log.info("#%d %s: %s (%.2f)", cid, frame.source, cap.text, cap.score)

    def samples(self) -> list[Sample]:
        """For /metrics: what this loop did since it started."""
        st = self.stats
        return [
            counter("edgecap_captures_total", "Captures stored by the capture loop", st.stored),
            counter("edgecap_frames_unchanged_total", "Frames skipped as unchanged (min_change)", st.skipped_same),
            counter("edgecap_capture_errors_total", "Frames that could not be captioned or stored", st.errors),
            counter("edgecap_retention_deleted_total", "Captures deleted to keep the store in its limits",
                    st.deleted),
            *self.pipeline.caption_seconds.samples(
                "edgecap_caption_seconds", "Time to caption one frame (encoder + beam search)"),
        ]

    def retry_pending(self) -> bool:
        """Try the frame the store could not take again; True when there was one."""
        if self.pending is None:
            return False
        frame, sig = self.pending
        self.pending = None
        self.store_frame(frame, sig)
        return True

    def run(self) -> RunStats:
        cfg = self._resolved_config()
        interval = cfg.capture.interval
        limit = cfg.capture.max_captures
        backoff = Backoff()
        source: Source | None = None
        finished = False
        next_capture = time.monotonic()
        self.retention(force=True)
        self.notifier.ready(f"capturing from {cfg.camera.source}")
        try:
            while not self.stop.is_set():
                self.notifier.watchdog()
                self.retention()
                if self.retry_pending():
                    if limit and self.stats.stored >= limit:
                        break
                    continue
                if finished:
                    if not self.keep_alive():
                        break
                    self._sleep(1.0)
                    continue
                if source is None:
                    try:
                        source = open_source(cfg, skip=self.store.has_original)
                    except SourceError as e:
                        delay = backoff.next()
                        log.warning("%s; trying again in %.0f s", e, delay)
                        self.notifier.status(f"camera unavailable: {e}")
                        self._sleep(delay)
                        continue
                    log.info("capturing from %s", source.describe())
                    self.notifier.status(f"capturing from {source.describe()}")
                if source.live:
                    wait = next_capture - time.monotonic()
                    if wait > 0:
                        self._sleep(wait)
                        continue
                    next_capture = max(next_capture + interval, time.monotonic())
                try:
                    frame = source.read()
                except SourceError as e:
                    source.close()
                    source = None
                    delay = backoff.next()
                    log.warning("%s; reopening in %.0f s", e, delay)
                    self.notifier.status(f"camera failed: {e}")
                    self._sleep(delay)
                    continue
                if frame is None:
                    if source.finished:
                        log.info("%s has no more frames", source.describe())
                        source.close()
                        source = None
                        finished = True
                    elif not source.live:
                        self._sleep(min(0.5, interval) if interval > 0 else 0.05)
                    continue
                backoff.reset()
                self.handle(frame, gated=source.name != "samples")
                if limit and self.stats.stored >= limit:
                    log.info("stored %d captures (max_captures): stopping", self.stats.stored)
                    break
        finally:
            if source is not None:
                source.close()
            if self.pending is not None:
                log.warning("stopping with one capture from %s that the store could not take",
                            self.pending[0].source)
        return self.stats


# ---------------------------------------------------------------------------------------------- run

def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM/SIGINT ask the loop to stop after the current frame (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: object) -> None:
        log.info("%s received: finishing the current frame", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run(config: Config, web: bool = True, stop: threading.Event | None = None) -> RunStats:
    """`edgecap run`. Raises StartupError for problems the user must fix; returns after a clean stop."""
    started = time.time()
    tune_malloc()
    stop = stop or threading.Event()
    install_signal_handlers(stop)
    notifier = Notifier()
    with open_device(config, reconcile=True) as device:
        log.info("captures are stored in %s", config.data_dir)
        log.info("models: %s, embedder %s, %d thread(s)", device.captioner.model_id,
                 getattr(device.embedder, "model_id", "none"), config.model.num_threads)
        server = None
        events = None
        try:
            registry = Registry()
            try:
                events = start_events(config, device.store, device.embedder, registry)
            except EventsError as e:
                raise StartupError(str(e)) from e
            if web and config.web.enabled:
                from device.web.serve import start_web  # here: Flask stays out of `run --no-web`

                server = start_web(config, device, started, registry, events and events.alerts)
            pipeline = device.pipeline
            pipeline.on_saved = events.hub.submit if events else None
            daemon = Daemon(config, pipeline, stop, notifier, keep_alive=lambda: server is not None)
            registry.register(daemon.samples)
            stats = daemon.run()
            log.info("stopped: %d stored, %d unchanged skipped, %d errors, %d deleted by retention",
                     stats.stored, stats.skipped_same, stats.errors, stats.deleted)
            return stats
        finally:
            notifier.stopping()
            if events is not None:
                events.stop()  # before the store closes: the last captures are still published
            if server is not None:
                server.stop()
