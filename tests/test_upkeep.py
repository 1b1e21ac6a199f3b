"""Retention and the start-up reconcile never delete captures for reasons a crash cannot explain:
real SQLite files and real JPEGs in a temporary data folder."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from PIL import Image

from device import store as store_mod
from device.store import Store

T0 = 1_700_000_000.0


def _files(data_dir: Path) -> set[str]:
    return {p.relative_to(data_dir).as_posix() for sub in ("images", "thumbs")
            for p in (data_dir / sub).rglob("*") if p.is_file()}


def _fill(data_dir: Path, n: int, **kw) -> Store:
    store = Store(data_dir, **kw)
    for i in range(n):
        img = Image.new("RGB", (64, 48), (i * 5 % 256, 80, 160))
        store.add(img, time=T0 + i * 3600, source="cam", caption=f"capture number {i}")
    return store


def test_a_database_moved_aside_or_emptied_loses_no_image(tmp_path: Path, caplog) -> None:
    """What `doctor` used to advise for a corrupt database, and a zero-byte edgecap.db."""
    data = tmp_path / "data"
    _fill(data, 40).close()
    before = _files(data)
    assert len(before) == 80
    for how in ("moved aside", "zero bytes"):
        db = data / "edgecap.db"
        if how == "moved aside":
            db.rename(data / "edgecap.db.corrupt")
        else:
            db.write_bytes(b"")
        for suffix in ("-wal", "-shm"):
            (data / f"edgecap.db{suffix}").unlink(missing_ok=True)
        with caplog.at_level(logging.WARNING), Store(data) as store:
            result = store.reconcile(grace_seconds=0)
            assert store.count() == 0
        assert result["files_deleted"] == 0 and result["files_kept"] == 80, how
        assert _files(data) == before, how
        assert "edgecap repair" in caplog.text


def test_a_database_that_lost_most_rows_keeps_the_other_images(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = _fill(data, 20)
    store.close()
    shutil.copy(data / "edgecap.db", tmp_path / "old.db")  # an old backup: 20 rows
    store = Store(data)
    for i in range(20, 120):
        store.add(Image.new("RGB", (64, 48), "blue"), time=T0 + i * 3600, source="cam", caption=f"later {i}")
    store.close()
    before = _files(data)
    for name in ("edgecap.db", "edgecap.db-wal", "edgecap.db-shm"):
        (data / name).unlink(missing_ok=True)
    shutil.copy(tmp_path / "old.db", data / "edgecap.db")
    with Store(data) as store:
        result = store.reconcile(grace_seconds=0)
        assert store.count() == 20
    assert result["files_kept"] == 200 and result["files_deleted"] == 0
    assert _files(data) == before


def test_image_folders_gone_keep_their_rows(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = _fill(data, 40)
    os.rename(data / "images", tmp_path / "images-elsewhere")  # e.g. a disk that did not mount
    result = store.reconcile(grace_seconds=0)
    assert result["rows_kept"] == 40 and result["rows_deleted"] == 0
    assert store.count() == 40
    store.close()


def test_a_crash_is_still_cleaned_up_next_to_many_rows(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = _fill(data, 40)
    first = store.file_path(1, "image")
    for i in range(3):  # three adds whose rows never committed
        (first.parent / f"20231114T2213{i:02d}000Z-0000000000.jpg").write_bytes(first.read_bytes())
    store.file_path(2, "image").unlink()
    result = store.reconcile(grace_seconds=0)
    assert result["files_deleted"] == 3 and result["rows_deleted"] == 1
    assert result["files_kept"] == result["rows_kept"] == 0
    store.close()


class FakeDisk:
    """A disk of `total` bytes holding this store plus `other` bytes of something else."""

    def __init__(self, data: Path, total: int, other: int = 0) -> None:
        self.data, self.total, self.other = data, total, other

    def __call__(self, path: Path) -> store_mod.DiskUsage:
        used = self.other + sum(p.stat().st_size for p in self.data.rglob("*") if p.is_file())
        return store_mod.DiskUsage(self.total, used, self.total - used)


def test_an_unreachable_free_space_floor_does_not_empty_the_store(tmp_path: Path, caplog) -> None:
    data = tmp_path / "data"
    data.mkdir()
    disk = FakeDisk(data, total=10**9)
    store = _fill(data, 10, disk_usage=disk)
    files = store.file_bytes()
    # min_free_mb larger than everything the store could ever free: deleting would not help
    disk.other = disk.total - disk(data).used - 1000
    with caplog.at_level(logging.WARNING):
        assert store.enforce_retention(None, files * 5) == 0
    assert store.count() == 10
    assert "min_free_mb" in caplog.text
    # a floor deleting can reach is still kept: the oldest go
    disk.other = disk.total - (disk(data).used - disk.other) - files // 2
    assert 0 < store.enforce_retention(None, files // 2 + files // 4) < 10
    store.close()
