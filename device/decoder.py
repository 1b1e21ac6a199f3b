"""The one caption decoder: beam search in plain numpy; greedy decoding is beam_width=1.

It drives any object with the two calls the exported models have (`init`, `step`: see docs/design.md),
so the converters' evaluation of the Keras model, of every TFLite variant, and the device all decode
through this same code: what is measured is what ships.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class StepModel(Protocol):
    def init(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """features [1,49,F] -> values [1,49,D], keys [1,49,A], h [1,H]."""

    def step(self, tokens: np.ndarray, h: np.ndarray, values: np.ndarray,
             keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """tokens [B] int32 -> logprobs [B,V], h [B,H], alpha [B,49]."""


@dataclass
class Special:
    pad: int
    start: int
    end: int
    unk: int


@dataclass
class Hypothesis:
    tokens: list[int]          # generated words, without <start>/<end>
    logprob: float             # sum of log-probabilities, <end> included when finished
    alphas: list[np.ndarray]   # attention [49] per generated word
    score: float = 0.0         # length-normalised logprob


@dataclass
class Decoded:
    best: Hypothesis
    beams: list[Hypothesis]    # finished hypotheses, best first (best included)


@dataclass
class Contrast:
    """Contrastive decoding: every word's log-probability minus `weight` x the log-probability the
    decoder gives it, after the same words, for `features` [1,49,F], the average training image's
    feature map. Words any picture would get ("a man in a red shirt") lose to the words this picture
    earns (a pointwise-mutual-information score, as in Li et al. 2016's anti-language-model)."""
    features: np.ndarray
    weight: float


DEFAULT_LENGTH_PENALTY = 1.0  # what the committed sets' manifests say (decoding.length_penalty)


def normalised(logprob: float, length: int, length_penalty: float) -> float:
    """logprob / length**alpha: alpha 0 favours short captions, 1 is the per-word average."""
    return logprob / max(length, 1) ** length_penalty


def beam_search(model: StepModel, features: np.ndarray, special: Special, *, beam_width: int = 3,
                max_len: int = 20, length_penalty: float = DEFAULT_LENGTH_PENALTY,
                word_bias: np.ndarray | None = None, say_once: Collection[int] = (),
                contrast: Contrast | None = None) -> Decoded:
    """Decode one image's features [1,49,F]. Hypotheses leave the beam as they reach <end>.

    `word_bias` [V] is added to every step's log-probabilities: the captioner uses it to favour rare
    words and the words the object tagger sees (scores then include it). A token in `say_once` appears
    at most once per caption ("a man in a blue shirt and white shirt" cannot happen). With a
    `contrast`, each step decodes the average image's rows beside the hypotheses' in one call.
    """
    say_once = frozenset(say_once)
    values, keys, h = model.init(features)
    if contrast is not None:
        prior_values, prior_keys, prior_h = model.init(contrast.features)
    banned = [special.pad, special.start, special.unk]
    live = [Hypothesis([], 0.0, [])]
    live_h = h
    finished: list[Hypothesis] = []
    tiled: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # beam size -> the image's values, keys per row
    for t in range(max_len + 1):
        n = len(live)
        if n not in tiled:  # the beam only changes size when a hypothesis ends
            tiled[n] = (np.repeat(values, n, 0), np.repeat(keys, n, 0))
            if contrast is not None:  # rows n..2n-1: the average image after the same words
                tiled[n] = (np.concatenate([tiled[n][0], np.repeat(prior_values, n, 0)]),
                            np.concatenate([tiled[n][1], np.repeat(prior_keys, n, 0)]))
        tokens = np.array([hyp.tokens[-1] if hyp.tokens else special.start for hyp in live], np.int32)
        if contrast is None:
            logprobs, new_h, alpha = model.step(tokens, live_h, *tiled[n])
            logprobs = logprobs.astype(np.float64)
        else:
            both, both_h, alpha = model.step(np.concatenate([tokens, tokens]),
                                             np.concatenate([live_h, prior_h]), *tiled[n])
            logprobs = both[:n].astype(np.float64) - contrast.weight * both[n:]
            new_h, new_prior_h, alpha = both_h[:n], both_h[n:], alpha[:n]
        if word_bias is not None:
            logprobs += word_bias
        logprobs[:, banned] = -np.inf
        for row, hyp in enumerate(live):
            if said := say_once.intersection(hyp.tokens):
                logprobs[row, list(said)] = -np.inf
        if t == 0:  # a caption has at least one word
            logprobs[:, special.end] = -np.inf
        if t == max_len:  # out of room: every live hypothesis must end now
            logprobs[:, :] = -np.inf
            logprobs[:, special.end] = 0.0
        total = np.array([hyp.logprob for hyp in live])[:, None] + logprobs
        # Only the best `want` candidates can survive; a partial sort is enough.
        want = min(2 * len(live) + 1, total.size)
        flat = np.argpartition(-total.ravel(), want - 1)[:want]
        flat = flat[np.argsort(-total.ravel()[flat], kind="stable")]
        next_live, next_rows = [], []
        for index in flat:
            row, word = divmod(int(index), total.shape[1])
            hyp = live[row]
            logprob = float(total[row, word])
            if word == special.end:
                length = len(hyp.tokens) + 1
                finished.append(Hypothesis(hyp.tokens, logprob, hyp.alphas,
                                           normalised(logprob, length, length_penalty)))
            elif len(next_live) < beam_width - len(finished):
                next_live.append(Hypothesis(hyp.tokens + [word], logprob, hyp.alphas + [alpha[row]]))
                next_rows.append(row)
            if len(finished) >= beam_width or len(next_live) + len(finished) >= beam_width:
                break
        if not next_live:
            break
        live, live_h = next_live, new_h[next_rows]
        if contrast is not None:
            prior_h = new_prior_h[next_rows]
    finished.sort(key=lambda hyp: hyp.score, reverse=True)
    return Decoded(finished[0], finished[:beam_width])

