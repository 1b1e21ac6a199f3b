"""`edgecap repair` and doctor's advice about a damaged database, run as real processes on real SQLite
files, with the committed captioner re-captioning what cannot be copied back."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from device.store import Store
from tests.test_cli import edgecap, needs_models
from tests.webfixtures import CAPTURES, fill_store

N = len(CAPTURES)


def stored(data: Path) -> dict[str, tuple]:
    """image file name -> (id, time, caption, source) for every row."""
    with sqlite3.connect(data / "edgecap.db") as c:
        rows = c.execute("SELECT id, time, caption, source, image FROM captures").fetchall()
    return {Path(r[4]).name: r[:4] for r in rows}


def image_files(data: Path) -> set[str]:
    return {p.name for p in (data / "images").rglob("*.jpg")}


def consistent(data: Path) -> None:
    """Every row has its image and thumbnail, every image its row, every tag its index entry."""
    with sqlite3.connect(data / "edgecap.db") as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = c.execute("SELECT image, thumb FROM captures").fetchall()
        tagged = {(t["word"], cid) for cid, tags in c.execute("SELECT id, tags FROM captures")
                  for t in json.loads(tags)}
        assert tagged == set(c.execute("SELECT word, capture_id FROM capture_tags").fetchall())
    assert all((data / r[0]).is_file() and (data / r[1]).is_file() for r in rows)
    assert {Path(r[0]).name for r in rows} == image_files(data)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    fill_store(d).close()
    return d


def test_doctor_sends_a_damaged_database_to_repair(tmp_path: Path, data: Path) -> None:
    with open(data / "edgecap.db", "r+b") as f:  # garbage over the pages after the schema
        f.seek(4096)
        f.write(b"\xde\xad\xbe\xef" * 2048)
    r = edgecap(tmp_path, "doctor")
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("FAIL") and "store" in ln)
    assert "edgecap.db" in line
    assert "edgecap repair" in r.stdout and "move the file aside" not in r.stdout
    r = edgecap(tmp_path, "search", "fox")  # any command that opens the store says the same
    assert r.returncode == 1 and "edgecap repair" in r.stderr and "Traceback" not in r.stderr


@needs_models
def test_repair_after_the_database_was_moved_aside_copies_every_row_back(tmp_path: Path, data: Path) -> None:
    c = sqlite3.connect(data / "edgecap.db")  # one capture with an object tag, as a device stores it
    with c:
        fox = c.execute("SELECT id FROM captures WHERE caption = 'a red fox stands in the snow'").fetchone()[0]
        c.execute("UPDATE captures SET tags = '[{\"word\": \"fox\", \"p\": 0.9}]' WHERE id = ?", (fox,))
        c.execute("INSERT INTO capture_tags (word, capture_id, p) VALUES ('fox', ?, 0.9)", (fox,))
    c.close()  # the last connection: its WAL is written back into edgecap.db before the file moves
    before = stored(data)
    (data / "edgecap.db").rename(tmp_path / "moved.db")  # what doctor used to advise
    with Store(data) as store:  # the next start: a new database, and the images must survive it
        store.reconcile(grace_seconds=0)
    assert image_files(data) == set(before)
    r = edgecap(tmp_path, "repair", "--from", str(tmp_path / "moved.db"))
    assert r.returncode == 0, r.stderr
    assert f"{N} rows copied back, 0 images captioned again" in r.stdout
    assert stored(data) == before  # same ids, times, captions, sources
    consistent(data)
    r = edgecap(tmp_path, "search", "fox snow", "--json")
    assert '"caption": "a red fox stands in the snow"' in r.stdout
    with Store(data) as store:  # the tag came back with its row, and searches find it
        fox_time = next(t for i, t, _, _ in before.values() if i == fox)
        assert store.tagged(["fox"], 10) == [(fox, 0.9, fox_time)]


@needs_models
@pytest.mark.parametrize("damage", ["zero bytes", "garbage pages"])
def test_repair_rebuilds_rows_for_every_image(tmp_path: Path, data: Path, damage: str) -> None:
    before = stored(data)
    db = data / "edgecap.db"
    if damage == "zero bytes":
        db.write_bytes(b"")
    else:
        with open(db, "r+b") as f:
            f.seek(4096)
            f.write(b"\x00\xff" * 4096)
    r = edgecap(tmp_path, "repair")
    assert r.returncode == 0, r.stderr
    assert list(data.glob("edgecap.db.damaged-*")), "the damaged file is kept"
    after = stored(data)
    assert len(after) == N
    consistent(data)
    # copied rows keep everything; re-captioned ones keep their time (to the millisecond) and get a caption
    times_before = sorted(round(t, 3) for _, t, _, _ in before.values())
    assert sorted(round(t, 3) for _, t, _, _ in after.values()) == times_before
    for _, _, caption, source in after.values():
        assert caption and source in ("samples", "folder", "repaired")
    recaptioned = [v for v in after.values() if v[3] == "repaired"]
    assert f"{len(recaptioned)} images captioned again" in r.stdout
    doctor = edgecap(tmp_path, "doctor").stdout.splitlines()
    assert any(ln.startswith("ok") and f"{N} captures in" in ln for ln in doctor), doctor
    r = edgecap(tmp_path, "repair")  # twice is harmless
    assert r.returncode == 0 and "0 rows copied back, 0 images captioned again" in r.stdout
    assert len(stored(data)) == N


def test_repair_refuses_a_missing_copy(tmp_path: Path, data: Path) -> None:
    r = edgecap(tmp_path, "repair", "--from", str(tmp_path / "nope.db"))
    assert r.returncode == 1 and "no such file" in r.stderr and "Traceback" not in r.stderr
    assert len(stored(data)) == N  # nothing was touched


def test_doctor_sees_images_without_rows(tmp_path: Path, data: Path) -> None:
    """A database swapped for an empty one opens fine; doctor still says the images need repair."""
    for name in ("edgecap.db", "edgecap.db-wal", "edgecap.db-shm"):
        (data / name).unlink(missing_ok=True)
    Store(data).close()
    r = edgecap(tmp_path, "doctor")
    line = next(ln for ln in r.stdout.splitlines() if ln.split()[1:2] == ["store"])
    assert line.startswith("warn") and f"{N} stored images have no row" in line
    assert "edgecap repair" in r.stdout
