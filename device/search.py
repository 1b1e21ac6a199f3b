"""The one ranking used by the web page, the JSON API and the CLI.

``search()`` fuses two rankings with reciprocal rank fusion (RRF):

- keyword: FTS5 BM25 over the caption (weight 1) and the other beams (weight 0.35). The query is never
  passed to FTS5 as syntax: it is split into lower-case words, stop-words are dropped, each remaining
  word is quoted (plus its singular/plural forms found in the index, or its spelling correction), and
  the terms are OR-ed so that BM25 ranks captions matching more of them first.
- semantic: cosine similarity between the query's embedding and the stored int8 caption embeddings,
  computed in memory (see ``_VectorIndex``), with a similarity floor so that noise is not returned.

Why RRF rather than mixing raw scores: BM25 scores are unbounded and depend on the corpus, cosines of
MiniLM live in a narrow band; ranks are comparable without tuning per store. Ties (equal fused score,
e.g. captions of equal length for a one-word query) are broken newest first.

With the trained image projection (models/image-projection, see device/image_projection.py) the
stored image vectors live in the text embedder's space and a third ranking joins: the query against
the images themselves (hubness-corrected). Then the rankings are fused by weighted *scores* (image
score + weighted caption cosine + weighted BM25 relative to the best match), because the image
similarity is the strongest signal and rank fusion would throw its margins away. Weights were
chosen on Flickr8k dev by ``python -m converters.retrieval`` (docs/retrieval.md).

Object tags (device/tagger.py) join every mode as one more ranking: captures tagged with a query word
(or its singular/plural, or two adjacent query words: "teddy bear"), by the tag's confidence shared out
over the query's words (see ``_tag_hits``). A tag is the classifier's word for the whole photo, so a
confident one is strong evidence about a short query; it is what finds the cat whose caption says "a
man in a red shirt".
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import textnorm
from .store import (
    Store,
    decode_embedding,
    encode_image_vector,
    filter_sql,
    in_time_of_day,
    minute_of_day,
)

log = logging.getLogger(__name__)

RRF_K = 60  # the usual RRF constant: rank 1 scores 1/61, rank 60 half that
CANDIDATES = 200  # per ranking, before fusion (at least k)
MIN_SIMILARITY = 0.25  # cosine floor for semantic hits when the query has content words
MIN_SIMILARITY_NO_WORDS = 0.5  # ... and when it has none ("the", "a of"): only strong matches
RERANK = 2_000  # vectors scored exactly per query; beyond that, a sign-bit Hamming prefilter picks them
BINARY_ABOVE = RERANK  # keep sign-bit codes once the index is larger than this
MAX_QUERY_CHARS = 1000
KEYWORD_WEIGHTS = (1.0, 0.35)  # bm25 column weights: caption, other beams
KEYWORD_WINDOW = 10_000  # newest captures searched by OR-ed keywords first (see _keyword)



@dataclass(frozen=True)
class Ranking:
    """The parts that rank a text query and their weights (the retrieval benchmark varies these)."""

    keyword: bool = True  # FTS5 / BM25
    captions: bool = True  # query embedding vs caption embeddings
    images: bool = True  # query embedding vs projected image vectors (when the store has them)
    alt_weight: float = KEYWORD_WEIGHTS[1]  # BM25 weight of the other beams (0: best caption only)
    # score fusion (used when the image ranking takes part)
    # Chosen on Flickr8k dev (python -m converters retrieval --split dev --tune; docs/retrieval.md):
    # generated captions add little next to the image vectors; BM25 weights above 0.02 hurt full
    # captions, 0 to 0.02 measured the same. 0.02, not 0: BM25 must run anyway so that a one-word
    # query returns every capture whose caption says the word (MiniLM puts "man" further than 0.25
    # from "a man in a red shirt is standing on a sidewalk"), and among them those come first.
    image_weight: float = 1.0
    caption_weight: float = 0.05
    keyword_weight: float = 0.02
    # A capture is returned only when its caption matches a keyword, its caption embedding is at least
    # MIN_SIMILARITY from the query, or its image score (cosine minus the hubness correction) at least
    # image_floor: image scores rank, but a nonsense query must not list the store. Measured on
    # Flickr8k dev (python -m bench.nonsense, docs/retrieval.md): with 0.1 full-caption R@1 / R@10
    # are those of no floor (21.0 / 62.2), short queries lose 0.2 / 0.7 points, and 5% of random
    # letter strings return anything (a plain cosine floor of 0.1 let every photo near a "hub" through
    # for any text: issue 14, "xylophone quartet zzqx" listed 6 of the 9 sample photos). 0.12 and
    # up cost full-caption recall.
    image_floor: float = 0.1
    hub_weight: float | None = None  # hubness correction of image scores; None: the projection's
    # Added x the tag score (_tag_hits). Chosen on Flickr8k dev (docs/retrieval.md): 0 to 0.15 measured
    # the same for full captions and short queries, 0.25 cost 0.6 R@1; 0.15 is the largest that costs
    # nothing there, and what lifts a photo tagged "cup" above the others for the query "cup".
    tags: bool = True
    tag_weight: float = 0.15


SHIPPED = Ranking()

NO_EMBEDDER = "Keyword search only: no text embedder available"
EMBEDDER_FAILED = "Keyword search only: the text embedder failed"


@dataclass
class SearchResult:
    items: list[dict[str, Any]]
    mode: str  # "hybrid" | "keyword" | "recent"
    notice: str | None = None
    corrections: dict[str, str] = field(default_factory=dict)  # query word -> word searched instead


# ---------------------------------------------------------------------------------------------------
# In-memory vector index per store


@dataclass
class _Snapshot:
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


class _VectorIndex:
    """The int8 vectors of one table (``embeddings`` or ``image_vectors``) with capture time/source.

    Loaded once, then updated incrementally: new captures by id (ids are never reused), changes and
    deletions from the ``capture_changes`` log. Readers get a snapshot of views; appends write past
    the snapshot's end and growth allocates new arrays, so a search never sees a half-written row.
    """

    def __init__(self, table: str, bias_column: str | None = None) -> None:
        self.table = table
        self.bias_column = bias_column  # a REAL column loaded alongside the vector, or None
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

    def snapshot(self, store: Store) -> _Snapshot:
        with self.lock:
            self._refresh(store)
            n = self.n
            return _Snapshot(
                ids=self.ids[:n], times=self.times[:n], src=self.src[:n], vecs=self.vecs[:n],
                inv_norms=self.inv_norms[:n], bias=self.bias[:n],
                valid=self.valid[:n], codes=None if self.codes is None else self.codes[:, :n],
                center=self.center, source_codes=dict(self.source_codes),
            )

    # -- loading -------------------------------------------------------------------------------------

    def _refresh(self, store: Store) -> None:
        conn = store.connection()
        conn.execute("BEGIN")  # one read snapshot for the id, log and row queries below
        try:
            max_id = conn.execute("SELECT coalesce(max(id), 0) FROM captures").fetchone()[0]
            max_seq = conn.execute("SELECT coalesce(max(seq), 0) FROM capture_changes").fetchone()[0]
            min_seq = conn.execute("SELECT coalesce(min(seq), 0) FROM capture_changes").fetchone()[0]
            behind = max_seq > self.last_seq and min_seq > self.last_seq + 1  # log pruned past us
            if not self.loaded or behind or max_seq < self.last_seq or max_id < self.last_id:
                self._full_load(conn)
            else:
                if max_seq > self.last_seq:
                    changed = [
                        r[0]
                        for r in conn.execute(
                            "SELECT DISTINCT capture_id FROM capture_changes WHERE seq > ? AND capture_id <= ?",
                            (self.last_seq, self.last_id),
                        )
                    ]
                    if changed:
                        self._invalidate(np.asarray(changed, np.int64))
                        for chunk in range(0, len(changed), 500):
                            ids = changed[chunk : chunk + 500]
                            self._append_rows(conn, f"v.capture_id IN ({','.join('?' * len(ids))})", ids)
                if max_id > self.last_id:
                    self._append_rows(conn, "v.capture_id > ?", [self.last_id])
            self.last_id, self.last_seq = max_id, max_seq
        finally:
            conn.execute("COMMIT")
        self.loaded = True
        if self.n_invalid > 1000 and self.n_invalid > self.n // 4:
            self._compact()

    def _full_load(self, conn: Any) -> None:
        # Vectors and (id, time, source) in two scans: the vector table is narrow, and the
        # (source, time) index covers the metadata, so no full capture row is read.
        row = conn.execute(
            f"SELECT length(vector) FROM {self.table} ORDER BY capture_id DESC LIMIT 1"
        ).fetchone()
        dim = int(row[0]) if row else 0
        self._reset(dim)
        if not dim:
            return
        id_parts, vec_parts, bias_parts = [], [], []
        cur = conn.execute(
            f"SELECT capture_id, vector, {self.bias_column or 0} FROM {self.table} WHERE length(vector) = ?", (dim,)
        )
        while rows := cur.fetchmany(20_000):
            id_parts.append(np.fromiter((r[0] for r in rows), np.int64, len(rows)))
            vec_parts.append(np.frombuffer(b"".join(r[1] for r in rows), np.int8).reshape(len(rows), dim))
            bias_parts.append(np.fromiter((r[2] or 0.0 for r in rows), np.float32, len(rows)))
        if not id_parts:
            return
        ids = np.concatenate(id_parts)
        vecs = np.concatenate(vec_parts)
        bias = np.concatenate(bias_parts)
        meta_ids, meta_times, meta_src = [], [], []
        cur = conn.execute("SELECT id, time, source FROM captures INDEXED BY captures_source_time")
        while rows := cur.fetchmany(50_000):
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
        log.debug("search: loaded %d vectors from %s", self.n, self.table)

    def _source_code(self, source: str) -> int:
        code = self.source_codes.get(source)
        if code is None:
            code = self.source_codes[source] = len(self.source_codes)
        return code

    def _append_rows(self, conn: Any, where: str, args: list[Any]) -> None:
        rows = conn.execute(
            f"""SELECT v.capture_id, c.time, c.source, v.vector, {"v." + self.bias_column if self.bias_column else 0}
                FROM {self.table} v
                JOIN captures c ON c.id = v.capture_id WHERE {where} ORDER BY v.capture_id""",
            args,
        ).fetchall()
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


def _nearest(
    snap: _Snapshot, query: np.ndarray, mask: np.ndarray, limit: int, min_sim: float
) -> list[tuple[int, float, float]]:
    """(capture id, cosine, time) of the ``limit`` nearest valid rows under ``mask``, best first."""
    cand, sims = _nearest_rows(snap, query, mask, limit, min_sim)
    times = snap.times[cand]
    return [(int(snap.ids[c]), float(s), float(t)) for c, s, t in zip(cand, sims, times)]


def _nearest_rows(
    snap: _Snapshot, query: np.ndarray, mask: np.ndarray, limit: int, min_sim: float, bias_weight: float = 0.0
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


# ---------------------------------------------------------------------------------------------------
# Vocabulary (for spelling correction and singular/plural forms)


class _Vocabulary:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.last_id = -1

    def get(self, store: Store) -> dict[str, int]:
        with self.lock:
            conn = store.connection()
            if self.last_id < 0:
                conn.execute("BEGIN")
                try:
                    self.last_id = conn.execute("SELECT coalesce(max(id), 0) FROM captures").fetchone()[0]
                    self.counts = {r[0]: r[1] for r in conn.execute("SELECT term, doc FROM captures_fts_vocab")}
                finally:
                    conn.execute("COMMIT")
            else:
                # New captures only; counts of deleted captures linger, which at worst corrects a
                # word to one that no longer finds anything.
                rows = conn.execute(
                    "SELECT id, caption, alt_text FROM captures WHERE id > ? ORDER BY id", (self.last_id,)
                ).fetchall()
                if rows:
                    textnorm.count_words((f"{r[1]} {r[2]}" for r in rows), self.counts)
                    self.last_id = rows[-1][0]
            return self.counts


class _Caches:
    def __init__(self) -> None:
        self.embeddings = _VectorIndex("embeddings")
        self.images = _VectorIndex("image_vectors", bias_column="hub")
        self.vocab = _Vocabulary()


_caches: weakref.WeakKeyDictionary[Store, _Caches] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def _caches_for(store: Store) -> _Caches:
    with _caches_lock:
        c = _caches.get(store)
        if c is None:
            c = _caches[store] = _Caches()
        return c


def warm(store: Store) -> None:
    """Load the caches now (at server start) instead of on the first search."""
    caches = _caches_for(store)
    caches.embeddings.snapshot(store)
    caches.images.snapshot(store)
    caches.vocab.get(store)


# ---------------------------------------------------------------------------------------------------
# Query parsing


def _expand_terms(
    words: list[str], vocab: dict[str, int], known: Any = None
) -> tuple[list[list[str]], dict[str, str]]:
    """One group of FTS terms per query word: the forms present in the index, else the spelling
    correction's forms, else the word itself (which then matches nothing).

    ``known(word)``, when given, says the word is a real word (the embedder knows it whole): it is
    then not "corrected" just because no caption uses it. Generated captions use a few hundred
    words, so "tan" would become "man" and the query's embedding would lose its meaning (measured
    on Flickr8k dev: image-ranking R@1 19.6 with such corrections, 20.8 without).
    """
    groups: list[list[str]] = []
    corrections: dict[str, str] = {}
    for w in words:
        forms = sorted(f for f in textnorm.inflections(w) if f in vocab)
        if not forms and known is not None and known(w):
            forms = [w]
        if not forms:
            fixed = textnorm.correct(w, vocab)
            if fixed:
                corrections[w] = fixed
                forms = sorted(f for f in textnorm.inflections(fixed) if f in vocab) or [fixed]
            else:
                forms = [w]
        if forms not in groups:
            groups.append(forms)
    return groups, corrections


_whole_words: dict[tuple[int, str], bool] = {}


def _whole_word_checker(embedder: Any) -> Any:
    """``word -> bool``: the embedder's tokenizer has the word as one token ([CLS] word [SEP]), i.e.
    it is a real word, not a typo; None when the embedder has no tokenizer to ask."""
    token_ids = getattr(embedder, "token_ids", None)
    if token_ids is None:
        return None

    def known(word: str) -> bool:
        key = (id(embedder), word)
        hit = _whole_words.get(key)
        if hit is None:
            try:
                hit = len(token_ids(word)) == 3
            except Exception:  # a tokenizer problem must not break search
                hit = False
            if len(_whole_words) > 100_000:
                _whole_words.clear()
            _whole_words[key] = hit
        return hit

    return known


def fts_query(groups: list[list[str]], op: str = "OR") -> str:
    """Quoted terms, forms of one word OR-ed, words joined by ``op``: the user's text is never syntax."""
    def quote(t: str) -> str:
        return '"' + t.replace('"', '""') + '"'

    return f" {op} ".join("(" + " OR ".join(quote(t) for t in g) + ")" for g in groups)


def _keyword(
    store: Store, groups: list[list[str]], limit: int, source: str | None, since: float | None,
    until: float | None, alt_weight: float = KEYWORD_WEIGHTS[1], time_of_day: tuple[int, int] | None = None,
) -> list[tuple[int, float, float]]:
    """(id, bm25 (lower is better), time), best first, newest first among equal scores.

    BM25 costs about a microsecond per matching caption, so OR-ing frequent words ("man", "runs")
    over a million captures would cost a second. So:
    - captions containing *all* the words (AND, cheap: FTS5 intersects doclists) come from the whole
      store; they are the best BM25 matches anyway;
    - the OR query runs over the newest captures only, in windows growing x4 from KEYWORD_WINDOW
      (rowid ranges, applied inside the index) until it has ``limit`` matches or covers the store.
      A frequent word stops in a small window; a rare one widens cheaply because it is rare.
    Older partial matches still reach the results through the semantic ranking, which covers all.
    """
    if not groups:
        return []
    conn = store.connection()
    where, args = filter_sql(source, since, until, table="c", time_of_day=time_of_day)
    w_caption, w_alt = KEYWORD_WEIGHTS[0], float(alt_weight)
    if where:
        sql = f"""SELECT captures_fts.rowid, bm25(captures_fts, {w_caption}, {w_alt}) AS s
                  FROM captures_fts JOIN captures c ON c.id = captures_fts.rowid
                  {where} AND captures_fts MATCH ? AND captures_fts.rowid > ? AND captures_fts.rowid <= ?
                  ORDER BY s, captures_fts.rowid DESC LIMIT ?"""
    else:
        sql = f"""SELECT rowid, bm25(captures_fts, {w_caption}, {w_alt}) AS s FROM captures_fts
                  WHERE captures_fts MATCH ? AND rowid > ? AND rowid <= ? ORDER BY s, rowid DESC LIMIT ?"""
    scores: dict[int, float] = {}
    if len(groups) > 1:
        for rid, score in conn.execute(sql, (*args, fts_query(groups, "AND"), 0, 2**62, limit)):
            scores[rid] = score
    # Disjoint windows (floor, ceiling], newest first: a query that ends up covering the whole store
    # (a rare word, a filter that excludes most captures) reads each match once.
    ceiling = conn.execute("SELECT coalesce(max(id), 0) FROM captures").fetchone()[0]
    window, found = KEYWORD_WINDOW, 0
    while ceiling > 0 and found < limit:
        floor = max(0, ceiling - window)
        for rid, score in conn.execute(sql, (*args, fts_query(groups, "OR"), floor, ceiling, limit)):
            found += rid not in scores
            scores[rid] = score
        ceiling, window = floor, window * 4
    if not scores:
        return []
    # Ties at equal BM25 were cut newest-inserted first above; order them by capture time here.
    ids = list(scores)
    times = dict(conn.execute(
        f"SELECT id, time FROM captures WHERE id IN ({','.join('?' * len(ids))})", ids).fetchall())
    out = [(int(i), float(scores[i]), float(times.get(i, 0.0))) for i in ids]
    out.sort(key=lambda x: (x[1], -x[2], -x[0]))
    return out[:limit]


# ---------------------------------------------------------------------------------------------------


def search(
    store: Store,
    query: str | None,
    *,
    k: int = 20,
    embedder: Any = None,
    source: str | None = None,
    since: float | None = None,
    until: float | None = None,
    ranking: Ranking | None = None,
    time_of_day: tuple[int, int] | None = None,
) -> SearchResult:
    """Rank captures for ``query``; newest captures when the query is empty. Never raises on input.

    ``time_of_day``: (first, end) minute of the local day, e.g. (8 * 60, 12 * 60); see filter_sql."""
    k = max(1, min(int(k), 1000))
    rk = ranking or SHIPPED
    text = (query or "").strip()[:MAX_QUERY_CHARS]
    if not text:
        return SearchResult(store.recent(k, source=source, since=since, until=until, time_of_day=time_of_day),
                            "recent")

    caches = _caches_for(store)
    words = textnorm.content_words(text)
    known = _whole_word_checker(embedder)
    groups, corrections = _expand_terms(words, caches.vocab.get(store), known) if words else ([], {})
    limit = max(CANDIDATES, k)

    notices: list[str] = []
    semantic: list[tuple[int, float, float]] | None = None
    images: list[tuple[int, float, float]] | None = None
    if embedder is None:
        notices.append(NO_EMBEDDER)
    elif rk.captions or rk.images:
        embed_text = text
        if corrections:
            embed_text = " ".join(corrections.get(w, w) for w in textnorm.words(text))
        try:
            qvec = np.asarray(embedder.embed([embed_text])[0], np.float32)
        except Exception:  # a broken model must not break search; keyword results still come back
            log.warning("search: the text embedder failed; keyword results only", exc_info=True)
            notices.append(EMBEDDER_FAILED)
        else:
            # Images only for queries with content words: "the" is about nothing, and every image
            # has *some* similarity to it.
            if rk.images and words:
                images = _image_hits(store, caches, qvec, limit, source, since, until, rk, time_of_day)
            if rk.captions:
                snap = caches.embeddings.snapshot(store)
                floor = MIN_SIMILARITY if words else MIN_SIMILARITY_NO_WORDS
                if images is not None:
                    floor = -math.inf  # score fusion needs the caption score of the image candidates too
                mask = snap.filter_mask(source, since, until, time_of_day)
                semantic = _nearest(snap, qvec, mask, limit, floor)
            elif images is None:
                semantic = []
    if corrections:
        shown = ", ".join(f"{a} → {b}" for a, b in corrections.items())
        notices.insert(0, f"Also searched for corrected spelling: {shown}")

    keyword: list[tuple[int, float, float]] = []
    # With the image ranking and a zero BM25 weight (not the default), keywords would only decide
    # which captures may be returned, and BM25 is the slowest part of a query, so it is skipped.
    if rk.keyword and not (images is not None and rk.keyword_weight == 0):
        keyword = _keyword(store, groups, limit, source, since, until, rk.alt_weight, time_of_day)

    tagged = _tag_hits(store, words, limit, source, since, until, time_of_day) if rk.tags and words else []

    if images is not None:
        ranked = _fuse_scores(keyword, semantic or [], images, tagged, rk)
        mode = "hybrid"
    elif semantic is None:
        ranked = _fuse(keyword, tagged) if tagged else [(cid, -score, t) for cid, score, t in keyword]
        mode = "keyword"
    else:
        ranked = _fuse(keyword, semantic, tagged)
        mode = "hybrid"
    top = ranked[:k]
    items = store.get_many([cid for cid, _, _ in top])
    scores = {cid: s for cid, s, _ in top}
    for item in items:
        item["rank_score"] = scores[item["id"]]
    return SearchResult(items, mode, " ".join(notices) or None, corrections)


def _tag_hits(
    store: Store, words: list[str], limit: int, source: str | None, since: float | None, until: float | None,
    time_of_day: tuple[int, int] | None,
) -> list[tuple[int, float, float]]:
    """(id, score, time) of the captures tagged with query words, best first. A capture's score is the
    confidence of its tags for the query's words (each word's singular/plural, or two adjacent words:
    "teddy bear"), summed and divided by the number of query words: "cat" alone is all about the cat,
    "a cat on a red sofa" only a third."""
    groups = [sorted(textnorm.inflections(w)) for w in words] + [[f"{a} {b}"] for a, b in zip(words, words[1:])]
    scores: dict[int, float] = {}
    times: dict[int, float] = {}
    for forms in groups:
        for cid, p, t in store.tagged(forms, limit, source, since, until, time_of_day):
            scores[cid] = scores.get(cid, 0.0) + p
            times[cid] = t
    ranked = sorted(((cid, s / len(words), times[cid]) for cid, s in scores.items()),
                    key=lambda x: (-x[1], -x[2], -x[0]))
    return ranked[:limit]


def _image_hits(
    store: Store, caches: _Caches, qvec: np.ndarray, limit: int, source: str | None, since: float | None,
    until: float | None, rk: Ranking,
    time_of_day: tuple[int, int] | None = None,
) -> list[tuple[int, float, float, bool]] | None:
    """(id, hubness-corrected score, time, score >= image_floor) of the images nearest the query,
    or None when the store has no projection or its image vectors are not in the text space (e.g.
    the random projection)."""
    proj = getattr(store, "image_projection", None)
    if proj is None:
        return None
    snap = caches.images.snapshot(store)
    if snap.vecs.shape[0] == 0 or snap.vecs.shape[1] != proj.dim:
        return None
    q = qvec / max(float(np.linalg.norm(qvec)), 1e-12)
    hub = proj.hub_weight if rk.hub_weight is None else rk.hub_weight
    mask = snap.filter_mask(source, since, until, time_of_day)
    rows, sims = _nearest_rows(snap, q, mask, limit, -math.inf, bias_weight=hub)
    # The floor is on the corrected score: a hub image is close to every text, nonsense included.
    return [(int(snap.ids[r]), float(s), float(snap.times[r]), bool(s >= rk.image_floor))
            for r, s in zip(rows, sims)]


def _fuse_scores(
    keyword: list[tuple[int, float, float]], semantic: list[tuple[int, float, float]],
    images: list[tuple[int, float, float, bool]], tagged: list[tuple[int, float, float]], rk: Ranking,
) -> list[tuple[int, float, float]]:
    """Weighted score fusion -> (id, fused score (higher is better), time), best first.

    fused = image score + caption_weight * caption cosine + keyword_weight * BM25 / best BM25
            + tag_weight * tag confidence.
    Image scores and caption cosines are both similarities to the same query vector, so they add
    without per-query normalisation (z-scores were tried: with few candidates they turn one strong
    caption match into noise). A capture missing from a ranking gets that ranking's last score: it
    was not among its best ``limit``, so at most that good.
    """
    times: dict[int, float] = {cid: t for cid, _, t in keyword}
    times.update((cid, t) for cid, s, t in semantic if s >= MIN_SIMILARITY)
    times.update((cid, t) for cid, _, t, near in images if near)  # only these may be returned
    times.update((cid, t) for cid, _, t in tagged)
    tag = {cid: p for cid, p, _ in tagged}
    img = {cid: s for cid, s, _, _ in images}
    img_absent = images[-1][1] if images else 0.0
    cap = {cid: s for cid, s, _ in semantic}
    cap_absent = semantic[-1][1] if semantic else 0.0
    best_bm25 = min((s for _, s, _ in keyword), default=-1.0)
    kw = {cid: (s / best_bm25 if best_bm25 < 0 else 0.0) for cid, s, _ in keyword}  # best match = 1
    w_img, w_cap, w_kw = rk.image_weight, rk.caption_weight, rk.keyword_weight
    fused = [
        (cid, w_img * img.get(cid, img_absent) + w_cap * cap.get(cid, cap_absent) + w_kw * kw.get(cid, 0.0)
         + rk.tag_weight * tag.get(cid, 0.0), t)
        for cid, t in times.items()
    ]
    fused.sort(key=lambda x: (-x[1], -x[2], -x[0]))
    return fused


def _fuse(*rankings: list[tuple[int, float, float]]) -> list[tuple[int, float, float]]:
    """Reciprocal rank fusion -> (id, fused score (higher is better), time), best first."""
    fused: dict[int, float] = {}
    times: dict[int, float] = {}
    for ranking in rankings:
        for rank, (cid, _, t) in enumerate(ranking, start=1):
            fused[cid] = fused.get(cid, 0.0) + 1.0 / (RRF_K + rank)
            times[cid] = t
    # Equal scores (e.g. equal BM25 in one list, absent from the other): newest first.
    return sorted(((c, s, times[c]) for c, s in fused.items()), key=lambda x: (-x[1], -x[2], -x[0]))


def similar(store: Store, capture_id: int, k: int = 12) -> list[dict[str, Any]]:
    """Captures whose image vectors are closest to this capture's (cosine), excluding itself."""
    row = store.connection().execute(
        "SELECT vector FROM image_vectors WHERE capture_id = ?", (int(capture_id),)
    ).fetchone()
    if row is None:
        return []
    return _by_image_vector(store, decode_embedding(row[0]), k, exclude=int(capture_id))


def search_by_vector(store: Store, vec: Any, k: int = 12) -> list[dict[str, Any]]:
    """Captures closest to raw image features (the captioner's float32 [1280] image_vector)."""
    blob = encode_image_vector(vec, getattr(store, "image_projection", None))
    return _by_image_vector(store, decode_embedding(blob), k, exclude=None)


def _by_image_vector(store: Store, q: np.ndarray, k: int, exclude: int | None) -> list[dict[str, Any]]:
    k = max(1, min(int(k), 1000))
    snap = _caches_for(store).images.snapshot(store)
    mask = snap.valid.copy()
    if exclude is not None:
        mask &= snap.ids != exclude
    hits = _nearest(snap, q, mask, k, -1.0)
    items = store.get_many([cid for cid, _, _ in hits])
    sims = {cid: s for cid, s, _ in hits}
    for item in items:
        item["rank_score"] = sims[item["id"]]
    return items
