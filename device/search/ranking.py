"""Fusing the rankings of a text query into one: the weights (``Ranking``) and the two fusions.

Why reciprocal rank fusion (``fuse``) rather than mixing raw scores: BM25 scores are unbounded and
depend on the corpus, cosines of MiniLM live in a narrow band; ranks are comparable without tuning per
store. With the image ranking, ``fuse_scores`` adds weighted *scores* instead, because the image
similarity is the strongest signal and rank fusion would throw its margins away. Ties are broken
newest first.
"""
from __future__ import annotations

from dataclasses import dataclass

from device.search.keywords import KEYWORD_WEIGHTS

RRF_K = 60  # the usual RRF constant: rank 1 scores 1/61, rank 60 half that
MIN_SIMILARITY = 0.25  # cosine floor for semantic hits when the query has content words
MIN_SIMILARITY_NO_WORDS = 0.5  # ... and when it has none ("the", "a of"): only strong matches


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
    # Added x the tag score (keywords.tag_hits). Chosen on Flickr8k dev (docs/retrieval.md): 0 to 0.15 measured
    # the same for full captions and short queries, 0.25 cost 0.6 R@1; 0.15 is the largest that costs
    # nothing there, and what lifts a photo tagged "cup" above the others for the query "cup".
    tags: bool = True
    tag_weight: float = 0.15


SHIPPED = Ranking()

def fuse_scores(
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


def fuse(*rankings: list[tuple[int, float, float]]) -> list[tuple[int, float, float]]:
    """Reciprocal rank fusion -> (id, fused score (higher is better), time), best first."""
    fused: dict[int, float] = {}
    times: dict[int, float] = {}
    for ranking in rankings:
        for rank, (cid, _, t) in enumerate(ranking, start=1):
            fused[cid] = fused.get(cid, 0.0) + 1.0 / (RRF_K + rank)
            times[cid] = t
    # Equal scores (e.g. equal BM25 in one list, absent from the other): newest first.
    return sorted(((c, s, times[c]) for c, s in fused.items()), key=lambda x: (-x[1], -x[2], -x[0]))
