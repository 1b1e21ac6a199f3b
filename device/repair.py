"""`edgecap repair`: give stored images their rows back after the database was lost or damaged.

1. A damaged edgecap.db (unreadable, failing SQLite's quick check) is moved aside, never deleted:
   `edgecap.db.damaged-<time>`, with its -wal and -shm.
2. Rows are copied back from a recovered copy (`--from FILE`, e.g. a backup or the output of
   `sqlite3 edgecap.db .recover`), else from whatever the damaged file still lets SQLite read: each
   row whose image is here and not yet in the store, with its caption, vectors and id.
3. Every image still without a row is captioned again (source "repaired", time from its file name)
   and stored through the same path as any capture.

Nothing is deleted but the old copy of an image that was stored again. Running it twice is harmless.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from device.files import DB_NAME, THUMBS, not_writable
from device.pipeline import Device
from device.store import Store, index_tags
from device.store_captures import json_list

log = logging.getLogger(__name__)

REPAIRED_SOURCE = "repaired"
CHUNK = 256


class RepairError(Exception):
    """Repair cannot start (the data folder is not writable, the given copy is not a database...)."""


@dataclass
class RepairResult:
    moved_aside: Path | None = None
    rows_copied: int = 0
    recaptioned: int = 0
    unreadable: list[Path] = field(default_factory=list)


def database_problem(db: Path) -> str | None:
    """Why `db` cannot serve as the store's database (None when it can, or does not exist)."""
    if not db.exists():
        return None
    if db.stat().st_size == 0:
        return "the file is empty"
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                return f"SQLite's integrity check says: {check}"
            if not conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE name = 'captures'").fetchone():
                return "it has no captures table"
        finally:
            conn.close()
    except sqlite3.Error as e:
        return str(e)
    return None


def move_aside(db: Path) -> Path:
    """Rename db (and its -wal/-shm) to <name>.damaged-<UTC time>; returns the new path of the db."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = db.with_name(f"{db.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{db}{suffix}")
        if src.exists():
            os.replace(src, Path(f"{target}{suffix}"))
    return target


def copy_rows(source: Path, store: Store) -> int:
    """Copy the rows of `source` whose image is in the store's folder but not yet in its database.

    Reads in chunks of ids and, when a chunk fails (a damaged page), row by row, so one bad page
    loses only the rows on it. Keeps each row's id when it is free. Returns the rows copied.
    """
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=5)
        src.row_factory = sqlite3.Row
        src_cols = [r[1] for r in src.execute("PRAGMA table_info(captures)")]
        top = _highest_id(src, store)
    except sqlite3.Error as e:
        log.warning("repair: no rows can be read from %s (%s)", source, e)
        return 0
    conn = store.connection()
    cols = [c for c in src_cols if c in {r[1] for r in conn.execute("PRAGMA table_info(captures)")}]
    copied = 0
    try:
        for lo in range(0, top + 1, CHUNK):
            rows = _read_rows(src, cols, lo, lo + CHUNK)
            with store._write_lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for row in rows:
                        copied += _copy_row(src, conn, store.data_dir, cols, row)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
    finally:
        src.close()
    return copied


def _highest_id(src: sqlite3.Connection, store: Store) -> int:
    """The largest capture id to try: from the table, else its AUTOINCREMENT counter, else a guess."""
    for sql in ("SELECT max(id) FROM captures", "SELECT seq FROM sqlite_sequence WHERE name = 'captures'"):
        try:
            return int(src.execute(sql).fetchone()[0] or 0)
        except (sqlite3.Error, TypeError):
            continue
    return 2 * sum(1 for _ in store.images_dir.glob("*/*.jpg")) + CHUNK


def _read_rows(src: sqlite3.Connection, cols: list[str], lo: int, hi: int) -> list[sqlite3.Row]:
    sql = f"SELECT {', '.join(cols)} FROM captures WHERE id >= ? AND id < ?"
    try:
        return src.execute(sql, (lo, hi)).fetchall()
    except sqlite3.Error:
        rows = []
        for i in range(lo, hi):
            try:
                rows += src.execute(sql, (i, i + 1)).fetchall()
            except sqlite3.Error:
                log.warning("repair: row %d cannot be read from the damaged database", i)
        return rows


def _copy_row(src: sqlite3.Connection, conn: sqlite3.Connection, data_dir: Path, cols: list[str],
              row: sqlite3.Row) -> int:
    image = row["image"]
    if not isinstance(image, str) or not (data_dir / image).is_file():
        return 0
    if conn.execute("SELECT 1 FROM captures WHERE image = ?", (image,)).fetchone():
        return 0
    values = dict(zip(cols, row))
    if conn.execute("SELECT 1 FROM captures WHERE id = ?", (values["id"],)).fetchone():
        del values["id"]  # taken by a capture stored since: a new id
    names = list(values)
    cur = conn.execute(
        f"INSERT INTO captures ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
        [values[n] for n in names],
    )
    new_id = cur.lastrowid
    index_tags(conn, new_id, json_list(values.get("tags")))  # the tag index follows the row's tags
    for table in ("embeddings", "image_vectors"):
        try:
            vec = src.execute(f"SELECT * FROM {table} WHERE capture_id = ?", (row["id"],)).fetchone()
        except sqlite3.Error:
            continue
        if vec is not None:
            v = dict(zip(vec.keys(), vec))
            v["capture_id"] = new_id
            conn.execute(f"INSERT OR REPLACE INTO {table} ({', '.join(v)}) VALUES ({', '.join('?' * len(v))})",
                         list(v.values()))
    return 1


def time_from_name(path: Path) -> float:
    """The capture time the store wrote into the file name (YYYYmmddTHHMMSSfffZ-...), else its mtime."""
    try:
        stamp = datetime.strptime(path.name[:15], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
        return stamp.timestamp() + int(path.name[15:18]) / 1000
    except ValueError:
        return path.stat().st_mtime


def recaption(store: Store, pipeline: Any, paths: list[Path], result: RepairResult,
              progress: Callable[[int, Path], None] | None = None) -> None:
    """Caption each image again and store it as a capture; then remove its old, row-less copy."""
    from device.preprocess import BadImageError, load_image

    for n, path in enumerate(paths, 1):
        try:
            image = load_image(path)
        except BadImageError as e:
            log.warning("repair: %s", e)
            result.unreadable.append(path)
            continue
        cap = pipeline.caption(image)
        (vec,) = pipeline.embed([cap])
        pipeline.save(image, cap, vec, source=REPAIRED_SOURCE, original_path=None, time=time_from_name(path))
        day = path.parent.name
        path.unlink(missing_ok=True)  # the capture now has its own copy; the row-less one goes
        (store.data_dir / THUMBS / day / path.name).unlink(missing_ok=True)
        result.recaptioned += 1
        if progress:
            progress(n, path)


def repair(data_dir: Path, open_device: Callable[[], Device], from_db: Path | None = None,
           progress: Callable[[str], None] = log.info) -> RepairResult:
    """Repair the store in `data_dir` (see the module's doc). `open_device` opens the store the way every
    command does (device.pipeline.open_device, without models: they load only when there are images to
    caption again). Raises RepairError."""
    data_dir = Path(data_dir)
    db = data_dir / DB_NAME
    result = RepairResult()
    if why := not_writable(data_dir):
        raise RepairError(f"cannot repair: {why} (or run repair as that user: sudo -u edgecap edgecap repair)")
    if from_db is not None and not from_db.is_file():
        raise RepairError(f"{from_db}: no such file")
    problem = database_problem(db)
    if problem is not None:
        result.moved_aside = move_aside(db)
        progress(f"the database was damaged ({problem}); moved it to {result.moved_aside.name}")
    device = open_device()
    store = device.store
    try:
        source = from_db or result.moved_aside
        if source is not None:
            result.rows_copied = copy_rows(source, store)
            progress(f"copied {result.rows_copied} rows from {source.name}")
        from device.upkeep import unreferenced_images

        orphans = unreferenced_images(store)
        if orphans:
            progress(f"captioning {len(orphans)} images that have no row (source \"{REPAIRED_SOURCE}\")")
            pipeline = device.load_models().pipeline
            t0 = time.monotonic()
            recaption(store, pipeline, orphans, result)
            progress(f"captioned {result.recaptioned} in {time.monotonic() - t0:.0f} s")
    finally:
        device.close()
    return result

