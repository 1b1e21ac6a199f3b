"""The store's indexes read as plain data: the reads the search package makes (device/search/).

Search ranks with the vectors, the FTS5 index, the object tags and the vocabulary, but it reads them
only through these methods (mixed into ``Store``), never through the tables: the SQL and the table
names stay in the store. Each method returns numbers, strings and bytes, no rows or cursors.

Several reads that must agree (the newest id, the change log, the rows after an id) run inside
``with store.reading():``, one read snapshot, so a capture committed in between is seen by all or none.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

# A vector kind -> (its table, alias v, and the per-row bias the search cache loads with each vector:
# the hubness of image vectors, 0 for caption embeddings).
VECTOR_TABLES = {"captions": ("embeddings", "0"), "images": ("image_vectors", "v.hub")}
_NO_UPPER_ID = 2**62


def filter_sql(
    source: str | None, since: float | None, until: float | None, table: str = "",
    time_of_day: tuple[int, int] | None = None,
) -> tuple[str, list[Any]]:
    """A WHERE clause (or "") for the common filters; ``table`` prefixes the column names.

    ``time_of_day``: (first minute, end minute) of the local day, end exclusive; when the first is
    later than the end the range wraps past midnight (22:00-06:00). The search cache applies the same
    filter in memory (device/search/index.py: minute_of_day); the two must agree."""
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


def chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _vector_table(kind: str) -> tuple[str, str]:
    try:
        return VECTOR_TABLES[kind]
    except KeyError:
        raise ValueError(f"no vector kind {kind!r} (one of {', '.join(VECTOR_TABLES)})") from None


class IndexReads:
    """Mixed into ``Store``; uses its ``connection()``."""

    def connection(self) -> sqlite3.Connection:  # pragma: no cover - Store's
        raise NotImplementedError

    def _tuples(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        """A cursor yielding plain tuples (cheaper than sqlite3.Row on the bulk reads, and plain data)."""
        cur = self.connection().cursor()
        cur.row_factory = None
        return cur.execute(sql, args)

    @contextmanager
    def reading(self) -> Iterator[None]:
        """One read snapshot for the reads inside (this thread's connection)."""
        conn = self.connection()
        conn.execute("BEGIN")
        try:
            yield
        finally:
            conn.execute("COMMIT")

    def last_id(self) -> int:
        """The newest capture id (0 when empty). Ids are never reused (AUTOINCREMENT), so "id > the
        last one seen" finds exactly the captures stored since."""
        return int(self.connection().execute("SELECT coalesce(max(id), 0) FROM captures").fetchone()[0])

    # -- vectors ---------------------------------------------------------------------------------------

    def change_range(self) -> tuple[int, int]:
        """(first, last) sequence number in the change log (``capture_changes``: captures whose
        vectors changed or were deleted); (0, 0) when empty. Old entries are pruned, so a reader whose
        last seen number is below first - 1 missed some and must reload."""
        first, last = self.connection().execute(
            "SELECT coalesce(min(seq), 0), coalesce(max(seq), 0) FROM capture_changes").fetchone()
        return int(first), int(last)

    def changed_since(self, seq: int, up_to_id: int) -> list[int]:
        """Ids (at most ``up_to_id``) of the captures logged as changed after sequence number ``seq``."""
        return [r[0] for r in self.connection().execute(
            "SELECT DISTINCT capture_id FROM capture_changes WHERE seq > ? AND capture_id <= ?",
            (int(seq), int(up_to_id)))]

    def vector_length(self, kind: str) -> int:
        """Bytes of the newest vector of ``kind`` ("captions" | "images"), 0 when there is none: the
        format vectors of other lengths (another model, the random projection) are skipped for."""
        table, _ = _vector_table(kind)
        row = self.connection().execute(
            f"SELECT length(vector) FROM {table} ORDER BY capture_id DESC LIMIT 1").fetchone()
        return int(row[0]) if row else 0

    def vector_batches(self, kind: str, length: int, batch: int = 20_000) -> Iterator[list[tuple[int, bytes, float]]]:
        """Every (capture id, vector, bias) of ``kind`` with ``length`` bytes, in batches. The vector
        tables are narrow, so this reads ~0.4 KB per capture, never the capture rows."""
        table, bias = _vector_table(kind)
        cur = self._tuples(f"SELECT v.capture_id, v.vector, {bias} FROM {table} v WHERE length(v.vector) = ?",
                           (int(length),))
        while rows := cur.fetchmany(batch):
            yield rows

    def capture_batches(self, batch: int = 50_000) -> Iterator[list[tuple[int, float, str]]]:
        """Every capture's (id, time, source), in batches, from the (source, time) index alone."""
        cur = self._tuples("SELECT id, time, source FROM captures INDEXED BY captures_source_time")
        while rows := cur.fetchmany(batch):
            yield rows

    def vector_rows(
        self, kind: str, *, after_id: int | None = None, ids: Sequence[int] | None = None,
    ) -> list[tuple[int, float, str, bytes, float]]:
        """(capture id, time, source, vector, bias) of ``kind`` for the captures after ``after_id``, or
        for ``ids``; by capture id within each batch of 500 ids."""
        table, bias = _vector_table(kind)
        sql = f"""SELECT v.capture_id, c.time, c.source, v.vector, {bias}
                  FROM {table} v JOIN captures c ON c.id = v.capture_id WHERE {{}} ORDER BY v.capture_id"""
        if ids is None:
            return self._tuples(sql.format("v.capture_id > ?"), (int(after_id or 0),)).fetchall()
        rows = []
        for part in chunks([int(i) for i in ids], 500):
            rows += self._tuples(sql.format(f"v.capture_id IN ({','.join('?' * len(part))})"), part).fetchall()
        return rows

    def image_vector(self, capture_id: int) -> bytes | None:
        row = self.connection().execute(
            "SELECT vector FROM image_vectors WHERE capture_id = ?", (int(capture_id),)).fetchone()
        return None if row is None else row[0]

    # -- words -----------------------------------------------------------------------------------------

    def word_counts(self) -> dict[str, int]:
        """Each word of the keyword index and the number of captures using it (caption or other beams)."""
        return dict(self._tuples("SELECT term, doc FROM captures_fts_vocab"))

    def texts_after(self, after_id: int) -> list[tuple[int, str, str]]:
        """(id, caption, other beams' text) of the captures after ``after_id``, by id."""
        return self._tuples("SELECT id, caption, alt_text FROM captures WHERE id > ? ORDER BY id",
                            (int(after_id),)).fetchall()

    def keyword_matches(
        self, fts_query: str, limit: int, *, weights: tuple[float, float], after_id: int = 0,
        up_to_id: int = _NO_UPPER_ID, source: str | None = None, since: float | None = None,
        until: float | None = None, time_of_day: tuple[int, int] | None = None,
    ) -> list[tuple[int, float]]:
        """(id, BM25 (lower is better)) of the captures in (after_id, up_to_id] matching the FTS5 query,
        best first, newest id first among equal scores. ``weights``: BM25 weights of the caption and of
        the other beams. The id range is applied inside the index (rowid), so a window is cheap."""
        where, args = filter_sql(source, since, until, table="c", time_of_day=time_of_day)
        w_caption, w_alt = float(weights[0]), float(weights[1])
        if where:
            sql = f"""SELECT captures_fts.rowid, bm25(captures_fts, {w_caption}, {w_alt}) AS s
                      FROM captures_fts JOIN captures c ON c.id = captures_fts.rowid
                      {where} AND captures_fts MATCH ? AND captures_fts.rowid > ? AND captures_fts.rowid <= ?
                      ORDER BY s, captures_fts.rowid DESC LIMIT ?"""
        else:
            sql = f"""SELECT rowid, bm25(captures_fts, {w_caption}, {w_alt}) AS s FROM captures_fts
                      WHERE captures_fts MATCH ? AND rowid > ? AND rowid <= ? ORDER BY s, rowid DESC LIMIT ?"""
        return self._tuples(sql, (*args, fts_query, int(after_id), int(up_to_id), int(limit))).fetchall()

    def capture_times(self, ids: Sequence[int]) -> dict[int, float]:
        """Capture id -> time, for the ids that exist."""
        out: dict[int, float] = {}
        for part in chunks([int(i) for i in ids], 500):
            out.update(self.connection().execute(
                f"SELECT id, time FROM captures WHERE id IN ({','.join('?' * len(part))})", part).fetchall())
        return out

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
