"""The capture store: real SQLite files and real JPEGs in a temporary data folder."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from device import store as store_mod
from device.schema import MIGRATIONS
from device.search.index import in_time_of_day, minute_of_day
from device.store import Store, StoreError, StoreFullError
from device.store_index import filter_sql
from device.vectors import decode_embedding, encode_for_store, encode_image_vector

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def _image(w: int = 64, h: int = 48, color: str = "red") -> Image.Image:
    return Image.new("RGB", (w, h), color)


def _add(store: Store, caption: str, t: float, source: str = "cam", **kw) -> int:
    return store.add(_image(), time=t, source=source, caption=caption, **kw)


def _files(data_dir: Path) -> set[str]:
    return {
        p.relative_to(data_dir).as_posix()
        for sub in ("images", "thumbs")
        for p in (data_dir / sub).rglob("*")
        if p.is_file()
    }


def _integrity(data_dir: Path) -> str:
    with sqlite3.connect(data_dir / "edgecap.db") as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "data")
    yield s
    s.close()


def test_add_then_get_returns_everything_that_was_stored(store: Store) -> None:
    attention = np.random.default_rng(0).random((4, 7, 7)).astype(np.float32)
    emb = np.ones(384, np.float32) / np.sqrt(384)
    cid = store.add(
        _image(1000, 500), time=T0 + 0.25, source="usb", original_path="/photos/a.jpg",
        caption="a dog on the grass", score=-1.5, model_id="captioner-int8",
        beams=[{"text": "a dog on the grass", "score": -1.5}, {"text": "a puppy on a lawn", "score": -2.0}],
        attention=attention, **encode_for_store(emb, np.random.default_rng(1).random(1280)),
    )
    c = store.get(cid)
    assert c is not None
    assert (c["caption"], c["source"], c["original_path"], c["model_id"]) == (
        "a dog on the grass", "usb", "/photos/a.jpg", "captioner-int8")
    assert c["time"] == T0 + 0.25 and c["time_iso"].startswith("2023-11-1")
    assert c["beams"][1] == {"text": "a puppy on a lawn", "score": -2.0}
    assert c["attention"].dtype == np.float32 and c["attention"].shape == (4, 7, 7)
    np.testing.assert_allclose(c["attention"], attention, atol=1e-3)  # stored as float16
    assert (c["width"], c["height"]) == (1000, 500)
    image = store.file_path(cid, "image")
    thumb = store.file_path(cid, "thumb")
    assert image is not None and thumb is not None
    with Image.open(image) as im:
        assert im.format == "JPEG" and im.size == (1000, 500)
    with Image.open(thumb) as im:
        assert max(im.size) == 320
    assert image.name == thumb.name and image.name.startswith("20231114T221320250Z-")
    blob = store.connection().execute("SELECT vector FROM embeddings WHERE capture_id = ?", (cid,)).fetchone()[0]
    assert len(blob) == 384
    np.testing.assert_allclose(decode_embedding(blob), emb, atol=1 / 127)
    assert store.get(cid + 1) is None
    # The alternative beam is indexed for keyword search (column alt_text).
    hits = store.connection().execute("SELECT rowid FROM captures_fts WHERE captures_fts MATCH 'puppy'").fetchall()
    assert [h[0] for h in hits] == [cid]


def test_recent_is_newest_first_with_paging_and_filters(store: Store) -> None:
    ids = {}
    for i, (src, t) in enumerate([("cam", T0 + 30), ("folder", T0 + 10), ("cam", T0 + 20), ("folder", T0 + 40)]):
        ids[t] = _add(store, f"caption {i}", t, source=src)
    assert [c["time"] for c in store.recent(10)] == [T0 + 40, T0 + 30, T0 + 20, T0 + 10]
    assert [c["time"] for c in store.recent(2, offset=1)] == [T0 + 30, T0 + 20]
    assert [c["time"] for c in store.recent(10, source="cam")] == [T0 + 30, T0 + 20]
    assert [c["time"] for c in store.recent(10, since=T0 + 20, until=T0 + 40)] == [T0 + 30, T0 + 20]
    assert store.recent(10, source="nope") == []
    assert store.count() == 4
    assert store.sources() == ["cam", "folder"]
    assert "attention" not in store.recent(1)[0]


def test_has_original_and_file_path_stay_inside_the_store(store: Store) -> None:
    cid = _add(store, "a cat", T0, original_path="/photos/cat.jpg")
    assert store.has_original("/photos/cat.jpg") and not store.has_original("/photos/dog.jpg")
    assert store.file_path(cid, "image").is_relative_to(store.images_dir.resolve())
    assert store.file_path(cid, "bogus") is None
    assert store.file_path(999, "image") is None
    # A row edited to point outside the data folder (sqlite3 CLI, bad restore) is never served.
    outside = store.data_dir.parent / "secret.txt"
    outside.write_text("x")
    store.connection().execute("UPDATE captures SET image = '../secret.txt' WHERE id = ?", (cid,))
    assert store.file_path(cid, "image") is None


def test_stats_counts_bytes_and_time_range(store: Store) -> None:
    assert store.stats()["count"] == 0 and store.stats()["oldest"] is None
    _add(store, "one", T0)
    _add(store, "two", T0 + 100)
    st = store.stats()
    assert st["count"] == 2 and (st["oldest"], st["newest"]) == (T0, T0 + 100)
    on_disk = sum((store.data_dir / f).stat().st_size for f in _files(store.data_dir))
    assert st["image_bytes"] == on_disk
    assert st["db_bytes"] > 0 and st["disk_free"] > 0


def test_delete_removes_rows_files_and_index_entries(store: Store) -> None:
    keep = _add(store, "a red car", T0, **encode_for_store(np.ones(384)))
    gone = _add(store, "a blue car", T0 + 1, **encode_for_store(np.ones(384), np.ones(1280)))
    gone_files = {store.file_path(gone, "image"), store.file_path(gone, "thumb")}
    assert store.delete([gone, 12345]) == 1
    assert store.get(gone) is None and store.get(keep) is not None
    assert all(not p.exists() for p in gone_files)
    conn = store.connection()
    assert conn.execute("SELECT count(*) FROM captures_fts WHERE captures_fts MATCH 'blue'").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM image_vectors").fetchone()[0] == 0
    assert store.count() == 1 and store.stats()["image_bytes"] == sum(
        (store.data_dir / f).stat().st_size for f in _files(store.data_dir))


def test_reconcile_repairs_what_a_crash_can_leave(store: Store) -> None:
    ok = _add(store, "kept", T0)
    lost = _add(store, "image file lost", T0 + 1)
    no_thumb = _add(store, "thumbnail lost", T0 + 2)
    store.file_path(lost, "image").unlink()
    store.file_path(no_thumb, "thumb").unlink()
    day = store.file_path(ok, "image").parent
    orphan = day / "20231114T221330000Z-deadbeef00.jpg"  # a file whose row never committed
    orphan.write_bytes(store.file_path(ok, "image").read_bytes())
    temp = day / ".tmp-20231114T221331000Z-0123456789.jpg"
    temp.write_bytes(b"half a jpeg")
    other_day = store.images_dir / "2020-01-01"
    other_day.mkdir()
    (other_day / "20200101T000000000Z-aaaaaaaaaa.jpg").write_bytes(b"x")

    # Files younger than the grace period may belong to another process's add in flight.
    result = store.reconcile()
    assert result == {"rows_deleted": 1, "files_deleted": 0, "temp_deleted": 0, "thumbs_rebuilt": 1,
                      "files_kept": 0, "rows_kept": 0}
    assert orphan.exists() and temp.exists()

    result = store.reconcile(grace_seconds=0)
    assert result == {"rows_deleted": 0, "files_deleted": 2, "temp_deleted": 1, "thumbs_rebuilt": 0,
                      "files_kept": 0, "rows_kept": 0}
    assert store.get(lost) is None
    assert store.file_path(no_thumb, "thumb") is not None
    assert not orphan.exists() and not temp.exists() and not other_day.exists()
    rows = store.connection().execute("SELECT image, thumb FROM captures").fetchall()
    assert _files(store.data_dir) == {r[i] for r in rows for i in (0, 1)}
    assert not any(store.reconcile(grace_seconds=0).values())
    assert store.stats()["image_bytes"] == sum((store.data_dir / f).stat().st_size for f in _files(store.data_dir))


def test_reconcile_deletes_rows_whose_day_folder_is_gone(store: Store) -> None:
    cid = _add(store, "old", T0 - 5 * 86400)
    keep = _add(store, "new", T0)
    for kind in ("image", "thumb"):
        p = store.file_path(cid, kind)
        p.unlink()
        p.parent.rmdir()
    assert store.reconcile(grace_seconds=0)["rows_deleted"] == 1
    assert store.get(cid) is None and store.get(keep) is not None


def test_full_disk_while_writing_a_file_leaves_nothing_behind(store: Store, monkeypatch) -> None:
    _add(store, "before", T0)
    before = _files(store.data_dir)
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync_full(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the thumbnail, after the image was already renamed into place
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(store_mod.os, "fsync", fsync_full)
    with pytest.raises(StoreFullError, match=r"full.*\[store\] max_size_mb"):
        _add(store, "during", T0 + 1)
    monkeypatch.undo()
    assert _files(store.data_dir) == before
    assert not list(store.data_dir.rglob(".tmp-*"))
    assert store.count() == 1 and _integrity(store.data_dir) == "ok"
    _add(store, "after", T0 + 2)
    assert store.count() == 2


def test_full_disk_on_rename_and_full_database_raise_store_full(store: Store, monkeypatch) -> None:
    def replace_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod.os, "replace", replace_full)
    with pytest.raises(StoreFullError):
        _add(store, "rename fails", T0)
    monkeypatch.undo()
    assert _files(store.data_dir) == set() and not list(store.data_dir.rglob(".tmp-*"))

    # A database that cannot grow: SQLite reports SQLITE_FULL, exactly as on a full disk.
    conn = store.connection()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    big = "word " * 20000
    with pytest.raises(StoreFullError):
        _add(store, big, T0 + 1)
    assert _files(store.data_dir) == set()
    assert store.count() == 0 and _integrity(store.data_dir) == "ok"


class FakeDisk:
    """A disk of fixed capacity on which only this store's bytes are used."""

    def __init__(self, store_dir: Path, total: int) -> None:
        self.store_dir, self.total = store_dir, total

    def __call__(self, path: Path) -> store_mod.DiskUsage:
        used = sum(p.stat().st_size for p in self.store_dir.rglob("*") if p.is_file())
        return store_mod.DiskUsage(self.total, used, self.total - used)


def _noise(seed: int) -> Image.Image:
    # Incompressible pixels: each capture's files (~0.5 MB) dwarf the database pages a delete writes.
    arr = np.random.default_rng(seed).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    return Image.fromarray(arr)


def test_retention_deletes_oldest_until_under_max_bytes(tmp_path: Path) -> None:
    store = Store(tmp_path / "d")
    times = [T0 + i for i in (5, 1, 9, 3, 7, 2, 8, 4, 6, 0)]  # inserted out of time order
    for i, t in enumerate(times):
        store.add(_noise(i), time=t, source="cam", caption=f"capture {i}")
    size = store.stats()["store_bytes"]
    per = size / 10
    deleted = store.enforce_retention(int(size - 3.5 * per), 0)
    assert deleted >= 4
    left = sorted(c["time"] for c in store.recent(100))
    assert left == [T0 + i for i in range(deleted, 10)]  # the oldest went first
    assert store.stats()["store_bytes"] <= size - 3.5 * per
    assert store.enforce_retention(int(size - 3.5 * per), 0) == 0  # already within limits
    assert store.reconcile(grace_seconds=0)["files_deleted"] == 0
    store.close()


def test_retention_keeps_minimum_free_disk_space(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    disk = FakeDisk(data, total=10**9)
    store = Store(data, disk_usage=disk)
    for i in range(8):
        store.add(_noise(i), time=T0 + i, source="cam", caption=f"capture {i}")
    used_files = store.stats()["files_bytes"]
    disk.total = disk(data).used + used_files // 2  # free space is now about half the images
    want_free = used_files
    deleted = store.enforce_retention(None, want_free)
    assert 0 < deleted < 8
    assert disk(data).free >= want_free
    assert min(c["time"] for c in store.recent(100)) == T0 + deleted
    store.close()


def test_reader_thread_while_writer_adds(store: Store) -> None:
    errors: list[BaseException] = []
    done = threading.Event()
    seen: list[list[int]] = [[], []]  # counts each reader saw, in its own order

    def reader(counts: list[int]) -> None:
        try:
            while not done.is_set():
                rows = store.recent(5)
                counts.append(store.count())
                for r in rows:
                    assert store.get(r["id"]) is not None
                    assert store.file_path(r["id"], "thumb") is not None  # files exist before the row
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(counts,)) for counts in seen]
    for th in threads:
        th.start()
    for i in range(40):
        _add(store, f"frame {i}", T0 + i)
    done.set()
    for th in threads:
        th.join()
    assert errors == []
    assert store.count() == 40
    assert all(counts and counts == sorted(counts) for counts in seen)  # never sees a row vanish
    assert _integrity(store.data_dir) == "ok"


def test_schema_is_versioned_and_reopening_keeps_data(tmp_path: Path) -> None:
    s = Store(tmp_path / "d")
    cid = _add(s, "persisted", T0)
    s.close()
    with sqlite3.connect(tmp_path / "d" / "edgecap.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # Plain tables: the sqlite3 CLI and Datasette read them; beams are JSON text.
        assert conn.execute("SELECT json_extract(beams, '$') FROM captures").fetchone()[0] == "[]"
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="newer edgecap"):
        Store(tmp_path / "d")
    with sqlite3.connect(tmp_path / "d" / "edgecap.db") as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
    s = Store(tmp_path / "d")
    assert s.get(cid)["caption"] == "persisted"
    s.close()


def test_bad_time_is_refused_before_anything_is_written(store: Store) -> None:
    for bad in (float("nan"), float("inf"), 1e20):
        with pytest.raises(ValueError):
            _add(store, "x", bad)
    assert _files(store.data_dir) == set() and store.count() == 0


def test_image_vectors_fit_one_kilobyte_and_keep_cosines() -> None:
    rng = np.random.default_rng(0)
    feats = rng.random((20, 1280)).astype(np.float32) ** 3  # non-negative, skewed like ReLU features
    blobs = [encode_image_vector(f) for f in feats]
    assert all(len(b) <= 1024 for b in blobs)
    assert encode_image_vector(feats[0]) == blobs[0]  # deterministic
    enc = np.stack([decode_embedding(b) for b in blobs])
    enc /= np.linalg.norm(enc, axis=1, keepdims=True)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    orig = unit @ unit.T
    proj = enc @ enc.T
    assert np.abs(orig - proj).max() < 0.12


def test_time_of_day_in_sql_and_in_the_vector_cache_agree_across_dst(monkeypatch) -> None:
    # Search filters the vector cache with minute_of_day() and SQLite with strftime('localtime'); a
    # capture must pass or fail both the same way, also on the nights the clocks change.
    import time

    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE captures (id INTEGER PRIMARY KEY, time REAL)")
        # every 7 minutes around the spring and autumn changes of 2024, and a plain day
        times = [t0 + 420 * i for t0 in (1711846800.0 - 86400, 1729990800.0 - 86400, 1717200000.0)
                 for i in range(2 * 86400 // 420)]
        conn.executemany("INSERT INTO captures (time) VALUES (?)", [(t,) for t in times])
        minutes = minute_of_day(np.asarray(times))
        for window in ((60, 240), (150, 210), (22 * 60, 3 * 60), (0, 1440)):
            where, args = filter_sql(None, None, None, time_of_day=window)
            in_sql = {r[0] for r in conn.execute(f"SELECT time FROM captures {where}", args)}
            in_cache = {t for t, ok in zip(times, in_time_of_day(minutes, window)) if ok}
            assert in_sql == in_cache and in_sql, window
    finally:
        monkeypatch.undo()
        time.tzset()
