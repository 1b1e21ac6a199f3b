"""The one beam-search decoder (device/decoder.py) on a small language model whose best captions are
known by hand: what beams find that greedy misses, the rules every caption obeys, the tag bonus, the
contrast with the average image."""
from __future__ import annotations

import numpy as np

from device.decoder import Contrast, Special, beam_search

SPECIAL = Special(pad=0, start=1, end=2, unk=3)
VOCAB = ["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "cat", "runs", "the", "big"]
W = {w: i for i, w in enumerate(VOCAB)}


class BigramModel:
    """A StepModel whose next-word probabilities depend on the previous word only (h carries it)."""

    def __init__(self, table: dict[str, dict[str, float]]):
        self.logprobs = np.full((len(VOCAB), len(VOCAB)), -30.0)
        for prev, nxt in table.items():
            for word, p in nxt.items():
                self.logprobs[W[prev], W[word]] = np.log(p)

    def init(self, features):
        return np.zeros((1, 49, 2)), np.zeros((1, 49, 2)), np.zeros((1, 1))

    def step(self, tokens, h, values, keys):
        alpha = np.full((len(tokens), 49), 1 / 49)
        return self.logprobs[tokens], np.zeros((len(tokens), 1)), alpha


# Greedy takes "a" (0.6), then is stuck with weak continuations; "dog runs" is the better caption.
MODEL = BigramModel({
    "<start>": {"a": 0.6, "dog": 0.4},
    "a": {"dog": 0.36, "cat": 0.34, "<end>": 0.3},
    "dog": {"runs": 0.9, "<end>": 0.1},
    "cat": {"<end>": 1.0},
    "runs": {"<end>": 1.0},
})


def words(hyp) -> list[str]:
    return [VOCAB[t] for t in hyp.tokens]


def decode(**kw):
    return beam_search(MODEL, np.zeros((1, 49, 2)), SPECIAL, max_len=5, length_penalty=0.0, **kw)


def test_beam_search_finds_the_caption_greedy_misses():
    assert words(decode(beam_width=1).best) == ["a", "dog", "runs"]  # 0.6*0.36*0.9 = 0.194
    best = decode(beam_width=3)
    assert words(best.best) == ["dog", "runs"]  # 0.4*0.9 = 0.36
    assert np.isclose(best.best.logprob, np.log(0.36))
    assert [b.score for b in best.beams] == sorted((b.score for b in best.beams), reverse=True)
    assert len(best.best.alphas) == 2


def test_a_caption_has_at_least_one_word_and_never_a_special_token():
    eager = BigramModel({"<start>": {"<end>": 0.9, "<unk>": 0.05, "cat": 0.05}, "cat": {"<end>": 1.0}})
    out = beam_search(eager, np.zeros((1, 49, 2)), SPECIAL, beam_width=2, max_len=5)
    assert words(out.best) == ["cat"]
    assert all(t not in (SPECIAL.pad, SPECIAL.start, SPECIAL.unk) for b in out.beams for t in b.tokens)


def test_max_len_ends_every_hypothesis():
    loop = BigramModel({"<start>": {"dog": 1.0}, "dog": {"dog": 0.99, "<end>": 0.01}})
    out = beam_search(loop, np.zeros((1, 49, 2)), SPECIAL, beam_width=2, max_len=4)
    assert words(out.best) == ["dog"] * 4


def test_a_say_once_word_is_not_repeated():
    loop = BigramModel({"<start>": {"dog": 1.0}, "dog": {"dog": 0.9, "runs": 0.05, "<end>": 0.05},
                        "runs": {"<end>": 1.0}})
    assert words(beam_search(loop, np.zeros((1, 49, 2)), SPECIAL, beam_width=2, max_len=4).best) == ["dog"] * 4
    once = beam_search(loop, np.zeros((1, 49, 2)), SPECIAL, beam_width=2, max_len=4, say_once={W["dog"]})
    assert all(b.tokens.count(W["dog"]) == 1 for b in once.beams)
    assert words(once.best) in (["dog"], ["dog", "runs"])


def test_a_word_bias_steers_towards_the_biased_word():
    bias = np.zeros(len(VOCAB))
    bias[W["cat"]] = 2.0
    assert words(decode(beam_width=3, word_bias=bias).best) == ["a", "cat"]
    assert words(decode(beam_width=3, word_bias=np.zeros(len(VOCAB))).best) == ["dog", "runs"]


class TwoWordModel:
    """A StepModel whose next word depends on the last two words (h carries the one before the
    current token) and on the picture: the features' first value picks the table, 0 for this image
    and 1 for the average one, so a prior row is only right if its h followed its hypothesis."""

    def __init__(self, *tables: dict[tuple[str, str], dict[str, float]]):
        self.tables = tables

    def init(self, features):
        kind = np.full((1, 49, 2), features[0, 0, 0])
        return kind, kind, np.full((1, 1), W["<pad>"], dtype=float)

    def step(self, tokens, h, values, keys):
        logprobs = np.full((len(tokens), len(VOCAB)), -30.0)
        for row, token in enumerate(tokens):
            table = self.tables[int(values[row, 0, 0])]
            for word, p in table.get((VOCAB[int(h[row, 0])], VOCAB[token]), {}).items():
                logprobs[row, W[word]] = np.log(p)
        return logprobs, tokens[:, None].astype(float), np.full((len(tokens), 49), 1 / 49)


IMAGE = {("<pad>", "<start>"): {"the": 0.55, "a": 0.45},
         ("<start>", "the"): {"big": 0.5, "<end>": 0.5}, ("<start>", "a"): {"big": 1.0},
         ("the", "big"): {"dog": 0.5, "cat": 0.5}, ("a", "big"): {"dog": 0.5, "cat": 0.5},
         ("big", "dog"): {"<end>": 1.0}, ("big", "cat"): {"<end>": 1.0}}


def contrasted(prior_after: dict[str, dict[str, float]]):
    """Beam search of IMAGE against a prior that agrees with it except after "the big" / "a big"."""
    prior = {**IMAGE, **{(first, "big"): p for first, p in prior_after.items()}}
    return beam_search(TwoWordModel(IMAGE, prior), np.zeros((1, 49, 2)), SPECIAL, beam_width=3, max_len=5,
                       length_penalty=0.0, contrast=Contrast(np.ones((1, 49, 2)), 0.5))


def test_contrast_prefers_the_words_the_average_image_would_not_say():
    # The image cannot choose between dog and cat; the average image says "a big dog" and "the big
    # cat", so against it this image is "a big cat" and "the big dog". After the first step the beam
    # reorders ("a big" overtakes "the big"): the prior's rows must follow their hypotheses.
    out = contrasted({"a": {"dog": 0.9, "cat": 0.1}, "the": {"dog": 0.1, "cat": 0.9}})
    assert words(out.best) == ["a", "big", "cat"]
    assert ["the", "big", "dog"] in [words(b) for b in out.beams]
    assert ["the", "big", "cat"] not in [words(b) for b in out.beams]
    # The score is each word's log-probability minus half the prior's: a big cat = 0.5 ln .45 + ln .5 - 0.5 ln .1
    assert np.isclose(out.best.logprob, 0.5 * np.log(0.45) + np.log(0.5) - 0.5 * np.log(0.1))
    swapped = contrasted({"a": {"dog": 0.1, "cat": 0.9}, "the": {"dog": 0.9, "cat": 0.1}})
    assert words(swapped.best) == ["a", "big", "dog"]
