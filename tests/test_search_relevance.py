"""What a user types against what the shipped models stored (real captioner, MiniLM and image
projection over the sample photos): nonsense finds nothing, words find the captions that say them,
a plain description finds the photo."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from device.embedder import load_embedder
from device.pipeline import Pipeline, load_captioner, open_store
from device.search import search
from device.sources import Frame
from device.vectors import encode_for_store

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
SAMPLES = ROOT / "device" / "samples"
pytestmark = pytest.mark.skipif(
    not all((MODELS / s / "manifest.json").is_file() for s in ("captioner-int8", "minilm-int8", "image-projection")),
    reason="the committed model sets are not in models/",
)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    store = open_store(tmp_path_factory.mktemp("data"), MODELS)
    captioner = load_captioner(MODELS, "captioner-int8", 1)
    embedder = load_embedder(MODELS, "minilm-int8", num_threads=1)
    pipeline = Pipeline(store, captioner, embedder)
    names = {}
    for i, path in enumerate(sorted(SAMPLES.glob("*.jpg"))):
        cid, _ = pipeline.process(Frame(Image.open(path).convert("RGB"), "samples", str(path), 1_700_000_000.0 + i))
        names[cid] = path.name
    # a caption that says the words, on the same photo but without its object tags
    image = Image.open(SAMPLES / "coffee_cup.jpg").convert("RGB")
    cap = captioner.caption(image)
    said = store.add(image, time=1_700_001_000.0, source="samples", original_path=None,
                     caption="a woman holds a cup of coffee", score=cap.score, model_id=captioner.model_id,
                     beams=[], attention=None,
                     **encode_for_store(embedder.embed(["a woman holds a cup of coffee"])[0], cap.image_vector,
                                        store.image_projection))
    names[said] = "said"
    yield store, embedder, names
    store.close()


@pytest.mark.parametrize("query", ["zzqx blorf", "qwv xkcdz", "blorptang vrisk", "gnarflek"])
def test_nonsense_finds_nothing(stored, query):
    # issue 14: letter strings matched image vectors at a plain cosine of 0.1 and listed photos
    store, embedder, _ = stored
    assert search(store, query, k=20, embedder=embedder).items == []


@pytest.mark.parametrize("word", ["coffee", "woman", "cup"])
def test_a_word_finds_the_caption_that_says_it(stored, word):
    store, embedder, names = stored
    items = search(store, word, k=20, embedder=embedder).items
    # First come the captures whose caption says the word (the written one, and any sample caption
    # that does, like "a woman in a red shirt" for the cat), and for "coffee" and "cup" the coffee
    # photo, tagged cup and coffee.
    saying = {name for cid, name in names.items() if word in store.get(cid)["caption"].split()}
    first = saying | ({"coffee_cup.jpg"} if word in ("coffee", "cup") else set())
    assert "said" in first
    assert {names[i["id"]] for i in items[:len(first)]} == first


def test_a_description_finds_the_photo(stored):
    store, embedder, names = stored
    items = search(store, "a cat", k=3, embedder=embedder).items
    assert {names[i["id"]] for i in items[:2]} == {"cat_in_box.jpg", "cat_chelsea.jpg"}


def test_nonsense_lists_fewer_photos_than_before(stored):
    # "xylophone quartet zzqx" listed 6 of the 9 sample photos; real words like "quartet" still come
    # close to some photos through the image projection (documented in docs/retrieval.md)
    store, embedder, _ = stored
    assert len(search(store, "xylophone quartet zzqx", k=20, embedder=embedder).items) <= 3
