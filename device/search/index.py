"""The in-memory vector index: the int8 vectors of one kind with each capture's time and source.

Search compares a query with every stored vector (caption embeddings, image vectors) in numpy rather
than in SQLite: one int8 matrix per kind, loaded once per process and then kept current by reading
only what changed (new capture ids, the store's change log). Past ``BINARY_ABOVE`` rows a sign-bit
Hamming prefilter picks the ``RERANK`` candidates that are scored exactly.

The time-of-day filter here must agree with the store's SQL one (device/store_index.py: filter_sql).
"""
from __future__ import annotations

import logging
import threading
import time as _time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from device.store import Store

log = logging.getLogger("device.search")

RERANK = 2_000  # vectors scored exactly per query; beyond that, a sign-bit Hamming prefilter picks them
BINARY_ABOVE = RERANK  # keep sign-bit codes once the index is larger than this


@dataclass
class Snapshot:
    """One query's view of a VectorIndex: array views that later appends do not change."""

    ids: np.ndarray  # int64 [n]
    times: np.ndarray  # float64 [n]
    src: np.ndarray  # int32 [n], codes into source_codes
    vecs: np.ndarray  # int8 [n, dim]
    inv_norms: np.ndarray  # float32 [n]: 1 / |vec| (int8 rounding moves norms off 127)
    bias: np.ndarray  # float32 [n]: the per-row hubness of image vectors (0 for caption embeddings)
    valid: np.ndarray  # bool [n] (shared: deletions clear entries in place)
    codes: np.ndarray | None  # uint64 [words, n] sign bits of (vec - center), or None when small
    center: np.ndarray  # float32 [dim], in int8 units
    source_codes: dict[str, int]

    def filter_mask(self, source: str | None, since: float | None, until: float | None,
                    time_of_day: tuple[int, int] | None = None) -> np.ndarray:
        mask = self.valid.copy()
        if source:
            code = self.source_codes.get(source)
            if code is None:
                return np.zeros_like(mask)
            mask &= self.src == code
        if since is not None:
            mask &= self.times >= float(since)
        if until is not None:
            mask &= self.times < float(until)
        if time_of_day is not None:
            rows = np.flatnonzero(mask)
            mask[rows] = in_time_of_day(minute_of_day(self.times[rows]), time_of_day)
        return mask


class VectorIndex:
    """The int8 vectors of one kind (caption embeddings or image vectors) with capture time/source.

    Loaded once, then updated incrementally: new captures by id (ids are never reused), changes and
    deletions from the store's change log (``Store.change_range``, ``Store.changed_since``). Readers get a snapshot of views; appends write past
    the snapshot's end and growth allocates new arrays, so a search never sees a half-written row.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "captions" | "images": which vectors of the store (see Store.vector_rows)
        self.lock = threading.Lock()
        self.loaded = False
        self.last_id = 0
        self.last_seq = 0
        self._reset(0)

    def _reset(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self.ids = np.zeros(0, np.int64)
        self.times = np.zeros(0, np.float64)
        self.src = np.zeros(0, np.int32)
        self.vecs = np.zeros((0, dim), np.int8)
        self.inv_norms = np.zeros(0, np.float32)
        self.bias = np.zeros(0, np.float32)
        self.valid = np.zeros(0, bool)
        self.codes: np.ndarray | None = None
        self.center = np.zeros(dim, np.float32)
        self.source_codes: dict[str, int] = {}
        self.n_invalid = 0

    def snapshot(self, store: Store) -> Snapshot:
        with self.lock:
            self._refresh(store)
            n = self.n
            return Snapshot(
                ids=self.ids[:n], times=self.times[:n], src=self.src[:n], vecs=self.vecs[:n],
                inv_norms=self.inv_norms[:n], bias=self.bias[:n],
                valid=self.valid[:n], codes=None if self.codes is None else self.codes[:, :n],
                center=self.center, source_codes=dict(self.source_codes),
            )

    # -- loading -------------------------------------------------------------------------------------

    def _refresh(self, store: Store) -> None:
        with store.reading():  # one read snapshot for the id, the change log and the rows below
            max_id = store.last_id()
            min_seq, max_seq = store.change_range()
            behind = max_seq > self.last_seq and min_seq > self.last_seq + 1  # log pruned past us
            if not self.loaded or behind or max_seq < self.last_seq or max_id < self.last_id:
                self._full_load(store)
            else:
                if max_seq > self.last_seq:
                    changed = store.changed_since(self.last_seq, self.last_id)
                    if changed:
                        self._invalidate(np.asarray(changed, np.int64))
                        self._append_rows(store.vector_rows(self.kind, ids=changed))
                if max_id > self.last_id:
                    self._append_rows(store.vector_rows(self.kind, after_id=self.last_id))
            self.last_id, self.last_seq = max_id, max_seq
        self.loaded = True
        if self.n_invalid > 1000 and self.n_invalid > self.n // 4:
            self._compact()

    def _full_load(self, store: Store) -> None:
        # Vectors and (id, time, source) in two scans: the vector table is narrow, and the
        # (source, time) index covers the metadata, so no full capture row is read.
        dim = store.vector_length(self.kind)
        self._reset(dim)
        if not dim:
            return
        id_parts, vec_parts, bias_parts = [], [], []
        for rows in store.vector_batches(self.kind, dim):
            id_parts.append(np.fromiter((r[0] for r in rows), np.int64, len(rows)))
            vec_parts.append(np.frombuffer(b"".join(r[1] for r in rows), np.int8).reshape(len(rows), dim))
            bias_parts.append(np.fromiter((r[2] or 0.0 for r in rows), np.float32, len(rows)))
        if not id_parts:
            return
        ids = np.concatenate(id_parts)
        vecs = np.concatenate(vec_parts)
        bias = np.concatenate(bias_parts)
        meta_ids, meta_times, meta_src = [], [], []
        for rows in store.capture_batches():
            meta_ids.append(np.fromiter((r[0] for r in rows), np.int64, len(rows)))
            meta_times.append(np.fromiter((r[1] for r in rows), np.float64, len(rows)))
            meta_src.append(np.fromiter((self._source_code(r[2]) for r in rows), np.int32, len(rows)))
        m_ids = np.concatenate(meta_ids)
        order = np.argsort(m_ids)
        m_ids = m_ids[order]
        pos = np.searchsorted(m_ids, ids)
        keep = (pos < m_ids.size) & (m_ids[np.minimum(pos, m_ids.size - 1)] == ids)  # orphan vectors
        pos = pos[keep]
        self._append(
            ids[keep], np.concatenate(meta_times)[order][pos], np.concatenate(meta_src)[order][pos], vecs[keep],
            bias[keep],
        )
        log.debug("search: loaded %d %s vectors", self.n, self.kind)

    def _source_code(self, source: str) -> int:
        code = self.source_codes.get(source)
        if code is None:
            code = self.source_codes[source] = len(self.source_codes)
        return code

    def _append_rows(self, rows: list[tuple[int, float, str, bytes, float]]) -> None:
        """Append (capture id, time, source, vector, bias) rows, by id."""
        if not rows:
            return
        if not self.dim:
            self._reset(len(rows[-1][3]))
        rows = [r for r in rows if len(r[3]) == self.dim]  # vectors of another model are skipped
        if not rows:
            return
        self._append(
            np.asarray([r[0] for r in rows], np.int64),
            np.asarray([r[1] for r in rows], np.float64),
            np.asarray([self._source_code(r[2]) for r in rows], np.int32),
            np.frombuffer(b"".join(r[3] for r in rows), np.int8).reshape(len(rows), self.dim),
            np.asarray([r[4] or 0.0 for r in rows], np.float32),
        )

    def _append(
        self, ids: np.ndarray, times: np.ndarray, src: np.ndarray, vecs: np.ndarray, bias: np.ndarray
    ) -> None:
        m = ids.size
        if self.n + m > self.ids.size:
            # Grow into new arrays (snapshots keep the old ones) and recompute the sign-bit codes
            # around the current mean, amortised O(1) per row.
            cap = max(1024, 2 * (self.n + m))
            n = self.n
            self.ids = _grow(self.ids, cap)
            self.times = _grow(self.times, cap)
            self.src = _grow(self.src, cap)
            self.valid = _grow(self.valid, cap)
            self.vecs = _grow(self.vecs, cap)
            self.inv_norms = _grow(self.inv_norms, cap)
            self.bias = _grow(self.bias, cap)
            self.bias[n : n + m] = bias
            self.ids[n : n + m], self.times[n : n + m], self.src[n : n + m] = ids, times, src
            self.vecs[n : n + m], self.valid[n : n + m] = vecs, True
            self.inv_norms[n : n + m] = _inv_norms(vecs)
            self.n = n + m
            self._recode()
            return
        n = self.n
        self.ids[n : n + m], self.times[n : n + m], self.src[n : n + m] = ids, times, src
        self.vecs[n : n + m], self.valid[n : n + m] = vecs, True
        self.inv_norms[n : n + m] = _inv_norms(vecs)
        self.bias[n : n + m] = bias
        if self.codes is not None:
            self.codes[:, n : n + m] = _sign_codes(vecs, self.center)
        self.n = n + m

    def _recode(self) -> None:
        n = self.n
        if n <= BINARY_ABOVE:
            self.codes = None
            self.center = np.zeros(self.dim, np.float32)
            return
        valid = self.vecs[:n][self.valid[:n]]
        self.center = valid.mean(axis=0, dtype=np.float64).astype(np.float32)
        codes = np.zeros(((self.dim + 63) // 64, self.ids.size), np.uint64)
        for s in range(0, n, 65536):
            codes[:, s : min(n, s + 65536)] = _sign_codes(self.vecs[s : min(n, s + 65536)], self.center)
        self.codes = codes

    def _invalidate(self, ids: np.ndarray) -> None:
        hit = np.isin(self.ids[: self.n], ids) & self.valid[: self.n]
        if hit.any():
            self.valid[: self.n][hit] = False  # in place: live snapshots stop returning them too
            self.n_invalid += int(hit.sum())

    def _compact(self) -> None:
        keep = self.valid[: self.n]
        ids, times, src, vecs = self.ids[: self.n][keep], self.times[: self.n][keep], self.src[: self.n][keep], \
            self.vecs[: self.n][keep]
        bias = self.bias[: self.n][keep]
        codes = self.source_codes
        self._reset(self.dim)
        self.source_codes = codes
        self._append(ids.copy(), times.copy(), src.copy(), vecs.copy(), bias.copy())


def _grow(arr: np.ndarray, cap: int) -> np.ndarray:
    out = np.zeros((cap, *arr.shape[1:]), arr.dtype)
    out[: min(arr.shape[0], cap)] = arr[:cap]
    return out


def _inv_norms(vecs: np.ndarray) -> np.ndarray:
    out = np.empty(vecs.shape[0], np.float32)
    for s in range(0, vecs.shape[0], 65536):
        block = vecs[s : s + 65536].astype(np.float32)
        out[s : s + 65536] = 1.0 / np.maximum(np.sqrt(np.einsum("ij,ij->i", block, block)), 1e-6)
    return out


def _sign_codes(vecs: np.ndarray, center: np.ndarray) -> np.ndarray:
    """[m, dim] int8 -> [words, m] uint64: bit j set when vec[j] > center[j]."""
    bits = np.packbits(vecs.astype(np.float32) > center, axis=1, bitorder="little")
    words = (vecs.shape[1] + 63) // 64
    padded = np.zeros((vecs.shape[0], words * 8), np.uint8)
    padded[:, : bits.shape[1]] = bits
    return np.ascontiguousarray(padded.view(np.uint64).T)


if hasattr(np, "bitwise_count"):  # numpy >= 2.0

    def _popcount(x: np.ndarray) -> np.ndarray:
        return np.bitwise_count(x)

else:  # pragma: no cover - numpy 1.x
    _POP8 = np.array([i.bit_count() for i in range(256)], np.uint8)

    def _popcount(x: np.ndarray) -> np.ndarray:
        return _POP8[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


def _smallest(dist: np.ndarray, m: int) -> np.ndarray:
    """Positions of (about) the ``m`` smallest small-integer distances, in position order.

    Hamming distances take few values, so a histogram finds the cut-off in one pass: ~2 ms over a
    million rows where argpartition takes ~9 ms. Ties at the cut-off are kept up to ``m`` in all.
    """
    cum = np.cumsum(np.bincount(dist))
    cut = int(np.searchsorted(cum, m))  # the smallest distance with at least m rows at or below it
    cand = np.flatnonzero(dist <= cut)
    if cand.size > m:
        below = np.flatnonzero(dist < cut)
        cand = np.sort(np.concatenate([below, np.flatnonzero(dist == cut)[: m - below.size]]))
    return cand


def nearest(
    snap: Snapshot, query: np.ndarray, mask: np.ndarray, limit: int, min_sim: float
) -> list[tuple[int, float, float]]:
    """(capture id, cosine, time) of the ``limit`` nearest valid rows under ``mask``, best first."""
    cand, sims = nearest_rows(snap, query, mask, limit, min_sim)
    times = snap.times[cand]
    return [(int(snap.ids[c]), float(s), float(t)) for c, s, t in zip(cand, sims, times)]


def nearest_rows(
    snap: Snapshot, query: np.ndarray, mask: np.ndarray, limit: int, min_sim: float, bias_weight: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(row positions, scores) of the ``limit`` best valid rows under ``mask``, best first.

    score = cosine - bias_weight * the row's bias (the hubness correction of image vectors)."""
    cand = np.flatnonzero(mask)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
    if cand.size == 0 or limit <= 0:
        return empty
    q = np.asarray(query, np.float32).reshape(-1)
    if q.size != snap.vecs.shape[1]:
        return empty
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    if snap.codes is not None and cand.size > RERANK:
        # Prefilter: Hamming distance of sign bits around the mean, over contiguous uint64 rows.
        qcode = _sign_codes(np.rint(q * 127).astype(np.int8)[None, :], snap.center)[:, 0]
        dist = np.zeros(snap.codes.shape[1], np.uint16)
        for w in range(snap.codes.shape[0]):
            dist += _popcount(snap.codes[w] ^ qcode[w])
        dist[~mask] = np.iinfo(np.uint16).max
        cand = _smallest(dist, RERANK)
        cand = cand[mask[cand]]
    # einsum, not @: a matrix-vector product this small is faster single-threaded, and OpenBLAS's
    # thread pool, woken per call from several server threads on a busy 2-core Pi, costs 10+ ms.
    sims = np.einsum("ij,j->i", snap.vecs[cand].astype(np.float32), q) * snap.inv_norms[cand]
    if bias_weight:
        sims = sims - bias_weight * snap.bias[cand]
    good = sims >= min_sim
    cand, sims = cand[good], sims[good]
    if cand.size > limit:
        part = np.argpartition(-sims, limit - 1)[:limit]
        cand, sims = cand[part], sims[part]
    order = np.lexsort((-snap.ids[cand], -snap.times[cand], -sims))
    return cand[order], sims[order]


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
