"""Object tags: models/imagenet-tags on the captioner's own pooled features, the word map, the decoder's
bonus for tagged words, and finding the sample photos by the objects in them."""
from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device.captioner import Captioner
from device.embedder import load_embedder
from device.image_projection import load_image_projection
from device.modelset import ModelSetError
from device.pipeline import Pipeline
from device.preprocess import load_image, to_model_input
from device.search import search
from device.store import Store
from device.tagger import Tag, Tagger, load_tagger

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
SAMPLES = ROOT / "device" / "samples"
CLASSIFIER = ROOT.parent / "shared" / "weights" / "imagenet"
# The sample photos and the word a person would search them by.
OBJECTS = {"cat_chelsea.jpg": "cat", "coffee_cup.jpg": "cup", "fox_in_snow.jpg": "fox",
           "rocket_launch.jpg": "rocket"}
PLURALS = {"cat": "cats", "cup": "cups", "fox": "foxes", "rocket": "rockets"}


@pytest.fixture(scope="module")
def captioner() -> Captioner:
    return Captioner.load(MODELS / "captioner-int8", num_threads=1, tagger=load_tagger(MODELS))


def test_the_tagger_names_the_object_in_each_sample_photo(captioner):
    for name, word in OBJECTS.items():
        tags = captioner.caption(load_image(SAMPLES / name)).tags
        assert tags and tags[0].word == word, (name, tags)
        assert tags[0].p >= 0.5
        assert [t.p for t in tags] == sorted((t.p for t in tags), reverse=True)
        assert all(t.p >= captioner.tagger.min_p for t in tags) and len(tags) <= captioner.tagger.top_k
    espresso = {t.word for t in captioner.caption(load_image(SAMPLES / "coffee_cup.jpg")).tags}
    assert {"cup", "coffee"} <= espresso  # one ImageNet label, two words people type


def test_the_head_on_encoder_features_agrees_with_the_whole_classifier(captioner):
    """No second backbone: the classifier's last layer on the captioner encoder's pooled features gives
    the same object as running the whole int8 ImageNet classifier."""
    if not CLASSIFIER.is_dir():
        pytest.skip("../shared/weights/imagenet is not here")
    from device.runtime import make_interpreter
    classifier = make_interpreter(CLASSIFIER / "mobilenet_v2_1.0_224_quant.tflite", num_threads=1)
    inp, out = classifier.get_input_details()[0], classifier.get_output_details()[0]
    words = captioner.tagger.label_words
    for name in OBJECTS:
        image = load_image(SAMPLES / name)
        classifier.set_tensor(inp["index"], to_model_input(image)[None])
        classifier.invoke()
        top_label = int(np.argmax(classifier.get_tensor(out["index"])[0]))
        assert captioner.caption(image).tags[0].word in words[top_label], name


def test_exporting_the_tagger_reproduces_the_committed_set(tmp_path):
    if not CLASSIFIER.is_dir():
        pytest.skip("../shared/weights/imagenet is not here")
    run = subprocess.run([sys.executable, "-m", "converters", "tags", "--classifier", str(CLASSIFIER),
                          "--models", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    made = (tmp_path / "imagenet-tags" / "manifest.json").read_text()
    assert made == (MODELS / "imagenet-tags" / "manifest.json").read_text()


def test_the_word_map_folds_fine_classes_into_plain_words():
    from converters.tags import label_words
    names = json.loads((MODELS / "imagenet-tags" / "manifest.json").read_text())["labels"]
    by_name = {n.split(",")[0]: i for i, n in enumerate(names)}
    assert label_words(0, names[0]) == []  # background
    for label, words in (("Siberian husky", ["dog"]), ("tabby", ["cat"]), ("Egyptian cat", ["cat"]),
                         ("espresso", ["cup", "coffee"]), ("missile", ["rocket"]), ("red fox", ["fox"]),
                         ("umbrella", ["umbrella"]), ("hotdog", ["hot dog"])):
        assert label_words(by_name[label], names[by_name[label]]) == words, label


def test_a_damaged_tagger_set_is_a_clear_error(tmp_path):
    shutil.copytree(MODELS / "imagenet-tags", tmp_path / "imagenet-tags")
    head = tmp_path / "imagenet-tags" / "head.npz"
    head.write_bytes(head.read_bytes()[:1000])
    with pytest.raises(ModelSetError, match="sha256 does not match"):
        Tagger.load(tmp_path / "imagenet-tags")
    assert load_tagger(tmp_path / "nowhere") is None  # no set: captures simply get no tags


def test_the_tag_bonus_steers_the_decoder_towards_tagged_words(captioner):
    features = captioner.encode(load_image(SAMPLES / "fox_in_snow.jpg"))
    dog = [Tag("dog", 1.0)]
    saved = captioner.tag_bias
    try:
        captioner.tag_bias = 0.0
        plain, unbiased = captioner.caption_features(features, tags=[]), captioner.caption_features(features, tags=dog)
        captioner.tag_bias = 8.0  # far above the tuned value: the tagged word must appear
        steered = captioner.caption_features(features, tags=dog)
    finally:
        captioner.tag_bias = saved
    assert "dog" not in plain.words, plain.text
    assert unbiased.text == plain.text  # no bonus, no change
    assert "dog" in steered.words, steered.text
    assert steered.tags == dog


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory, captioner):
    store = Store(tmp_path_factory.mktemp("tags") / "data", image_projection=load_image_projection(MODELS))
    embedder = load_embedder(MODELS, "minilm-int8", num_threads=1)
    pipeline = Pipeline(store, captioner, embedder)
    ids = {}
    for i, path in enumerate(sorted(SAMPLES.glob("*.jpg"))):
        image = load_image(path)
        cap = pipeline.caption(image)
        (vec,) = pipeline.embed([cap])
        ids[path.name] = pipeline.save(image, cap, vec, source="samples", original_path=str(path), time=1e9 + i)
    yield store, embedder, ids
    store.close()


# The photos a person would accept first for each word (two of the samples are cats).
RIGHT = {"cat": {"cat_chelsea.jpg", "cat_in_box.jpg"}, "cup": {"coffee_cup.jpg"}, "fox": {"fox_in_snow.jpg"},
         "rocket": {"rocket_launch.jpg"}}


@pytest.mark.parametrize("name,word", OBJECTS.items())
def test_searching_an_object_word_returns_its_photo_first(sample_store, name, word):
    store, embedder, ids = sample_store
    hits = search(store, word, k=5, embedder=embedder).items
    right = {ids[n] for n in RIGHT[word]}
    assert hits and hits[0]["id"] in right, [(h["id"], h["caption"], h["tags"]) for h in hits]
    assert ids[name] in {h["id"] for h in hits[:len(right)]}  # the tagged photo among the right ones
    # Keyword-only (no embedder), plural: the tag alone finds it (the cat in a box is found by its
    # second beam, "a cat is sitting on a bench", and may come first)
    keyword = [h["id"] for h in search(store, PLURALS[word], k=5).items]
    assert keyword and keyword[0] in right and ids[name] in keyword[:len(right)], keyword


def test_tags_are_stored_returned_and_deleted_with_their_capture(sample_store):
    store, _, ids = sample_store
    cat = store.get(ids["cat_chelsea.jpg"])
    assert cat["tags"][0]["word"] == "cat" and 0.5 <= cat["tags"][0]["p"] <= 1.0
    assert store.tagged(["cat"], 10)[0][0] == ids["cat_chelsea.jpg"]
    assert store.tagged(["cat"], 10, source="camera") == []  # filters apply
    fox = ids["fox_in_snow.jpg"]
    store.delete([fox])
    assert store.tagged(["fox"], 10) == []
    left = store.connection().execute("SELECT count(*) FROM capture_tags WHERE capture_id = ?", (fox,))
    assert left.fetchone()[0] == 0


def test_an_exported_csv_lists_each_capture_s_tags(sample_store):
    from device import records
    from device.export import csv_text

    store, _, ids = sample_store
    items = [records.capture_json(c) for c in store.get_many([ids["coffee_cup.jpg"]])]
    (row,) = csv.DictReader(io.StringIO(csv_text(items)))
    assert row["tags"] == "cup, coffee"
