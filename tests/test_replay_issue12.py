"""Issue 12, items 1 and 2 replayed end to end: hostile uploads against the real server while retention
watches a nearly full disk, then the database lost the way doctor used to advise. No capture may be
lost. Real waitress over sockets, real SQLite files, the real `edgecap` process for the repair."""
from __future__ import annotations

import socket
import sqlite3
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from webfixtures import CAPTURES, PASSWORD, add_sample, held_bytes, running, web_config

from device import store as store_mod
from device.store import Store
from device.web import create_app, hash_password
from tests.test_cli import edgecap

UPLOAD_LIMIT = 1_000_000  # small, so the test is fast; the issue used 10 MB
SLOW_POSTS = 4
SENT_PER_POST = 700_000  # past waitress's 512 KB spooling threshold
MIN_FREE = 5_000_000


class DataDisk:
    """The disk holding the data folder and the temporary folder: what the store and this process's
    temp files (open or already deleted) take from it, nothing else."""

    def __init__(self, data: Path, spool: Path, total: int = 0) -> None:
        self.data, self.spool, self.total = data, spool, total

    def used(self) -> int:
        return sum(p.stat().st_size for p in self.data.rglob("*") if p.is_file()) + held_bytes(self.spool)

    def __call__(self, path: Path) -> store_mod.DiskUsage:
        used = self.used()
        return store_mod.DiskUsage(self.total, used, self.total - used)


def captures(data: Path) -> dict[int, tuple]:
    with sqlite3.connect(data / "edgecap.db") as c:
        return {r[0]: tuple(r[1:]) for r in c.execute("SELECT id, time, caption, source, image FROM captures")}


def slow_post(port: int, path: str) -> socket.socket:
    """An unauthenticated upload promising UPLOAD_LIMIT bytes and sending SENT_PER_POST of them slowly."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; "
               f"boundary=x\r\nContent-Length: {UPLOAD_LIMIT}\r\n\r\n").encode())
    try:
        for _ in range(SENT_PER_POST // 50_000):
            s.sendall(b"x" * 50_000)
            time.sleep(0.01)
    except OSError:
        pass  # the server stopped listening: that is the point
    return s


def answer(s: socket.socket) -> bytes:
    try:
        return s.recv(200)
    except OSError:
        return b""  # reset: the server closed without reading the body


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts held temp files through /proc")
def test_hostile_uploads_and_a_lost_database_lose_no_capture(tmp_path: Path, monkeypatch) -> None:
    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))  # where waitress would spool request bodies
    data = tmp_path / "data"
    disk = DataDisk(data, spool)
    store = Store(data, disk_usage=disk)
    for i in range(len(CAPTURES)):
        add_sample(store, i)
    original = captures(data)
    disk.total = disk.used() + MIN_FREE + 200_000  # the free-space floor is met, just
    assert store.enforce_retention(None, MIN_FREE) == 0

    # Item 1: slow unauthenticated uploads while retention keeps the floor.
    app = create_app(web_config(data, password_hash=hash_password(PASSWORD), secret_key="k" * 64,
                                max_upload_bytes=UPLOAD_LIMIT), store)
    with running(app) as url:
        port = urlsplit(url).port
        posts = [slow_post(port, path) for path in ("/api/caption", "/api/search/photo", "/upload", "/")
                 for _ in range(SLOW_POSTS // 4)]
        time.sleep(0.5)  # whatever the server accepted has arrived
        assert held_bytes(spool) == 0, "request bodies went to temporary files"
        deleted = store.enforce_retention(None, MIN_FREE)  # what the daemon runs every minute
        replies = [answer(s) for s in posts]
        for s in posts:
            s.close()
    assert deleted == 0
    for reply in replies:
        assert reply == b"" or reply.startswith(b"HTTP/1.1 401"), reply[:40]
    assert captures(data) == original

    # Item 2: the database is lost the way doctor used to advise ("move the file aside").
    store.close()
    for suffix in ("", "-wal", "-shm"):
        if (data / f"edgecap.db{suffix}").exists():
            (data / f"edgecap.db{suffix}").rename(tmp_path / f"edgecap.db.aside{suffix}")
    with Store(data) as fresh:  # the next start: a new, empty database
        result = fresh.reconcile(grace_seconds=0)
    assert result["files_deleted"] == 0 and result["files_kept"] == 2 * len(CAPTURES)
    r = edgecap(tmp_path, "repair", "--from", str(tmp_path / "edgecap.db.aside"))
    assert r.returncode == 0, r.stderr
    assert f"{len(CAPTURES)} rows copied back, 0 images captioned again" in r.stdout, r.stdout + r.stderr
    assert captures(data) == original
    for _, _, _, image in original.values():
        assert (data / image).is_file()
