"""The retrieval benchmark: query derivation, rank counting, and one end-to-end run (real `edgecap
ingest` subprocess with the real captioner on the sample photos laid out as a tiny Flickr8k)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from fakes import BagOfWordsEmbedder
from PIL import Image

from converters.retrieval import CachedEmbedder, evaluate, main, markdown, queries, short_query
from device.search import Ranking, textnorm
from device.store import Store
from device.vectors import encode_for_store

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "device" / "samples"
T0 = 1_700_000_000.0


def test_short_queries_are_one_to_three_content_words_of_the_caption() -> None:
    rng = random.Random(0)
    caption = "A black dog is running through the tall grass near a red fence ."
    seen_lengths = set()
    for _ in range(200):
        q = short_query(caption, rng)
        words = q.split()
        assert 1 <= len(words) <= 3 and not set(words) & textnorm.STOP_WORDS
        assert " ".join(words) in " ".join(w for w in textnorm.words(caption) if w not in textnorm.STOP_WORDS)
        seen_lengths.add(len(words))
    assert seen_lengths == {1, 2, 3}
    assert short_query("the a of", rng) == "the a of"  # nothing to shorten: the caption itself


def test_queries_are_five_captions_per_image_and_deterministic() -> None:
    caps = {"a.jpg": [f"a dog number {i}" for i in range(6)], "b.jpg": [f"a cat number {i}" for i in range(5)]}
    qs = queries(caps, ["a.jpg", "b.jpg"])
    assert len(qs["full"]) == len(qs["short"]) == 10  # the 6th caption is not used
    assert qs["full"][0] == ("a dog number 0", "a.jpg") and qs["full"][-1][1] == "b.jpg"
    assert queries(caps, ["a.jpg", "b.jpg"]) == qs


def test_evaluate_counts_ranks_through_search(tmp_path: Path) -> None:
    emb = CachedEmbedder(BagOfWordsEmbedder())
    store = Store(tmp_path / "data")
    try:
        ids = {}
        for i, (name, caption) in enumerate([("dog.jpg", "a dog runs on grass"), ("cat.jpg", "a cat sleeps"),
                                             ("car.jpg", "a red car parked")]):
            ids[name] = store.add(Image.new("RGB", (8, 8)), time=T0 + i, source="bench", caption=caption,
                                  **encode_for_store(emb.embed([caption])[0]))
        qs = [("dog grass", "dog.jpg"), ("cat", "cat.jpg"), ("zebra", "car.jpg"), ("red car", "car.jpg"),
              ("red car dog", "dog.jpg")]
        keyword = evaluate(store, emb, Ranking(captions=False, images=False), qs, ids, k=10)
        # "zebra" finds nothing: rank k + 1; "red car dog" ranks the car (two words) above the dog
        assert (keyword["r1"], keyword["r5"], keyword["r10"], keyword["queries"]) == (60.0, 80.0, 80.0, 5)
        assert keyword["median_rank"] == 1.0
        worst = evaluate(store, emb, Ranking(captions=False, images=False), [("zebra", "dog.jpg")] * 3, ids, k=10)
        assert (worst["r10"], worst["median_rank"]) == (0.0, 11.0)
        before = emb.inner.calls
        hybrid = evaluate(store, emb, Ranking(images=False), qs, ids, k=10)
        assert emb.inner.calls == before + 5
        again = evaluate(store, emb, Ranking(images=False), qs, ids, k=10)
        assert emb.inner.calls == before + 5  # queries embedded once across variants
        assert (again["r1"], again["median_rank"]) == (hybrid["r1"], hybrid["median_rank"])  # queries embedded once across variants
    finally:
        store.close()


def _tiny_flickr(root: Path) -> Path:
    """The sample photos as a Flickr8k folder (original layout), all in the test split."""
    captions = {
        "dog_and_cats.jpg": "a dog and two cats", "rocket_launch.jpg": "a rocket launches into the sky",
        "coffee_cup.jpg": "a cup of coffee on a table", "fox_in_snow.jpg": "a fox walks in the snow",
        "boy_red_cap.jpg": "a boy wearing a red cap", "cat_in_box.jpg": "a cat sitting in a box",
    }
    (root / "Flicker8k_Dataset").mkdir(parents=True)
    lines = []
    for name, caption in captions.items():
        shutil.copy(SAMPLES / name, root / "Flicker8k_Dataset" / name)
        lines += [f"{name}#{i}\t{caption} {suffix}" for i, suffix in enumerate(["", ".", "here", "now", "today"])]
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (root / "Flickr_8k.testImages.txt").write_text("\n".join(captions) + "\n")
    (root / "Flickr_8k.trainImages.txt").write_text("")
    (root / "Flickr_8k.devImages.txt").write_text("")
    return root


@pytest.mark.skipif(not (ROOT / "models" / "captioner-int8" / "manifest.json").is_file()
                    or not (ROOT / "models" / "minilm-int8" / "manifest.json").is_file(),
                    reason="needs models/captioner-int8 and models/minilm-int8")
def test_benchmark_end_to_end_through_edgecap_ingest(tmp_path: Path, capsys) -> None:
    data = _tiny_flickr(tmp_path / "flickr")
    report_file = tmp_path / "retrieval.json"
    store_dir = tmp_path / "store"
    assert main(["--data", str(data), "--models", str(ROOT / "models"), "--store", str(store_dir),
                 "--report", str(report_file), "--k", "20", "--beam-embeddings"]) == 0
    report = json.loads(report_file.read_text())
    assert report["images"] == 6 and report["split"] == "test"
    with Store(store_dir) as store:  # the device path stored everything a capture has
        rows = store.connection().execute(
            "SELECT count(*), count(DISTINCT original_path) FROM captures WHERE source = 'ingest'").fetchone()
        assert tuple(rows) == (6, 6)
        assert store.connection().execute("SELECT count(*) FROM embeddings").fetchone()[0] == 6
        assert store.connection().execute("SELECT count(*) FROM image_vectors").fetchone()[0] == 6
    names = list(report["variants"])
    assert any(n.startswith("keyword only") for n in names) and any(n.startswith("caption embedding") for n in names)
    assert "caption embedding only, mean of top beams" in names
    for r in report["variants"].values():
        for kind in ("full", "short"):
            assert r[kind]["queries"] == 30
            assert 0 <= r[kind]["r1"] <= r[kind]["r5"] <= r[kind]["r10"] <= 100
    # the report's numbers are what search() gives for those queries on that store
    from converters.data import load_dataset
    from device.embedder import load_embedder
    from device.pipeline import open_store
    from device.search import SHIPPED, search

    dataset = load_dataset(data)
    emb = load_embedder(ROOT / "models", "minilm-int8", num_threads=1)
    with open_store(store_dir, ROOT / "models") as store:
        by_name = {Path(p).name: cid for cid, p in store.connection().execute("SELECT id, original_path FROM captures")}
        firsts = [search(store, c, k=20, embedder=emb, ranking=SHIPPED).items[:1]
                  for n in dataset.splits["test"] for c in dataset.captions[n][:5]]
        expect = [by_name[n] for n in dataset.splits["test"] for _ in range(5)]
    r1 = 100 * sum(bool(f) and f[0]["id"] == e for f, e in zip(firsts, expect)) / len(expect)
    shipped = next((v for k, v in report["variants"].items() if k.startswith("shipped hybrid (image")), None)
    if shipped is not None:  # measured only when models/image-projection is present
        assert shipped["full"]["r1"] == pytest.approx(r1, abs=0.05)
    out = capsys.readouterr().out
    assert "| ranking |" in out and "CLIP ViT-B/32" in out
    assert markdown(report).count("\n") >= len(names) + 3
