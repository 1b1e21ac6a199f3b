"""The capture loop: systemd notifications, gating, back-off, and whole runs with real models and stores."""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from device import daemon as daemon_mod
from device import gate as gate_mod
from device.config import load_config
from device.daemon import Daemon
from device.gate import Backoff, ChangeGate
from device.notify import Notifier, sd_notify
from device.pipeline import Pipeline
from device.sources.samples import SAMPLES_DIR, sample_paths

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
STANDIN = Path(__file__).resolve().parent / "picamera2_standin"
needs_models = pytest.mark.skipif(
    not (MODELS / "captioner-int8" / "manifest.json").is_file(), reason="models/captioner-int8 not built yet"
)


# ---------------------------------------------------------------------------------------------- sd_notify

def listen(abstract: bool, tmp_path: Path) -> tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"edgecap-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        addr = "@" + name
    else:
        addr = str(tmp_path / "notify.sock")
        sock.bind(addr)
    sock.settimeout(5)
    return sock, addr


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_sends_datagrams(tmp_path: Path, abstract: bool) -> None:
    sock, addr = listen(abstract, tmp_path)
    with sock:
        assert sd_notify("READY=1\nSTATUS=hello", {"NOTIFY_SOCKET": addr})
        assert sock.recv(4096) == b"READY=1\nSTATUS=hello"
    assert not sd_notify("READY=1", {})
    assert not sd_notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})


def test_watchdog_is_rate_limited_and_respects_pid(tmp_path: Path) -> None:
    sock, addr = listen(False, tmp_path)
    with sock:
        n = Notifier({"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
        assert n.watchdog_interval == 2.0
        n.watchdog()
        n.watchdog()  # within the interval: not sent again
        n.stopping()
        assert sock.recv(100) == b"WATCHDOG=1"
        assert sock.recv(100) == b"STOPPING=1"
    other = Notifier({"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None  # the watchdog is meant for another process


# ---------------------------------------------------------------------------------------------- gate

def test_change_gate_skips_still_scenes() -> None:
    rng = np.random.default_rng(0)
    base = np.asarray(Image.open(ROOT / "device" / "samples" / "cat_chelsea.jpg").convert("RGB"))
    gate = ChangeGate(0.02)
    keep, _, sig = gate.check(Image.fromarray(base))
    assert keep  # nothing stored yet
    gate.remember(sig)
    noisy = np.clip(base.astype(int) + rng.integers(-4, 5, base.shape), 0, 255).astype(np.uint8)
    keep, diff, _ = gate.check(Image.fromarray(noisy))
    assert not keep and diff < 0.02  # sensor noise is not a new scene
    moved = base.copy()
    moved[:, :200] = 255 - moved[:, :200]  # a large part of the scene changed
    keep, diff, _ = gate.check(Image.fromarray(moved))
    assert keep and diff > 0.05
    assert ChangeGate(0.0).check(Image.fromarray(base))[0]


def test_backoff_doubles_to_a_cap_and_resets() -> None:
    b = Backoff(1, 8)
    assert [b.next() for _ in range(5)] == [1, 2, 4, 8, 8]
    b.reset()
    assert b.next() == 1


# ---------------------------------------------------------------------------------------------- runs

@pytest.fixture(scope="module")
def models():
    from device.pipeline import load_captioner, load_text_embedder

    cfg = load_config(env={}, overrides={"models_dir": str(MODELS), "model": {"num_threads": 1}})
    return load_captioner(cfg.models_dir, cfg.model.captioner, 1), load_text_embedder(cfg)


def make_daemon(tmp_path: Path, models, **sections) -> tuple[Daemon, threading.Event]:
    from device.store import Store

    overrides = {"data_dir": str(tmp_path / "data"), "models_dir": str(MODELS), **sections}
    cfg = load_config(env={}, overrides=overrides)
    store = Store(cfg.data_dir)
    stop = threading.Event()
    pipe = Pipeline(store, models[0], models[1], beam_width=2)
    return Daemon(cfg, pipe, stop), stop


def rows(data_dir: Path) -> list[tuple]:
    with sqlite3.connect(data_dir / "edgecap.db") as c:
        return c.execute("SELECT id, source, original_path, caption FROM captures ORDER BY id").fetchall()


@needs_models
def test_samples_run_once_then_stop(tmp_path: Path, models) -> None:
    d, _ = make_daemon(tmp_path, models, camera={"source": "samples"})
    stats = d.run()
    assert stats.stored == 9 and stats.errors == 0
    got = rows(tmp_path / "data")
    assert len(got) == 9 and all(r[1] == "samples" and r[3] for r in got)
    # a restart does not store the samples again
    d2, _ = make_daemon(tmp_path, models, camera={"source": "samples"})
    assert d2.run().stored == 0 and len(rows(tmp_path / "data")) == 9


@needs_models
def test_folder_run_skips_bad_files_and_max_captures(tmp_path: Path, models, caplog) -> None:
    incoming = tmp_path / "in"
    incoming.mkdir()
    samples = sorted((ROOT / "device" / "samples").glob("*.jpg"))
    (incoming / "00_empty.jpg").write_bytes(b"")
    (incoming / "01_text.jpg").write_text("hello")
    (incoming / "02_trunc.jpg").write_bytes(samples[0].read_bytes()[:500])
    for i, s in enumerate(samples[:3]):
        (incoming / f"1{i}_{s.name}").write_bytes(s.read_bytes())
    old = time.time() - 30
    for p in incoming.iterdir():
        os.utime(p, (old, old))
    d, _stop = make_daemon(tmp_path, models, camera={"source": "folder", "folder": str(incoming)},
                          capture={"max_captures": 3, "min_change": 0.0})
    t = threading.Thread(target=d.run)
    t.start()
    t.join(60)
    assert not t.is_alive()
    got = rows(tmp_path / "data")
    assert [Path(r[2]).name for r in got] == [f"1{i}_{s.name}" for i, s in enumerate(samples[:3])]
    for bad in ("00_empty.jpg", "01_text.jpg", "02_trunc.jpg"):
        assert bad in caplog.text


@needs_models
def test_gating_and_retention_in_the_loop(tmp_path: Path, models, monkeypatch, picamera2) -> None:
    # the stand-in camera gives a solid red scene whose brightness changes every capture
    monkeypatch.setattr(daemon_mod, "RETENTION_EVERY_S", 0.0)
    d, _ = make_daemon(tmp_path, models, camera={"source": "picamera2", "width": 160, "height": 120},
                       capture={"interval": 0.0, "min_change": 0.9, "max_captures": 2})
    # min_change 0.9: only the first frame differs enough from "nothing stored"; stop after 12 reads
    reads = {"n": 0}
    real = d.handle

    def counting(frame, gated):
        reads["n"] += 1
        if reads["n"] >= 12:
            d.stop.set()
        real(frame, gated)

    d.handle = counting
    stats = d.run()
    assert stats.stored == 1 and stats.skipped_same == 11

    d, _ = make_daemon(tmp_path / "b", models, camera={"source": "picamera2", "width": 160, "height": 120},
                       capture={"interval": 0.0, "min_change": 0.0, "max_captures": 25},
                       store={"max_size_mb": 0.05, "min_free_mb": 0})
    stats = d.run()
    assert stats.stored == 25 and stats.deleted > 0
    left = rows(tmp_path / "b" / "data")
    assert 0 < len(left) < 25 and left[-1][0] == 25  # the oldest went, the newest stayed


@needs_models
def test_store_full_makes_room_and_goes_on(tmp_path: Path, models, monkeypatch) -> None:
    from device.store import StoreFullError

    d, _ = make_daemon(tmp_path, models, camera={"source": "samples"}, capture={"max_captures": 4})
    real_add = d.store.add
    calls = {"n": 0, "retention": 0}

    def add(*a, **k):
        calls["n"] += 1
        if calls["n"] in (2, 3, 4):  # the disk is full for three attempts in a row
            raise StoreFullError("the disk is full")
        return real_add(*a, **k)

    real_ret = d.store.enforce_retention

    def retention(*a, **k):
        calls["retention"] += 1
        return real_ret(*a, **k)

    monkeypatch.setattr(d.store, "add", add)
    monkeypatch.setattr(d.store, "enforce_retention", retention)
    monkeypatch.setattr(gate_mod, "BACKOFF_MIN_S", 0.01)
    d._store_backoff = Backoff(0.01, 0.02)
    stats = d.run()
    # frame 2: attempt 2 failed, forced retention, attempt 3 failed -> kept for later (one error);
    # tried again: attempt 4 failed, retention, attempt 5 stored it. No frame is lost.
    assert stats.errors == 1 and calls["retention"] >= 3
    stored = [Path(r[2]).name for r in rows(tmp_path / "data")]
    assert stored == [p.name for p in sample_paths(SAMPLES_DIR)[:4]]


# ---------------------------------------------------------------------------------------------- process

def run_edgecap(tmp_path: Path, *args: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{STANDIN}{os.pathsep}{ROOT}", "EDGECAP_MODELS_DIR": str(MODELS),
           **(env_extra or {})}
    env.pop("EDGECAP_CONFIG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "device", "--data-dir", str(tmp_path / "data"), *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@needs_models
def test_sigterm_finishes_frame_and_notifies_systemd(tmp_path: Path) -> None:
    sock, addr = listen(True, tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[camera]\nsource = "picamera2"\nwidth = 160\nheight = 120\n'
                   '[capture]\ninterval = 0.05\nmin_change = 0\n[model]\nnum_threads = 1\nembedder = "none"\n')
    p = run_edgecap(tmp_path, "--config", str(cfg), "run", "--no-web",
                    env_extra={"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "1000000"})
    with sock:
        msgs = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(m.startswith("READY=1") for m in msgs):
            msgs.append(sock.recv(4096).decode())
        assert any(m.startswith("READY=1") for m in msgs), msgs
        # let it store a few frames, then stop it like systemd does
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (tmp_path / "data" / "edgecap.db").exists() and len(rows(tmp_path / "data")) >= 3:
                break
            time.sleep(0.1)
        p.send_signal(signal.SIGTERM)
        _out, err = p.communicate(timeout=30)
        sock.settimeout(1)
        try:
            while True:
                msgs.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
    assert p.returncode == 0, err
    assert "SIGTERM received" in err and "Traceback" not in err
    assert "WATCHDOG=1" in msgs and "STOPPING=1" in msgs
    got = rows(tmp_path / "data")
    assert len(got) >= 3 and all(r[1] == "picamera2" for r in got)
    with sqlite3.connect(tmp_path / "data" / "edgecap.db") as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@needs_models
def test_camera_that_fails_is_retried_not_fatal(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[camera]\nsource = "picamera2"\nwidth = 160\nheight = 120\n'
                   '[capture]\ninterval = 0.05\nmin_change = 0\nmax_captures = 6\n'
                   '[model]\nnum_threads = 1\nembedder = "none"\n')
    # every opened camera gives 2 frames, then "vanishes"
    p = run_edgecap(tmp_path, "--config", str(cfg), "run", "--no-web", env_extra={"PICAMERA2_STANDIN_FAIL_AFTER": "2"})
    _out, err = p.communicate(timeout=90)
    assert p.returncode == 0, err
    assert err.count("capture failed") >= 2 and "reopening in" in err and "Traceback" not in err
    assert len(rows(tmp_path / "data")) == 6


def test_bad_config_stops_startup_with_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[capture]\nintervall = 3\n")
    p = run_edgecap(tmp_path, "--config", str(cfg), "run", "--no-web")
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 2
    assert "[capture] intervall" in err and "did you mean 'interval'" in err and "Traceback" not in err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_models
def test_run_serves_the_page_while_capturing(tmp_path: Path) -> None:
    import base64
    import json
    import urllib.request

    port = free_port()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[camera]\nsource = "samples"\n[web]\nhost = "127.0.0.1"\nport = {port}\n'
                   '[model]\nnum_threads = 1\n')
    p = run_edgecap(tmp_path, "--config", str(cfg), "run", env_extra={"EDGECAP_PASSWORD": "pw-long-enough"})
    auth = "Basic " + base64.b64encode(b"edgecap:pw-long-enough").decode()
    items: list = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(items) < 9:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/api/captures?limit=50",
                                             headers={"Authorization": auth})
                with urllib.request.urlopen(req, timeout=5) as resp:
                    items = json.load(resp)["items"]
            except OSError:
                assert p.poll() is None, p.communicate()[1]
            time.sleep(0.2)
        assert len(items) == 9 and all(it["caption"] for it in items)
        time.sleep(0.5)
        assert p.poll() is None  # the samples are done; it keeps serving the page
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "Traceback" not in err
