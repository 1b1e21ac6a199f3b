"""Test doubles shared by the ranking tests (the real embedder is tested in test_embedder.py)."""
from __future__ import annotations

import hashlib

import numpy as np


class BagOfWordsEmbedder:
    """Deterministic stand-in for ranking-logic tests: a sentence is the normalised sum of one fixed
    random vector per word, so captions sharing words are similar and nothing else is."""

    dim = 384
    model_id = "bag-of-words-test"

    def __init__(self) -> None:
        self.calls = 0  # texts embedded so far

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += len(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            for w in text.lower().split():
                seed = int.from_bytes(hashlib.sha256(w.encode()).digest()[:8], "little")
                out[i] += np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            out[i] /= max(float(np.linalg.norm(out[i])), 1e-9)
        return out
