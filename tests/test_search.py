"""search(): the one ranking of the page, the API and the CLI, over a real store in a temp folder."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from fakes import BagOfWordsEmbedder
from PIL import Image

from device import search as search_mod
from device.search import NO_EMBEDDER, search, search_by_vector, similar
from device.search import index as search_index
from device.store import Store
from device.vectors import encode_for_store

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000.0

CAPTIONS = [
    "a dog runs on the grass",
    "a red car parked on the street",
    "two dogs play in the snow",
    "a man in a red shirt rides a bike",
    "the cat sleeps on a sofa",
    "a young boy jumps into a swimming pool",
    "a woman climbs a rock wall",
    "a brown dog is running through the field",
]

NASTY = ['"', "AND OR NOT", "*", "NEAR(", "'", "dog*", "col:dog", "^dog", "a NEAR/2 b", "(", ")",
         "\\", "%", "_", "\x00", "dog\x00cat", "🐶 dog", "ünïcödé 猫 犬", "x" * 10_000,
         "dog " * 3000, " ".join(f"w{i}" for i in range(3000)), "-dog", "+", "{}", "[]", ";--"]


class BrokenEmbedder:
    dim = 384
    model_id = "broken"

    def embed(self, texts: list[str]) -> np.ndarray:
        raise RuntimeError("interpreter exploded")


class _LiteRTMiniLM:
    """Only while device.runtime / device.modelset have not landed: the same MiniLM set through
    ai-edge-litert and tokenizers directly (what device.embedder does), so the test uses the real model."""

    dim = 384
    model_id = "minilm-int8"

    def __init__(self, set_dir: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(set_dir / "tokenizer.json"))
        self._run = Interpreter(str(set_dir / "model.tflite"), num_threads=1).get_signature_runner(
            "serving_default")
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            return np.stack([
                self._run(input_ids=np.array([self._tok.encode(t).ids[:256]], np.int32))["embedding"][0]
                for t in texts
            ])


@pytest.fixture(scope="module")
def minilm():
    set_dir = ROOT / "models" / "minilm-int8"
    if not (set_dir / "manifest.json").is_file():
        pytest.skip("models/minilm-int8 is not in this checkout")
    try:
        from device.embedder import load_embedder

        return load_embedder(ROOT / "models", "minilm-int8", num_threads=1)
    except ImportError:
        return _LiteRTMiniLM(set_dir)


def _add(store: Store, caption: str, t: float, *, source: str = "cam", embedder=None, image_vector=None) -> int:
    emb = embedder.embed([caption])[0] if embedder is not None else None
    return store.add(Image.new("RGB", (32, 24), "gray"), time=t, source=source, caption=caption,
                     **encode_for_store(emb, image_vector, store.image_projection))


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "data")
    yield s
    s.close()


@pytest.fixture
def bow() -> BagOfWordsEmbedder:
    return BagOfWordsEmbedder()


@pytest.fixture
def filled(store: Store, bow: BagOfWordsEmbedder) -> Store:
    for i, c in enumerate(CAPTIONS):
        _add(store, c, T0 + i, source="cam" if i % 2 else "folder", embedder=bow)
    return store


def captions(res) -> list[str]:
    return [c["caption"] for c in res.items]


def test_empty_query_lists_newest_captures(filled: Store) -> None:
    for q in ("", "   ", None):
        res = search(filled, q, k=3)
        assert res.mode == "recent" and res.notice is None
        assert captions(res) == CAPTIONS[::-1][:3]
    assert captions(search(filled, "", source="cam", k=2)) == [CAPTIONS[7], CAPTIONS[5]]


def test_keyword_only_without_embedder_says_so(filled: Store) -> None:
    res = search(filled, "snow")
    assert res.mode == "keyword" and res.notice == NO_EMBEDDER
    assert captions(res) == ["two dogs play in the snow"]
    assert res.items[0]["rank_score"] > 0


def test_fts_syntax_in_queries_is_only_ever_text(filled: Store, bow: BagOfWordsEmbedder) -> None:
    for q in NASTY:
        for emb in (None, bow):
            res = search(filled, q, embedder=emb)
            assert res.mode in ("keyword", "hybrid")
    # Operators are words like any other: "dog*" searches for the word dog, not a prefix.
    assert set(captions(search(filled, "dog*"))) == {CAPTIONS[0], CAPTIONS[2], CAPTIONS[7]}


def test_stop_words_alone_find_nothing_rather_than_noise(filled: Store, bow: BagOfWordsEmbedder,
                                                         minilm) -> None:
    for q in ("the", "a of", "on the in", "AND OR NOT"):
        assert search(filled, q).items == []
    store = filled
    for c in CAPTIONS:  # the same captions, now with real embeddings
        _add(store, c, T0 + 100, embedder=minilm)
    for q in ("the", "a of", "with the", '"'):
        assert search(store, q, embedder=minilm).items == [], q


def test_one_word_query_returns_captures_with_the_word_newest_first(store: Store) -> None:
    # Same length and same word count: equal BM25 scores, so time decides.
    times = [T0 + 5, T0 + 1, T0 + 9, T0 + 3]
    for i, t in enumerate(times):
        _add(store, f"a dog number {i}", t)
    _add(store, "a cat number 9", T0 + 20)
    res = search(store, "dog")
    assert [c["time"] for c in res.items] == sorted(times, reverse=True)
    assert search(store, "DOG").items == res.items


def test_plural_and_singular_find_each_other(filled: Store) -> None:
    assert set(captions(search(filled, "dogs"))) == {CAPTIONS[0], CAPTIONS[2], CAPTIONS[7]}
    assert set(captions(search(filled, "dog"))) == {CAPTIONS[0], CAPTIONS[2], CAPTIONS[7]}


def test_misspelling_within_one_edit_is_corrected(filled: Store) -> None:
    res = search(filled, "dgo")  # transposition
    assert set(captions(res)) == {CAPTIONS[0], CAPTIONS[2], CAPTIONS[7]}
    assert res.corrections == {"dgo": "dog"} and "dog" in res.notice
    assert captions(search(filled, "swiming pool")) == [CAPTIONS[5]]  # deletion
    assert captions(search(filled, "bicycle bikke")) == [CAPTIONS[3]]  # insertion
    assert search(filled, "xqzv").items == [] and search(filled, "xqzv").corrections == {}


def test_more_matching_words_rank_first(filled: Store) -> None:
    res = search(filled, "red shirt")
    assert captions(res)[0] == "a man in a red shirt rides a bike"
    assert set(captions(res)) == {CAPTIONS[1], CAPTIONS[3]}


def test_filters_apply_to_both_rankings(filled: Store, bow: BagOfWordsEmbedder) -> None:
    for emb in (None, bow):
        assert set(captions(search(filled, "dog", source="folder", embedder=emb))) == {CAPTIONS[2], CAPTIONS[0]}
        assert captions(search(filled, "dog", since=T0 + 1, until=T0 + 7, embedder=emb)) == [CAPTIONS[2]]
        assert search(filled, "dog", source="nowhere", embedder=emb).items == []


def test_hybrid_finds_a_paraphrase_keyword_search_misses(store: Store, minilm) -> None:
    for i, c in enumerate(CAPTIONS):
        _add(store, c, T0 + i, embedder=minilm)
    query = "puppy playing on a lawn"
    keyword = search(store, query)
    hybrid = search(store, query, embedder=minilm)
    assert keyword.mode == "keyword" and CAPTIONS[0] not in captions(keyword)
    assert hybrid.mode == "hybrid" and hybrid.notice is None
    assert captions(hybrid)[0] == CAPTIONS[0]
    assert "the cat sleeps on a sofa" not in captions(hybrid)
    res = search(store, "kid swimming", embedder=minilm)
    assert captions(res)[0] == "a young boy jumps into a swimming pool"
    res = search(store, "feline resting on a couch", embedder=minilm)
    assert captions(res) == ["the cat sleeps on a sofa"]


def test_a_failing_embedder_falls_back_to_keywords(filled: Store) -> None:
    res = search(filled, "snow", embedder=BrokenEmbedder())
    assert res.mode == "keyword" and "failed" in res.notice
    assert captions(res) == ["two dogs play in the snow"]


def test_cache_follows_adds_deletes_and_reembedding(store: Store, bow: BagOfWordsEmbedder) -> None:
    a = _add(store, "orange kayak", T0, embedder=bow)
    assert [c["id"] for c in search(store, "kayak orange", embedder=bow).items] == [a]
    b = _add(store, "yellow submarine", T0 + 1, embedder=bow)
    res = search(store, "submarine", embedder=bow)
    assert [c["id"] for c in res.items] == [b]
    store.delete([b])
    assert search(store, "submarine", embedder=bow).items == []
    # A new embedding for an existing capture (another model, another process) reaches the cache.
    conn = store.connection()
    vec = np.clip(np.rint(bow.embed(["violet zeppelin"])[0] * 127), -127, 127).astype(np.int8).tobytes()
    conn.execute("UPDATE embeddings SET vector = ? WHERE capture_id = ?", (vec, a))
    emb_only = search_mod._caches_for(store).embeddings.snapshot(store)
    q = bow.embed(["violet zeppelin"])[0]
    hits = search_index.nearest(emb_only, q, emb_only.valid.copy(), 5, 0.9)
    assert [h[0] for h in hits] == [a]


def test_binary_prefilter_keeps_the_nearest(store: Store, monkeypatch) -> None:
    monkeypatch.setattr(search_index, "BINARY_ABOVE", 100)
    monkeypatch.setattr(search_index, "RERANK", 60)
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((400, 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    conn = store.connection()
    conn.execute("BEGIN")
    for i, v in enumerate(vecs):  # rows only: this test is about the vector index, not the files
        cur = conn.execute(
            "INSERT INTO captures (time, source, image, thumb, caption) VALUES (?, 'syn', 'x', 'x', 'c')",
            (T0 + i,))
        conn.execute("INSERT INTO embeddings VALUES (?, ?)",
                     (cur.lastrowid, np.rint(v * 127).astype(np.int8).tobytes()))
    conn.execute("COMMIT")
    snap = search_mod._caches_for(store).embeddings.snapshot(store)
    assert snap.codes is not None  # the prefilter is in use
    for target in (0, 123, 399):
        q = vecs[target] + 0.05 * rng.standard_normal(384).astype(np.float32)
        hits = search_index.nearest(snap, q, snap.valid.copy(), 3, -1.0)
        assert hits[0][0] == int(snap.ids[target])


def test_similar_and_search_by_vector_use_image_vectors(store: Store) -> None:
    rng = np.random.default_rng(7)
    base = rng.random(1280).astype(np.float32) ** 4
    near = base + 0.05 * rng.random(1280).astype(np.float32)
    ids = [_add(store, "base", T0, image_vector=base), _add(store, "near", T0 + 1, image_vector=near)]
    for i in range(6):
        ids.append(_add(store, f"other {i}", T0 + 2 + i, image_vector=rng.random(1280).astype(np.float32) ** 4))
    _add(store, "no vector", T0 + 10)
    res = similar(store, ids[0], k=3)
    assert res[0]["id"] == ids[1] and ids[0] not in [c["id"] for c in res]
    assert len(res) == 3 and res[0]["rank_score"] > res[1]["rank_score"]
    assert search_by_vector(store, base, k=1)[0]["id"] == ids[0]
    assert similar(store, 9999) == []


def test_search_while_a_writer_adds(store: Store, bow: BagOfWordsEmbedder) -> None:
    errors: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        try:
            while not done.is_set():
                for q in ("frame", "frame 3", ""):
                    for c in search(store, q, embedder=bow).items:
                        assert c["caption"].startswith("frame")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    th = threading.Thread(target=reader)
    th.start()
    for i in range(30):
        _add(store, f"frame {i}", T0 + i, embedder=bow)
    done.set()
    th.join()
    assert errors == []
    assert len(search(store, "frame", k=100).items) == 30


def test_smallest_distances_by_histogram() -> None:
    rng = np.random.default_rng(3)
    dist = rng.integers(0, 200, 50_000).astype(np.uint16)
    dist[rng.integers(0, 50_000, 1000)] = np.iinfo(np.uint16).max  # masked rows
    for m in (1, 100, 2000, 49_000):
        got = search_index._smallest(dist, m)
        assert got.size == m and np.all(np.diff(got) > 0)
        # every row not chosen is at least as far as every row chosen
        rest = np.ones(dist.size, bool)
        rest[got] = False
        assert dist[got].max() <= dist[rest].min()
