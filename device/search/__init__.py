"""The one ranking used by the web page, the JSON API and the CLI.

``search()`` fuses two rankings with reciprocal rank fusion (RRF):

- keyword: FTS5 BM25 over the caption (weight 1) and the other beams (weight 0.35). The query is never
  passed to FTS5 as syntax: it is split into lower-case words, stop-words are dropped, each remaining
  word is quoted (plus its singular/plural forms found in the index, or its spelling correction), and
  the terms are OR-ed so that BM25 ranks captions matching more of them first.
- semantic: cosine similarity between the query's embedding and the stored int8 caption embeddings,
  computed in memory (see ``index.VectorIndex``), with a similarity floor so that noise is not returned.

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
over the query's words (see ``keywords.tag_hits``). A tag is the classifier's word for the whole photo, so a
confident one is strong evidence about a short query; it is what finds the cat whose caption says "a
man in a red shirt".

The package: ``ranking.py`` (the weights and the two fusions), ``index.py`` (the in-memory vector
index), ``keywords.py`` (vocabulary, spelling, BM25 and tag rankings), ``textnorm.py`` (how text is
split into words, as FTS5 does). Everything reads the store through its methods (device/store_index.py),
never its tables.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from device.search import textnorm
from device.search.index import VectorIndex, nearest, nearest_rows
from device.search.keywords import Vocabulary, expand_terms, keyword_hits, tag_hits, whole_word_checker
from device.search.ranking import MIN_SIMILARITY, MIN_SIMILARITY_NO_WORDS, SHIPPED, Ranking, fuse, fuse_scores
from device.store import Store
from device.vectors import decode_embedding, encode_image_vector

__all__ = ["EMBEDDER_FAILED", "NO_EMBEDDER", "SHIPPED", "Ranking", "SearchResult", "search", "search_by_vector",
           "similar", "warm"]

log = logging.getLogger(__name__)

CANDIDATES = 200  # per ranking, before fusion (at least k)
MAX_QUERY_CHARS = 1000

NO_EMBEDDER = "Keyword search only: no text embedder available"
EMBEDDER_FAILED = "Keyword search only: the text embedder failed"


@dataclass
class SearchResult:
    items: list[dict[str, Any]]
    mode: str  # "hybrid" | "keyword" | "recent"
    notice: str | None = None
    corrections: dict[str, str] = field(default_factory=dict)  # query word -> word searched instead


# ---------------------------------------------------------------------------------------------------
# The caches of one store (vectors and vocabulary), made on first use


class _Caches:
    def __init__(self) -> None:
        self.embeddings = VectorIndex("captions")
        self.images = VectorIndex("images")
        self.vocab = Vocabulary()


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
# Queries


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

    ``time_of_day``: (first, end) minute of the local day, e.g. (8 * 60, 12 * 60); see
    device/store_index.py: filter_sql."""
    k = max(1, min(int(k), 1000))
    rk = ranking or SHIPPED
    text = (query or "").strip()[:MAX_QUERY_CHARS]
    if not text:
        return SearchResult(store.recent(k, source=source, since=since, until=until, time_of_day=time_of_day),
                            "recent")

    caches = _caches_for(store)
    words = textnorm.content_words(text)
    known = whole_word_checker(embedder)
    groups, corrections = expand_terms(words, caches.vocab.get(store), known) if words else ([], {})
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
                semantic = nearest(snap, qvec, mask, limit, floor)
            elif images is None:
                semantic = []
    if corrections:
        shown = ", ".join(f"{a} → {b}" for a, b in corrections.items())
        notices.insert(0, f"Also searched for corrected spelling: {shown}")

    keyword: list[tuple[int, float, float]] = []
    # With the image ranking and a zero BM25 weight (not the default), keywords would only decide
    # which captures may be returned, and BM25 is the slowest part of a query, so it is skipped.
    if rk.keyword and not (images is not None and rk.keyword_weight == 0):
        keyword = keyword_hits(store, groups, limit, source, since, until, rk.alt_weight, time_of_day)

    tagged = tag_hits(store, words, limit, source, since, until, time_of_day) if rk.tags and words else []

    if images is not None:
        ranked = fuse_scores(keyword, semantic or [], images, tagged, rk)
        mode = "hybrid"
    elif semantic is None:
        ranked = fuse(keyword, tagged) if tagged else [(cid, -score, t) for cid, score, t in keyword]
        mode = "keyword"
    else:
        ranked = fuse(keyword, semantic, tagged)
        mode = "hybrid"
    top = ranked[:k]
    items = store.get_many([cid for cid, _, _ in top])
    scores = {cid: s for cid, s, _ in top}
    for item in items:
        item["rank_score"] = scores[item["id"]]
    return SearchResult(items, mode, " ".join(notices) or None, corrections)


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
    rows, sims = nearest_rows(snap, q, mask, limit, -math.inf, bias_weight=hub)
    # The floor is on the corrected score: a hub image is close to every text, nonsense included.
    return [(int(snap.ids[r]), float(s), float(snap.times[r]), bool(s >= rk.image_floor))
            for r, s in zip(rows, sims)]


def similar(store: Store, capture_id: int, k: int = 12) -> list[dict[str, Any]]:
    """Captures whose image vectors are closest to this capture's (cosine), excluding itself."""
    blob = store.image_vector(capture_id)
    if blob is None:
        return []
    return _by_image_vector(store, decode_embedding(blob), k, exclude=int(capture_id))


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
    hits = nearest(snap, q, mask, k, -1.0)
    items = store.get_many([cid for cid, _, _ in hits])
    sims = {cid: s for cid, s, _ in hits}
    for item in items:
        item["rank_score"] = sims[item["id"]]
    return items
