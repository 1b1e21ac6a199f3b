"""The capture store: one SQLite database (WAL) plus the JPEG files, in one data folder.

The store is the only writer of the data folder (layout: device/files.py). It stores what it is given:
vectors arrive as encoded bytes (device/vectors.py), the schema and its migrations live in
device/schema.py, the file writing in device/files.py, and the reads search makes are in
device/store_index.py (mixed into ``Store``). Retention and reconcile: device/upkeep.py.

Crash safety comes from ordering, not from luck: files are written to a temporary name, fsynced and
renamed *before* the row commits, and deleted only *after* the row deletion commits. A crash can
therefore only leave files without a row (or temp files), which ``reconcile()`` removes at start-up.

Tables (plain SQL types, JSON as TEXT, so the sqlite3 CLI and Datasette read them):

- ``captures``: one row per capture. ``alt_text`` holds the other beams' text, indexed in FTS with a
  lower weight than the caption.
- ``captures_fts`` (FTS5, external content, kept in sync by triggers) and ``captures_fts_vocab``.
- ``embeddings(capture_id, vector)`` and ``image_vectors(capture_id, vector, hub)``: int8 vectors. They
  live outside ``captures`` so that loading them into the search cache reads ~400 bytes per capture
  instead of the whole row (attention maps, beams); a trigger deletes them with their capture.
- ``capture_changes``: an append-only log of capture ids whose vectors changed or were deleted, so
  the search cache in another thread or process updates incrementally instead of reloading.
- ``store_totals``: running count and file bytes (triggers), so ``count()`` and retention are O(1).
- ``capture_tags(word, capture_id, p)``: the object tags (device/tagger.py) indexed by word, so a search
  for "cat" finds the captures tagged cat in one index lookup; ``captures.tags`` keeps the same tags
  as JSON for display. A trigger deletes them with their capture.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Self

import numpy as np
from PIL import Image

from device import schema
from device.files import (
    DB_NAME,
    IMAGES,
    JPEG_QUALITY,
    THUMB_QUALITY,
    THUMBS,
    capture_names,
    is_disk_full,
    jpeg_bytes,
    not_writable,
    thumbnail,
    write_files,
)
from device.store_captures import CaptureReads
from device.store_index import IndexReads, chunks

log = logging.getLogger(__name__)

CHANGES_KEEP = 50_000  # change-log entries kept; a cache further behind reloads fully


class StoreError(Exception):
    """A store problem a user can act on; the message says what and where."""


class StoreFullError(StoreError):
    """The disk holding the data folder is full; nothing was stored."""


class DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


def is_damaged(exc: BaseException) -> bool:
    """SQLite says the database file is corrupt or not a database."""
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def damaged_message(db_path: Path, exc: BaseException) -> str:
    return (f"{db_path} is damaged ({exc}): stop edgecap and run `edgecap repair` (it keeps the file and "
            "rebuilds the rows; do not delete it)")


def _alt_text(caption: str, beams: Sequence[dict] | None) -> str:
    texts = []
    for b in beams or []:
        text = str(b.get("text", "")) if isinstance(b, dict) else ""
        if text and text != caption and text not in texts:
            texts.append(text)
    return "\n".join(texts)


def _tag_list(tags: Sequence[dict] | None) -> list[dict[str, Any]]:
    """Valid {"word", "p"} entries, one per word (the first wins)."""
    out: dict[str, float] = {}
    for t in tags or []:
        word, p = (t.get("word"), t.get("p")) if isinstance(t, dict) else (None, None)
        if isinstance(word, str) and word.strip() and isinstance(p, int | float) and math.isfinite(p):
            out.setdefault(word.strip().lower(), round(float(p), 3))
        else:
            log.warning("store: skipping a tag that is not {\"word\": text, \"p\": number}: %.80r", t)
    return [{"word": w, "p": p} for w, p in out.items()]


def index_tags(conn: sqlite3.Connection, capture_id: int, tags: Sequence[dict]) -> list[dict[str, Any]]:
    """Write a capture's tags into ``capture_tags`` (the search index of ``captures.tags``), inside the
    caller's transaction; returns the valid tags written."""
    tag_list = _tag_list(tags)
    conn.executemany("INSERT OR REPLACE INTO capture_tags (word, capture_id, p) VALUES (?, ?, ?)",
                     [(t["word"], capture_id, t["p"]) for t in tag_list])
    return tag_list


class Store(CaptureReads, IndexReads):
    """SQLite + files in one data folder. Safe to share between threads (one connection each)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        disk_usage: Callable[[Path], Any] = shutil.disk_usage,
        image_projection: Any = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        # device.image_projection.ImageProjection or None: the space this folder's image vectors are in.
        # The store does not use it: the callers that encode image vectors (device/vectors.py) and
        # rank them (device/search/) take it from here, so every process opening one data folder
        # should pass the same one.
        self.image_projection = image_projection
        self.db_path = self.data_dir / DB_NAME
        self.images_dir = self.data_dir / IMAGES
        self.thumbs_dir = self.data_dir / THUMBS
        self._disk_usage = disk_usage
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._write_lock = threading.RLock()  # one writer per process; BEGIN IMMEDIATE across processes
        self._closed = False
        self._adds = 0
        try:
            for d in (self.data_dir, self.images_dir, self.thumbs_dir):
                d.mkdir(parents=True, exist_ok=True)
            self._migrate()
        except (OSError, sqlite3.Error) as e:
            if is_disk_full(e):
                raise StoreFullError(f"cannot open the store: the disk holding {self.data_dir} is full") from e
            if why := not_writable(self.data_dir):
                raise StoreError(f"cannot open the store: {why}") from e
            if is_damaged(e):
                raise StoreError(damaged_message(self.db_path, e)) from e
            raise StoreError(f"cannot open the store in {self.data_dir}: {e}") from e

    # -- connections ---------------------------------------------------------------------------------

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; write methods use explicit transactions)."""
        if self._closed:
            raise StoreError("the store is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # check_same_thread=False only so close() may close every thread's connection; each is
            # otherwise used by the thread that opened it.
            conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 30000")
            # WAL + NORMAL cannot corrupt on a crash; a power cut may lose the last commit, which
            # reconcile() then sees as files without a row.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = OFF")
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def _migrate(self) -> None:
        conn = self.connection()
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("SQLite refused WAL mode (got %s) for %s", mode, self.db_path)
        with self._write_lock:
            try:
                schema.migrate(conn)
            except schema.NewerSchemaError as e:
                raise StoreError(
                    f"{self.db_path} was written by a newer edgecap (schema {e.version}, this version "
                    f"knows {e.known}); upgrade edgecap or use another data folder"
                ) from e

    def close(self) -> None:
        """Close every thread's connection (checkpointing the WAL)."""
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                log.debug("store: closing a connection failed", exc_info=True)
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------------

    def add(
        self,
        image: Image.Image,
        *,
        time: float,
        source: str,
        original_path: str | None = None,
        caption: str,
        score: float | None = None,
        model_id: str | None = None,
        beams: Sequence[dict] | None = None,
        attention: Any = None,
        embedding: bytes | None = None,
        image_vector: bytes | None = None,
        image_hub: float = 0.0,
        tags: Sequence[dict] | None = None,
    ) -> int:
        """Store one capture (files first, then the row) and return its id.

        ``embedding``, ``image_vector`` and ``image_hub`` are stored as given: the encoded caption
        embedding and image vector and the image vector's hubness (device/vectors.py:
        ``encode_for_store`` makes all three from raw vectors).

        Raises StoreFullError when the disk is full (nothing is left behind), ValueError for a bad
        time, TypeError for vectors that are not encoded.
        """
        t = float(time)
        if not math.isfinite(t) or not -62_135_596_800 < t < 253_402_300_800:  # years 1..9999
            raise ValueError(f"capture time {time!r} is not a valid unix time")
        for what, blob in (("embedding", embedding), ("image_vector", image_vector)):
            if blob is not None and not isinstance(blob, bytes):
                raise TypeError(f"{what} must be encoded bytes (device.vectors.encode_for_store), "
                                f"not {type(blob).__name__}")
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        jpeg = jpeg_bytes(rgb, JPEG_QUALITY)
        thumb = jpeg_bytes(thumbnail(rgb), THUMB_QUALITY)
        beam_list = [
            {"text": str(b.get("text", "")), "score": float(b.get("score", 0.0))}
            for b in (beams or []) if isinstance(b, dict)
        ]
        att_blob = None
        if attention is not None:
            att = np.asarray(attention, dtype=np.float32)
            att_blob = att.reshape(-1, 7, 7).astype(np.float16).tobytes()
        tag_list = _tag_list(tags)
        rel_image, rel_thumb = capture_names(t)
        paths = [self.data_dir / rel_image, self.data_dir / rel_thumb]

        with self._write_lock:
            conn = self.connection()
            committed = False
            try:
                write_files(dict(zip(paths, (jpeg, thumb))))
                conn.execute("BEGIN IMMEDIATE")
                try:
                    cur = conn.execute(
                        """INSERT INTO captures (time, source, original_path, image, thumb, caption,
                               alt_text, score, model_id, beams, tags, width, height, image_bytes,
                               thumb_bytes, attention)
                           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                        (
                            t, str(source), original_path, rel_image, rel_thumb, str(caption),
                            _alt_text(str(caption), beam_list),
                            None if score is None else float(score), model_id, json.dumps(beam_list),
                            json.dumps(tag_list), rgb.width, rgb.height, len(jpeg), len(thumb), att_blob,
                        ),
                    )
                    cid = int(cur.lastrowid)
                    index_tags(conn, cid, tag_list)
                    if embedding is not None:
                        conn.execute("INSERT INTO embeddings (capture_id, vector) VALUES (?, ?)", (cid, embedding))
                    if image_vector is not None:
                        conn.execute(
                            "INSERT INTO image_vectors (capture_id, vector, hub) VALUES (?, ?, ?)",
                            (cid, image_vector, float(image_hub)),
                        )
                    conn.execute("COMMIT")
                    committed = True
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except (OSError, sqlite3.Error) as e:
                if not committed:
                    for p in paths:
                        p.unlink(missing_ok=True)
                if is_disk_full(e):
                    raise StoreFullError(
                        f"the disk holding {self.data_dir} is full: the capture was not stored "
                        "(lower [store] max_size_mb or free some space)"
                    ) from e
                if isinstance(e, sqlite3.Error):
                    raise StoreError(f"cannot write to {self.db_path}: {e}") from e
                raise
            except BaseException:
                if not committed:
                    for p in paths:
                        p.unlink(missing_ok=True)
                raise
            self._adds += 1
            if self._adds % 1000 == 0:
                self._prune_changes()
        return cid

    def _prune_changes(self) -> None:
        conn = self.connection()
        conn.execute(
            "DELETE FROM capture_changes WHERE seq <= (SELECT max(seq) FROM capture_changes) - ?",
            (CHANGES_KEEP,),
        )

    def delete(self, ids: Iterable[int]) -> int:
        """Delete captures (rows first, then their files). Returns how many rows were deleted."""
        id_list = sorted({int(i) for i in ids})
        if not id_list:
            return 0
        files: list[Path] = []
        deleted = 0
        with self._write_lock:
            conn = self.connection()
            for chunk in chunks(id_list, 500):
                marks = ",".join("?" * len(chunk))
                conn.execute("BEGIN IMMEDIATE")
                try:
                    rows = conn.execute(
                        f"SELECT image, thumb FROM captures WHERE id IN ({marks})", chunk
                    ).fetchall()
                    conn.execute(f"DELETE FROM captures WHERE id IN ({marks})", chunk)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                deleted += len(rows)
                for r in rows:
                    files += [self.data_dir / r["image"], self.data_dir / r["thumb"]]
        for p in files:
            try:
                p.unlink(missing_ok=True)
            except OSError as e:
                log.warning("store: cannot delete %s: %s (reconcile will retry)", p, e)
        return deleted

    # -- maintenance (device/upkeep.py) -------------------------------------------------------------

    def enforce_retention(self, max_bytes: int | None, min_free_bytes: int | None = None) -> int:
        """Delete the oldest captures to meet the size limit and the free-space floor (see upkeep)."""
        from device.upkeep import enforce_retention

        return enforce_retention(self, max_bytes, min_free_bytes)

    def reconcile(self, grace_seconds: float = 60.0) -> dict[str, int]:
        """Make rows and files agree after a crash, never deleting what a crash cannot explain (see upkeep)."""
        from device.upkeep import reconcile

        return reconcile(self, grace_seconds)
