"""The capture store: one SQLite database (WAL) plus the JPEG files, in one data folder.

The store is the only writer of the data folder. Layout::

    data_dir/edgecap.db                    captures, FTS index, vectors, bookkeeping
    data_dir/images/YYYY-MM-DD/<name>.jpg  the frame, JPEG quality 85
    data_dir/thumbs/YYYY-MM-DD/<name>.jpg  the same name, <= 320 px long side

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

import errno
import io
import json
import logging
import math
import os
import secrets
import shutil
import sqlite3
import threading
import time as _time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple, Self

import numpy as np
import sqlite_utils
from PIL import Image

log = logging.getLogger(__name__)

DB_NAME = "edgecap.db"
IMAGES = "images"
THUMBS = "thumbs"
TMP_PREFIX = ".tmp-"
JPEG_QUALITY = 85
THUMB_SIZE = 320
THUMB_QUALITY = 80
EMBEDDING_SCALE = 127.0
IMAGE_VECTOR_DIM = 512  # int8 bytes per capture after the projection below (issue: <= 1 KB)
CHANGES_KEEP = 50_000  # change-log entries kept; a cache further behind reloads fully
_DAY = 86400


class StoreError(Exception):
    """A store problem a user can act on; the message says what and where."""


class StoreFullError(StoreError):
    """The disk holding the data folder is full; nothing was stored."""


class DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


# ---------------------------------------------------------------------------------------------------
# Vector encodings (one place, so the store and the search cache agree)


def encode_embedding(vec: Any) -> bytes:
    """A unit text embedding (float [d]) -> int8 bytes, value * 127 rounded."""
    arr = np.asarray(vec, dtype=np.float32).reshape(-1)
    return np.clip(np.rint(arr * EMBEDDING_SCALE), -127, 127).astype(np.int8).tobytes()


def decode_embedding(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.int8).astype(np.float32) / EMBEDDING_SCALE


_projection_cache: dict[int, np.ndarray] = {}


def _projection(dim_in: int) -> np.ndarray:
    """A fixed random +-1 matrix [dim_in, IMAGE_VECTOR_DIM] from a hash of (row, column).

    Johnson-Lindenstrauss: cosines survive a random projection to 512 dimensions within about
    +-0.05, and 512 int8 values fit the 1 KB budget where 1280 do not. The matrix comes from
    splitmix64 of the index, not from numpy's RNG, so it can never change with a numpy upgrade
    (stored vectors would silently stop matching new ones).
    """
    mat = _projection_cache.get(dim_in)
    if mat is None:
        idx = np.arange(dim_in * IMAGE_VECTOR_DIM, dtype=np.uint64)
        with np.errstate(over="ignore"):
            z = idx + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
        signs = np.where((z >> np.uint64(63)) == 1, 1.0, -1.0).astype(np.float32)
        mat = signs.reshape(dim_in, IMAGE_VECTOR_DIM)
        _projection_cache[dim_in] = mat
    return mat


def encode_image_vector(vec: Any, projection: Any = None) -> bytes:
    """Image features (float32 [1280] mean-pooled MobileNetV2) -> at most 1 KB of int8.

    With the trained image projection (``device.image_projection``, models/image-projection) the
    features go into the text embedder's space (384 bytes), where typed queries can rank them.
    Without it, vectors longer than 1024 are projected to 512 dimensions (see ``_projection``), good
    for "more like this" only. Then the vector is L2-normalised and quantised like the text
    embeddings. The byte length identifies the format (the search cache skips the other one).
    """
    arr = np.asarray(vec, dtype=np.float32).reshape(-1)
    if projection is not None and arr.size == projection.dim_in:
        arr = projection.project(arr)
    elif arr.size > 1024:
        arr = arr @ _projection(arr.size)
    norm = float(np.linalg.norm(arr))
    if not math.isfinite(norm) or norm == 0.0:
        arr = np.zeros_like(arr)
    else:
        arr = arr / norm
    return encode_embedding(arr)


# ---------------------------------------------------------------------------------------------------
# Schema and migrations: PRAGMA user_version = number of migrations applied


def _migration_1(db: sqlite_utils.Database) -> None:
    # AUTOINCREMENT: ids are never reused, so a deleted capture's URL never shows another one and
    # "rows with id > last seen" is a correct incremental read for the search cache.
    db.execute(
        """CREATE TABLE captures (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            time REAL NOT NULL,
            source TEXT NOT NULL,
            original_path TEXT,
            image TEXT NOT NULL,
            thumb TEXT NOT NULL,
            caption TEXT NOT NULL,
            alt_text TEXT NOT NULL DEFAULT '',
            score REAL,
            model_id TEXT,
            beams TEXT NOT NULL DEFAULT '[]',
            width INTEGER,
            height INTEGER,
            image_bytes INTEGER NOT NULL DEFAULT 0,
            thumb_bytes INTEGER NOT NULL DEFAULT 0,
            attention BLOB
        )"""
    )
    db["captures"].create_index(["time"], index_name="captures_time")
    # (source, time) serves both "source = ?" and "source = ? ORDER BY time".
    db["captures"].create_index(["source", "time"], index_name="captures_source_time")
    db["captures"].create_index(["original_path"], index_name="captures_original_path")
    db["captures"].enable_fts(
        ["caption", "alt_text"], create_triggers=True, tokenize="unicode61 remove_diacritics 2"
    )
    db.execute("CREATE VIRTUAL TABLE captures_fts_vocab USING fts5vocab('captures_fts', 'row')")
    db.execute(
        "CREATE TABLE capture_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, capture_id INTEGER NOT NULL)"
    )
    for table in ("embeddings", "image_vectors"):
        db.execute(f"CREATE TABLE {table} (capture_id INTEGER PRIMARY KEY, vector BLOB NOT NULL)")
    for table in ("embeddings", "image_vectors"):
        for when, ref in (("UPDATE", "new"), ("DELETE", "old")):
            db.execute(
                f"""CREATE TRIGGER {table}_log_{when.lower()} AFTER {when} ON {table} BEGIN
                    INSERT INTO capture_changes (capture_id) VALUES ({ref}.capture_id); END"""
            )
        # A vector added later to an existing capture (re-embedding) must reach the caches too; the
        # caches ignore log entries newer than the last capture they read (found by id > last).
        db.execute(
            f"""CREATE TRIGGER {table}_log_insert AFTER INSERT ON {table} BEGIN
                INSERT INTO capture_changes (capture_id) VALUES (new.capture_id); END"""
        )
    db.execute(
        """CREATE TABLE store_totals (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            captures INTEGER NOT NULL,
            file_bytes INTEGER NOT NULL
        )"""
    )
    db.execute("INSERT INTO store_totals (id, captures, file_bytes) VALUES (1, 0, 0)")
    db.execute(
        """CREATE TRIGGER captures_totals_insert AFTER INSERT ON captures BEGIN
            UPDATE store_totals SET captures = captures + 1,
                file_bytes = file_bytes + new.image_bytes + new.thumb_bytes WHERE id = 1;
        END"""
    )
    db.execute(
        """CREATE TRIGGER captures_totals_delete AFTER DELETE ON captures BEGIN
            UPDATE store_totals SET captures = captures - 1,
                file_bytes = file_bytes - old.image_bytes - old.thumb_bytes WHERE id = 1;
            DELETE FROM embeddings WHERE capture_id = old.id;
            DELETE FROM image_vectors WHERE capture_id = old.id;
            INSERT INTO capture_changes (capture_id) VALUES (old.id);
        END"""
    )
    db.execute(
        """CREATE TRIGGER captures_totals_update AFTER UPDATE OF image_bytes, thumb_bytes ON captures
        BEGIN
            UPDATE store_totals SET file_bytes = file_bytes
                - old.image_bytes - old.thumb_bytes + new.image_bytes + new.thumb_bytes WHERE id = 1;
        END"""
    )


def _migration_2(db: sqlite_utils.Database) -> None:
    # The hubness of each projected image vector (see device/image_projection.py): how close it comes
    # to every text anyway. Text -> image ranking subtracts it; 0 for vectors without a projection.
    db.execute("ALTER TABLE image_vectors ADD COLUMN hub REAL NOT NULL DEFAULT 0")


def _migration_3(db: sqlite_utils.Database) -> None:
    db.execute("ALTER TABLE captures ADD COLUMN tags TEXT NOT NULL DEFAULT '[]'")
    db.execute(
        """CREATE TABLE capture_tags (
            word TEXT NOT NULL, capture_id INTEGER NOT NULL, p REAL NOT NULL,
            PRIMARY KEY (word, capture_id)) WITHOUT ROWID"""
    )
    db.execute("CREATE INDEX capture_tags_capture ON capture_tags (capture_id)")
    # Most confident first straight from the index: a common tag ("dog" on 300k of 1M captures) stops
    # after `limit` rows instead of sorting all of them (measured 175 ms -> 0.2 ms).
    db.execute("CREATE INDEX capture_tags_word_p ON capture_tags (word, p DESC)")
    db.execute(
        """CREATE TRIGGER captures_tags_delete AFTER DELETE ON captures BEGIN
            DELETE FROM capture_tags WHERE capture_id = old.id; END"""
    )


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_migration_1, _migration_2, _migration_3]


# ---------------------------------------------------------------------------------------------------


_CAPTURE_COLUMNS = (
    "id, time, source, original_path, image, thumb, caption, score, model_id, beams, tags, width, height"
)


def _day_dir(t: float) -> str:
    # Derived with exact integer arithmetic on floor(t / 86400) so reconcile's range query
    # "day*86400 <= time < (day+1)*86400" finds exactly the rows whose files are in that folder.
    return (date(1970, 1, 1) + timedelta(days=int(t // _DAY))).isoformat()


def _day_start(day: str) -> int | None:
    try:
        return (date.fromisoformat(day) - date(1970, 1, 1)).days * _DAY
    except ValueError:
        return None


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).astimezone().isoformat(timespec="seconds")


def is_damaged(exc: BaseException) -> bool:
    """SQLite says the database file is corrupt or not a database."""
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def damaged_message(db_path: Path, exc: BaseException) -> str:
    return (f"{db_path} is damaged ({exc}): stop edgecap and run `edgecap repair` (it keeps the file and "
            "rebuilds the rows; do not delete it)")


def not_writable(data_dir: Path) -> str | None:
    """Why the store cannot write in `data_dir` (None when it can): what to fix, not a SQLite message."""
    for p in (data_dir, data_dir / DB_NAME):
        if not p.exists() or os.access(p, os.W_OK):
            continue
        try:
            read_only = bool(os.statvfs(p).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        if read_only:
            return f"{p} is on a read-only file system: mount it read-write, or set data_dir to another folder"
        return (f"{p} is not writable by this user: give the user edgecap runs as write access "
                f"(e.g. sudo chown -R edgecap: {data_dir}), or set data_dir")
    return None


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return False


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp name in the same folder, fsync, rename."""
    tmp = path.with_name(TMP_PREFIX + path.name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _thumbnail(image: Image.Image) -> Image.Image:
    thumb = image.copy()
    thumb.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
    return thumb


def _alt_text(caption: str, beams: Sequence[dict] | None) -> str:
    texts = []
    for b in beams or []:
        text = str(b.get("text", "")) if isinstance(b, dict) else ""
        if text and text != caption and text not in texts:
            texts.append(text)
    return "\n".join(texts)


def _row_to_capture(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["time_iso"] = _iso(d["time"])
    d["beams"] = json_list(d.get("beams"))
    d["tags"] = json_list(d.get("tags"))
    return d


def json_list(text: Any) -> list:
    """A JSON list column (beams, tags) as a list; [] for NULL or garbage."""
    try:
        value = json.loads(text or "[]")
    except (TypeError, ValueError):
        return []
    return value if isinstance(value, list) else []


def _tag_list(tags: Sequence[dict] | None) -> list[dict[str, Any]]:
    """Valid {"word", "p"} entries, one per word (the first wins)."""
    out: dict[str, float] = {}
    for t in tags or []:
        word, p = (t.get("word"), t.get("p")) if isinstance(t, dict) else (None, None)
        if isinstance(word, str) and word.strip() and isinstance(p, int | float) and math.isfinite(p):
            out.setdefault(word.strip().lower(), round(float(p), 3))
    return [{"word": w, "p": p} for w, p in out.items()]


def index_tags(conn: sqlite3.Connection, capture_id: int, tags: Sequence[dict]) -> list[dict[str, Any]]:
    """Write a capture's tags into ``capture_tags`` (the search index of ``captures.tags``), inside the
    caller's transaction; returns the valid tags written."""
    tag_list = _tag_list(tags)
    conn.executemany("INSERT OR REPLACE INTO capture_tags (word, capture_id, p) VALUES (?, ?, ?)",
                     [(t["word"], capture_id, t["p"]) for t in tag_list])
    return tag_list


class Store:
    """SQLite + files in one data folder. Safe to share between threads (one connection each)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        disk_usage: Callable[[Path], Any] = shutil.disk_usage,
        image_projection: Any = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        # device.image_projection.ImageProjection or None: how image features are stored (see
        # encode_image_vector); every process opening one data folder should pass the same one.
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
            if _is_disk_full(e):
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

    def db(self) -> sqlite_utils.Database:
        """A sqlite-utils view of this thread's connection (for tools and tests)."""
        return sqlite_utils.Database(self.connection())

    def _migrate(self) -> None:
        conn = self.connection()
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("SQLite refused WAL mode (got %s) for %s", mode, self.db_path)
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > len(MIGRATIONS):
                    raise StoreError(
                        f"{self.db_path} was written by a newer edgecap (schema {version}, this version "
                        f"knows {len(MIGRATIONS)}); upgrade edgecap or use another data folder"
                    )
                db = sqlite_utils.Database(conn)
                for i in range(version, len(MIGRATIONS)):
                    log.info("store: applying schema migration %d", i + 1)
                    MIGRATIONS[i](db)
                    conn.execute(f"PRAGMA user_version = {i + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

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
        embedding: Any = None,
        image_vector: Any = None,
        tags: Sequence[dict] | None = None,
    ) -> int:
        """Store one capture (files first, then the row) and return its id.

        Raises StoreFullError when the disk is full (nothing is left behind), ValueError for a bad
        time.
        """
        t = float(time)
        if not math.isfinite(t) or not -62_135_596_800 < t < 253_402_300_800:  # years 1..9999
            raise ValueError(f"capture time {time!r} is not a valid unix time")
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        jpeg = _jpeg_bytes(rgb, JPEG_QUALITY)
        thumb = _jpeg_bytes(_thumbnail(rgb), THUMB_QUALITY)
        beam_list = [
            {"text": str(b.get("text", "")), "score": float(b.get("score", 0.0))}
            for b in (beams or []) if isinstance(b, dict)
        ]
        att_blob = None
        if attention is not None:
            att = np.asarray(attention, dtype=np.float32)
            att_blob = att.reshape(-1, 7, 7).astype(np.float16).tobytes()
        emb_blob = encode_embedding(embedding) if embedding is not None else None
        tag_list = _tag_list(tags)
        img_blob, img_hub = None, 0.0
        if image_vector is not None:
            img_blob = encode_image_vector(image_vector, self.image_projection)
            if self.image_projection is not None and len(img_blob) == self.image_projection.dim:
                img_hub = float(self.image_projection.hubness(decode_embedding(img_blob)))

        day = _day_dir(t)
        stamp = datetime.fromtimestamp(t // 1, tz=UTC).strftime("%Y%m%dT%H%M%S")
        # Time + random suffix: sortable, unique, and never derived from user input.
        name = f"{stamp}{int((t % 1) * 1000):03d}Z-{secrets.token_hex(5)}.jpg"
        rel_image = f"{IMAGES}/{day}/{name}"
        rel_thumb = f"{THUMBS}/{day}/{name}"
        paths = [self.data_dir / rel_image, self.data_dir / rel_thumb]

        with self._write_lock:
            conn = self.connection()
            committed = False
            try:
                for p, data in zip(paths, (jpeg, thumb)):
                    p.parent.mkdir(parents=True, exist_ok=True)
                    _write_atomic(p, data)
                for p in paths:
                    _fsync_dir(p.parent)
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
                    if emb_blob is not None:
                        conn.execute("INSERT INTO embeddings (capture_id, vector) VALUES (?, ?)", (cid, emb_blob))
                    if img_blob is not None:
                        conn.execute(
                            "INSERT INTO image_vectors (capture_id, vector, hub) VALUES (?, ?, ?)",
                            (cid, img_blob, img_hub),
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
                if _is_disk_full(e):
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
            for chunk in _chunks(id_list, 500):
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

    # -- reading -------------------------------------------------------------------------------------

    def get(self, capture_id: int) -> dict[str, Any] | None:
        """One capture with its attention map decoded (float32 [n_words, 7, 7]), or None."""
        row = self.connection().execute(
            f"SELECT {_CAPTURE_COLUMNS}, attention FROM captures WHERE id = ?", (int(capture_id),)
        ).fetchone()
        if row is None:
            return None
        d = _row_to_capture(row)
        blob = d.pop("attention")
        d["attention"] = None
        if blob and len(blob) % (49 * 2) == 0:
            d["attention"] = np.frombuffer(blob, dtype=np.float16).astype(np.float32).reshape(-1, 7, 7)
        return d

    def get_many(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """Captures for ``ids`` in the given order (without attention); missing ids are skipped."""
        found: dict[int, dict[str, Any]] = {}
        conn = self.connection()
        for chunk in _chunks([int(i) for i in ids], 500):
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(f"SELECT {_CAPTURE_COLUMNS} FROM captures WHERE id IN ({marks})", chunk):
                found[row["id"]] = _row_to_capture(row)
        return [found[int(i)] for i in ids if int(i) in found]

    def recent(
        self,
        limit: int = 20,
        offset: int = 0,
        source: str | None = None,
        since: float | None = None,
        until: float | None = None,
        *,
        time_of_day: tuple[int, int] | None = None,
        after_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first. ``since`` is inclusive, ``until`` exclusive (unix seconds); ``time_of_day``:
        see filter_sql; ``after_id``: only captures stored after that one (whatever their time)."""
        where, args = filter_sql(source, since, until, time_of_day=time_of_day)
        if after_id is not None:
            where = f"{where} AND id > ?" if where else "WHERE id > ?"
            args.append(int(after_id))
        rows = self.connection().execute(
            f"SELECT {_CAPTURE_COLUMNS} FROM captures {where} ORDER BY time DESC, id DESC LIMIT ? OFFSET ?",
            (*args, max(0, int(limit)), max(0, int(offset))),
        ).fetchall()
        return [_row_to_capture(r) for r in rows]

    def tagged(
        self, words: Sequence[str], limit: int, source: str | None = None, since: float | None = None,
        until: float | None = None, time_of_day: tuple[int, int] | None = None,
    ) -> list[tuple[int, float, float]]:
        """(id, confidence, time) of captures tagged with any of ``words``, most confident first."""
        where, args = filter_sql(source, since, until, table="c", time_of_day=time_of_day)
        sql = f"""SELECT t.capture_id, t.p, c.time FROM capture_tags t JOIN captures c ON c.id = t.capture_id
                  {where} {"AND" if where else "WHERE"} t.word = ? ORDER BY t.p DESC LIMIT ?"""
        best: dict[int, tuple[float, float]] = {}
        conn = self.connection()
        for word in sorted({w for w in words if w}):  # one index range each, read in order of p
            for cid, p, t in conn.execute(sql, (*args, word, max(0, int(limit)))):
                if p > best.get(cid, (-1.0, 0.0))[0]:
                    best[cid] = (float(p), float(t))
        ranked = sorted(((cid, p, t) for cid, (p, t) in best.items()), key=lambda x: (-x[1], -x[2], -x[0]))
        return ranked[:limit]

    def timeline(self, start: float, end: float, source: str | None = None) -> dict[str, Any]:
        """Captures per local hour in [start, end) (a day), and the times of the nearest captures
        before and after it (for "previous / next day with captures")."""
        conn = self.connection()
        where, args = filter_sql(source, start, end)
        hours = [0] * 24
        for hour, n in conn.execute(
            f"SELECT CAST(strftime('%H', time, 'unixepoch', 'localtime') AS INTEGER), count(*) FROM captures "
            f"{where} GROUP BY 1", args,
        ):
            hours[int(hour) % 24] += n
        before_where, before_args = filter_sql(source, None, start)
        after_where, after_args = filter_sql(source, end, None)
        before = conn.execute(f"SELECT max(time) FROM captures {before_where}", before_args).fetchone()[0]
        after = conn.execute(f"SELECT min(time) FROM captures {after_where}", after_args).fetchone()[0]
        return {"hours": hours, "before": before, "after": after}

    def count(self) -> int:
        return int(self.connection().execute("SELECT captures FROM store_totals WHERE id = 1").fetchone()[0])

    def sources(self) -> list[str]:
        """Distinct sources, sorted; O(sources * log n) by skipping through the (source, time) index."""
        rows = self.connection().execute(
            """WITH RECURSIVE s(x) AS (
                   SELECT min(source) FROM captures
                   UNION ALL
                   SELECT (SELECT min(source) FROM captures WHERE source > s.x) FROM s WHERE s.x IS NOT NULL)
               SELECT x FROM s WHERE x IS NOT NULL"""
        ).fetchall()
        return [r[0] for r in rows]

    def file_path(self, capture_id: int, kind: str = "image") -> Path | None:
        """The capture's image or thumbnail file, only if it exists inside this store's folders."""
        if kind not in ("image", "thumb"):
            return None
        row = self.connection().execute(
            f"SELECT {kind} FROM captures WHERE id = ?", (int(capture_id),)
        ).fetchone()
        if row is None or not row[0]:
            return None
        root = (self.images_dir if kind == "image" else self.thumbs_dir).resolve()
        path = (self.data_dir / row[0]).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return None
        return path

    def has_original(self, path: str | os.PathLike[str]) -> bool:
        row = self.connection().execute(
            "SELECT 1 FROM captures WHERE original_path = ? LIMIT 1", (os.fspath(path),)
        ).fetchone()
        return row is not None

    def _db_bytes(self) -> int:
        return sum(
            p.stat().st_size for p in (self.db_path, Path(f"{self.db_path}-wal")) if p.exists()
        )

    def _used_db_bytes(self) -> int:
        # Deleting rows does not shrink the file, it frees pages that later captures reuse; count
        # the pages in use so retention converges instead of deleting everything.
        conn = self.connection()
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page_size)

    def _file_bytes(self) -> int:
        return int(self.connection().execute("SELECT file_bytes FROM store_totals WHERE id = 1").fetchone()[0])

    def stats(self) -> dict[str, Any]:
        """Counts, bytes, time range and disk space."""
        conn = self.connection()
        oldest = conn.execute("SELECT min(time) FROM captures").fetchone()[0]
        newest = conn.execute("SELECT max(time) FROM captures").fetchone()[0]
        file_bytes = self._file_bytes()
        out: dict[str, Any] = {
            "count": self.count(),
            "db_bytes": self._db_bytes(),
            "files_bytes": file_bytes,
            "image_bytes": file_bytes,  # images and thumbnails
            "store_bytes": self._used_db_bytes() + file_bytes,
            "oldest": oldest,
            "newest": newest,
            "oldest_iso": _iso(oldest) if oldest is not None else None,
            "newest_iso": _iso(newest) if newest is not None else None,
            "sources": self.sources(),
            "data_dir": str(self.data_dir),
        }
        try:
            du = self._disk_usage(self.data_dir)
            out["disk_free"] = int(du.free)
            out["disk"] = {"total_bytes": int(du.total), "free_bytes": int(du.free)}
        except OSError:
            out["disk_free"] = None
        return out

    # -- maintenance (device/upkeep.py) -------------------------------------------------------------

    def enforce_retention(self, max_bytes: int | None, min_free_bytes: int | None = None) -> int:
        """Delete the oldest captures to meet the size limit and the free-space floor (see upkeep)."""
        from device.upkeep import enforce_retention

        return enforce_retention(self, max_bytes, min_free_bytes)

    def reconcile(self, grace_seconds: float = 60.0) -> dict[str, int]:
        """Make rows and files agree after a crash, never deleting what a crash cannot explain (see upkeep)."""
        from device.upkeep import reconcile

        return reconcile(self, grace_seconds)

    def file_bytes(self) -> int:
        """Bytes of image and thumbnail files, from the running total."""
        return self._file_bytes()

    def used_db_bytes(self) -> int:
        return self._used_db_bytes()

    def disk_free(self) -> int:
        return int(self._disk_usage(self.data_dir).free)


def filter_sql(
    source: str | None, since: float | None, until: float | None, table: str = "",
    time_of_day: tuple[int, int] | None = None,
) -> tuple[str, list[Any]]:
    """A WHERE clause (or "") for the common filters; ``table`` prefixes the column names.

    ``time_of_day``: (first minute, end minute) of the local day, end exclusive; when the first is
    later than the end the range wraps past midnight (22:00-06:00)."""
    prefix = f"{table}." if table else ""
    clauses: list[str] = []
    args: list[Any] = []
    if source:
        clauses.append(f"{prefix}source = ?")
        args.append(source)
    if since is not None:
        clauses.append(f"{prefix}time >= ?")
        args.append(float(since))
    if until is not None:
        clauses.append(f"{prefix}time < ?")
        args.append(float(until))
    if time_of_day is not None:
        # SQLite's 'localtime' is the C library's, as Python's: the same zone and DST rules
        clock = f"strftime('%H:%M', {prefix}time, 'unixepoch', 'localtime')"
        first, end = (f"{m // 60:02d}:{m % 60:02d}" for m in time_of_day)
        clauses.append(f"({clock} >= ? {'AND' if first <= end else 'OR'} {clock} < ?)")
        args += [first, end]
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", args


def minute_of_day(times: np.ndarray) -> np.ndarray:
    """Local minute of the day (0..1439) of unix times, for the same filter in the vector cache.

    The UTC offset is looked up once per quarter hour present (zone changes happen on those), not
    per capture."""
    t = np.asarray(times, np.float64)
    if t.size == 0:
        return np.zeros(0, np.int32)
    buckets, inverse = np.unique(np.floor(t / 900.0), return_inverse=True)
    offsets = np.array([_time.localtime(float(b) * 900.0).tm_gmtoff for b in buckets], np.float64)
    local = t + offsets[inverse]
    return (np.floor(local / 60.0) % 1440).astype(np.int32)


def in_time_of_day(minutes: np.ndarray, time_of_day: tuple[int, int]) -> np.ndarray:
    first, end = time_of_day
    if first <= end:
        return (minutes >= first) & (minutes < end)
    return (minutes >= first) | (minutes < end)


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
