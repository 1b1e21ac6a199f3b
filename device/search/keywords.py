"""Keywords: the query's words, their forms in the index, spelling, and the BM25 and tag rankings.

The query is never passed to FTS5 as syntax: it is split into lower-case words (textnorm.py), stop-words
are dropped, each remaining word is quoted (plus its singular/plural forms found in the index, or its
spelling correction), and the terms are OR-ed so that BM25 ranks captions matching more of them first.
The vocabulary for those forms and corrections is read once per process and then grows with each
new capture. Object tags rank like one more keyword index: captures tagged with a query word.
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from device.search import textnorm

if TYPE_CHECKING:
    from device.store import Store

log = logging.getLogger("device.search")

KEYWORD_WEIGHTS = (1.0, 0.35)  # bm25 column weights: caption, other beams
KEYWORD_WINDOW = 10_000  # newest captures searched by OR-ed keywords first (see keyword_hits)


class Vocabulary:
    """Each indexed word and how many captures use it (spelling correction, singular/plural forms)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.last_id = -1

    def get(self, store: Store) -> dict[str, int]:
        with self.lock:
            if self.last_id < 0:
                with store.reading():
                    self.last_id = store.last_id()
                    self.counts = store.word_counts()
            else:
                # New captures only; counts of deleted captures linger, which at worst corrects a
                # word to one that no longer finds anything.
                rows = store.texts_after(self.last_id)
                if rows:
                    textnorm.count_words((f"{r[1]} {r[2]}" for r in rows), self.counts)
                    self.last_id = rows[-1][0]
            return self.counts


def expand_terms(
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


def whole_word_checker(embedder: Any) -> Any:
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
            except Exception:  # noqa: BLE001 - tokenizers raises plain Exception; it must not break search
                # The word then counts as unknown (it may be spelling-corrected). Logged once per
                # word: the answer is cached below.
                log.warning("search: the embedder's tokenizer failed on %r; treating it as not a word", word,
                            exc_info=True)
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


def keyword_hits(
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
    filters = {"weights": (KEYWORD_WEIGHTS[0], float(alt_weight)), "source": source, "since": since,
               "until": until, "time_of_day": time_of_day}
    scores: dict[int, float] = {}
    if len(groups) > 1:
        for rid, score in store.keyword_matches(fts_query(groups, "AND"), limit, **filters):
            scores[rid] = score
    # Disjoint windows (floor, ceiling], newest first: a query that ends up covering the whole store
    # (a rare word, a filter that excludes most captures) reads each match once.
    ceiling = store.last_id()
    window, found = KEYWORD_WINDOW, 0
    while ceiling > 0 and found < limit:
        floor = max(0, ceiling - window)
        for rid, score in store.keyword_matches(fts_query(groups, "OR"), limit, after_id=floor, up_to_id=ceiling,
                                                **filters):
            found += rid not in scores
            scores[rid] = score
        ceiling, window = floor, window * 4
    if not scores:
        return []
    # Ties at equal BM25 were cut newest-inserted first above; order them by capture time here.
    ids = list(scores)
    times = store.capture_times(ids)
    out = [(int(i), float(scores[i]), float(times.get(i, 0.0))) for i in ids]
    out.sort(key=lambda x: (x[1], -x[2], -x[0]))
    return out[:limit]


def tag_hits(
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
