"""The one beam-search decoder (device/decoder.py) on a small language model whose best captions are
known by hand: what beams find that greedy misses, the rules every caption obeys, the tag bonus."""
from __future__ import annotations

import numpy as np

from device.decoder import Special, beam_search

SPECIAL = Special(pad=0, start=1, end=2, unk=3)
VOCAB = ["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "cat", "runs"]
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
