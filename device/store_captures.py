"""Reading captures back, as the page, the API and the CLI show them, and the store's numbers.

Mixed into ``Store`` (device/store.py), whose connection, folders and disk-usage function these use.
A capture is a dict of its row (without the vectors) plus ``time_iso``, with ``beams`` and ``tags``
decoded from JSON.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from device.store_index import chunks, filter_sql

log = logging.getLogger("device.store")

_CAPTURE_COLUMNS = (
    "id, time, source, original_path, image, thumb, caption, score, model_id, beams, tags, width, height"
)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).astimezone().isoformat(timespec="seconds")


def _row_to_capture(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["time_iso"] = _iso(d["time"])
    d["beams"] = json_list(d.get("beams"))
    d["tags"] = json_list(d.get("tags"))
    return d


def json_list(text: Any) -> list:
    """A JSON list column (beams, tags) as a list; [] for NULL or garbage (logged: a row edited by
    hand or a bad restore; the capture still shows, without that column)."""
    try:
        value = json.loads(text or "[]")
    except (TypeError, ValueError) as e:
        log.warning("store: a beams/tags column is not JSON (%s), read as []: %.80r", e, text)
        return []
    if not isinstance(value, list):
        log.warning("store: a beams/tags column is not a JSON list, read as []: %.80r", text)
        return []
    return value


class CaptureReads:
    """Mixed into ``Store``; uses its ``connection()``, ``data_dir``, ``images_dir``, ``thumbs_dir``,
    ``db_path`` and ``_disk_usage``."""

    data_dir: Path
    images_dir: Path
    thumbs_dir: Path
    db_path: Path
    _disk_usage: Callable[[Path], Any]

    def connection(self) -> sqlite3.Connection:  # pragma: no cover - Store's
        raise NotImplementedError

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
        for chunk in chunks([int(i) for i in ids], 500):
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

    def used_db_bytes(self) -> int:
        """Bytes of the database pages in use."""
        # Deleting rows does not shrink the file, it frees pages that later captures reuse; count
        # the pages in use so retention converges instead of deleting everything.
        conn = self.connection()
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page_size)

    def file_bytes(self) -> int:
        """Bytes of image and thumbnail files, from the running total."""
        return int(self.connection().execute("SELECT file_bytes FROM store_totals WHERE id = 1").fetchone()[0])

    def stats(self) -> dict[str, Any]:
        """Counts, bytes, time range and disk space."""
        conn = self.connection()
        oldest = conn.execute("SELECT min(time) FROM captures").fetchone()[0]
        newest = conn.execute("SELECT max(time) FROM captures").fetchone()[0]
        file_bytes = self.file_bytes()
        out: dict[str, Any] = {
            "count": self.count(),
            "db_bytes": self._db_bytes(),
            "files_bytes": file_bytes,
            "image_bytes": file_bytes,  # images and thumbnails
            "store_bytes": self.used_db_bytes() + file_bytes,
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

    def disk_free(self) -> int:
        return int(self._disk_usage(self.data_dir).free)
