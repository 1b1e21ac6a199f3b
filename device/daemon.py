"""The capture loop behind `edgecap run`: source -> gate -> caption -> embed -> store, plus retention,
signals, systemd notifications and the web page in a thread.

It never exits because of the camera or a full disk: a failing camera is reopened with back-off and a
full store makes room by deleting the oldest captures. SIGTERM/SIGINT finish the current frame, and the
store has committed it before the process exits 0.
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from device.config import Config
from device.events import EventsError, start_events
from device.metrics import Histogram, Registry, Sample, counter
from device.sources import Frame, Source, SourceError, detect_source, open_source

log = logging.getLogger(__name__)

MB = 1024 * 1024
RETENTION_EVERY_S = 60.0
BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 60.0


class StartupError(RuntimeError):
    """Start-up cannot go on (models missing, data folder not writable...); the message says what to do."""


# ---------------------------------------------------------------------------------------------- systemd

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


# ---------------------------------------------------------------------------------------------- gating

def signature(image: Image.Image) -> np.ndarray:
    """A 64x64 grey thumbnail in 0..1: cheap to compute, blind to sensor noise and JPEG detail."""
    small = image.convert("L").resize((64, 64), Image.BILINEAR)
    return np.asarray(small, dtype=np.float32) / 255.0


class ChangeGate:
    """Skips frames that barely differ from the last *stored* one, so a still scene doesn't fill the disk."""

    def __init__(self, min_change: float) -> None:
        self.min_change = min_change
        self._last: np.ndarray | None = None

    def check(self, image: Image.Image) -> tuple[bool, float, np.ndarray]:
        """(store it?, mean absolute difference to the last stored frame, its signature)."""
        sig = signature(image)
        if self._last is None:
            return True, 1.0, sig
        diff = float(np.abs(sig - self._last).mean())
        return diff >= self.min_change, diff, sig

    def remember(self, sig: np.ndarray) -> None:
        self._last = sig


class Backoff:
    """1 s, 2 s, 4 s ... 60 s between attempts; reset after a success."""

    def __init__(self, first: float = BACKOFF_MIN_S, cap: float = BACKOFF_MAX_S) -> None:
        self.first, self.cap = first, cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first


# ---------------------------------------------------------------------------------------------- models

def load_captioner(models_dir: Path, name: str, num_threads: int) -> Any:
    """The captioner model set `name` (a folder in models_dir, or a path). Raises StartupError."""
    from device.modelset import ModelSetError, available_sets, find_set, set_path

    path = find_set(models_dir, name)
    if path is None:
        sets = available_sets(models_dir, kind="captioner")
        hint = f"available: {', '.join(sets)}" if sets else f"no captioner sets in {models_dir}"
        raise StartupError(
            f"captioner model set {name!r} not found at {set_path(models_dir, name)} ({hint}); set [model] "
            "captioner, or models_dir / EDGECAP_MODELS_DIR"
        )
    from device.captioner import Captioner
    from device.tagger import load_tagger

    try:
        tagger = load_tagger(models_dir)
    except ModelSetError as e:  # optional, like the image projection: capture on without tags
        log.warning("object tags are off: %s (reinstall models/imagenet-tags)", e)
        tagger = None
    try:
        return Captioner.load(path, num_threads=num_threads, tagger=tagger)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise StartupError(f"cannot load captioner {path}: {e}") from e


def load_text_embedder(config: Config) -> Any | None:
    """The embedder for captions, or None: search is then keyword-only. A broken set is logged as an
    error (as `edgecap doctor` warns about it) but does not stop capturing."""
    name = config.model.embedder
    if name == "none":
        return None
    from device.embedder import load_embedder

    try:
        return load_embedder(config.models_dir, name, num_threads=config.model.num_threads)
    except (OSError, ValueError, RuntimeError) as e:
        log.error("cannot load embedder %r (%s): search is keyword-only and new captures get no caption "
                  "embedding until it is fixed (reinstall the model set; `edgecap doctor` checks it)", name, e)
        return None


def embedding_text(cap: Any) -> str:
    """What the text embedder sees of a caption: its text, then its object tags."""
    words = [t.word for t in getattr(cap, "tags", [])]
    return f"{cap.text}. {', '.join(words)}" if words else cap.text


@dataclass
class Pipeline:
    """Caption, embed and store one image: the one path shared by the daemon, `ingest` and tests."""

    store: Any
    captioner: Any
    embedder: Any | None
    beam_width: int = 3
    # Called with each new capture's id once it is committed (EventHub.submit: must not block).
    on_saved: Callable[[int], None] | None = None
    caption_seconds: Histogram = field(default_factory=Histogram)

    def caption(self, image: Image.Image) -> Any:
        t0 = time.perf_counter()
        cap = self.captioner.caption(image, beam_width=self.beam_width)
        self.caption_seconds.observe(time.perf_counter() - t0)
        return cap

    def embed(self, caps: list[Any]) -> list[np.ndarray | None]:
        """Each caption's embedding, its tag words included: a query for "cat" comes near a capture
        tagged cat even when the caption missed it."""
        if self.embedder is None or not caps:
            return [None] * len(caps)
        return list(self.embedder.embed([embedding_text(c) for c in caps]))

    def save(self, image: Image.Image, cap: Any, embedding: np.ndarray | None, *, source: str,
             original_path: str | None, time: float) -> int:
        from device.vectors import encode_for_store

        cid = self.store.add(
            image, time=time, source=source, original_path=original_path, caption=cap.text,
            score=cap.score, model_id=self.captioner.model_id, beams=cap.beams, attention=cap.attention,
            tags=[t.to_dict() for t in getattr(cap, "tags", [])],
            **encode_for_store(embedding, getattr(cap, "image_vector", None),
                               getattr(self.store, "image_projection", None)),
        )
        if self.on_saved is not None:
            self.on_saved(cid)
        return cid

    def process(self, frame: Frame) -> tuple[int, Any]:
        cap = self.caption(frame.image)
        (vec,) = self.embed([cap])
        cid = self.save(frame.image, cap, vec, source=frame.source, original_path=frame.original_path,
                        time=frame.time)
        return cid, cap


def open_store(data_dir: Path, models_dir: Path | None = None) -> Any:
    """The store; with `models_dir`, image vectors go through models/image-projection when present
    (text -> image search). Every command opening the data folder passes it, so they all agree."""
    from device.image_projection import load_image_projection
    from device.modelset import ModelSetError
    from device.store import Store, StoreError

    try:
        projection = load_image_projection(models_dir)
    except (ModelSetError, OSError, ValueError) as e:
        # Captures go on (their image vectors then only serve "more like this"), as doctor warns.
        log.error("cannot load the image projection (%s): typed searches will not find new captures by "
                  "their image until it is fixed (reinstall the model set; `edgecap doctor` checks it)", e)
        projection = None
    try:
        return Store(data_dir, image_projection=projection)
    except StoreError as e:
        raise StartupError(f"{e} (set data_dir / --data-dir / EDGECAP_DATA_DIR)") from e
    except (OSError, sqlite3.Error) as e:
        raise StartupError(f"cannot open the store in {data_dir}: {e} (set data_dir / --data-dir)") from e


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


def start_web(config: Config, store: Any, captioner: Any, embedder: Any, started: float,
              metrics: Registry | None = None, alerts: Any = None) -> Any:
    """Serve the page in a thread; returns the server (call .stop()). Raises StartupError."""
    from device.web import WebConfigError, create_app, effective_host, exposure_warning, make_server

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
        app = create_app(config, store, captioner, embedder, started=started, metrics=metrics, alerts=alerts)
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


def tune_malloc() -> bool:
    """Keep a long-running process small under glibc: a fixed mmap threshold and two malloc arenas.

    glibc raises its mmap threshold after the first large free (JPEG buffers, TFLite arenas), after which
    big blocks come from the heap and are never returned; and each thread may get its own arena. On a
    Pi with 512 MB that costs ~10 MB of RSS for nothing (measured: 134 -> 125 MB steady state, no web).
    Same as MALLOC_MMAP_THRESHOLD_=131072 MALLOC_ARENA_MAX=2; a no-op on other C libraries.
    """
    import ctypes
    import ctypes.util

    if not (platform_libc := ctypes.util.find_library("c")) or "musl" in platform_libc:
        return False
    try:
        libc = ctypes.CDLL(platform_libc)
        m_mmap_threshold, m_arena_max = -3, -8  # from glibc's malloc.h
        return bool(libc.mallopt(m_mmap_threshold, 128 * 1024)) and bool(libc.mallopt(m_arena_max, 2))
    except (OSError, AttributeError):
        return False


def run(config: Config, web: bool = True, stop: threading.Event | None = None) -> RunStats:
    """`edgecap run`. Raises StartupError for problems the user must fix; returns after a clean stop."""
    started = time.time()
    tune_malloc()
    stop = stop or threading.Event()
    install_signal_handlers(stop)
    notifier = Notifier()
    store = open_store(config.data_dir, config.models_dir)
    log.info("captures are stored in %s", config.data_dir)
    server = None
    events = None
    try:
        store.reconcile()
        captioner = load_captioner(config.models_dir, config.model.captioner, config.model.num_threads)
        embedder = load_text_embedder(config)
        log.info("models: %s, embedder %s, %d thread(s)", captioner.model_id,
                 getattr(embedder, "model_id", "none"), config.model.num_threads)
        registry = Registry()
        try:
            events = start_events(config, store, embedder, registry)
        except EventsError as e:
            raise StartupError(str(e)) from e
        if web and config.web.enabled:
            server = start_web(config, store, captioner, embedder, started, registry,
                               events and events.alerts)
        pipeline = Pipeline(store, captioner, embedder, config.model.beam_width,
                            on_saved=events.hub.submit if events else None)
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
        close = getattr(store, "close", None)
        if close is not None:
            close()
