"""ImageNet object tags (``models/imagenet-tags``), applied in numpy to the captioner's pooled features.

The set holds the last layer of MobileNetV2's ImageNet classifier (1280 -> 1001). The captioner's
encoder is that network without its head, so the layer on the encoder's mean-pooled features (the
``image_vector`` every caption already has) names the object for the cost of one small matrix
product. Each of the 1001 labels maps to plain words (all dog breeds -> "dog", espresso -> "cup" and
"coffee"); a word's confidence is the summed probability of its labels. Made by ``converters/tags.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.modelset import ModelSet, ModelSetError, optional_set

DEFAULT_SET = "imagenet-tags"


@dataclass
class Tag:
    word: str
    p: float  # summed probability of the ImageNet labels that map to `word`

    def to_dict(self) -> dict:
        return {"word": self.word, "p": round(self.p, 3)}


class Tagger:
    def __init__(self, model_id: str, weight: np.ndarray, bias: np.ndarray, label_words: list[list[str]],
                 min_p: float, top_k: int):
        self.model_id = model_id
        self.weight = weight  # float32 [1280, labels]
        self.bias = bias      # float32 [labels]
        self.label_words = label_words  # per ImageNet label, the words it gives
        self.words = sorted({w for words in label_words for w in words})
        index = {w: i for i, w in enumerate(self.words)}
        # One (label, word) pair per word a label gives; labels with none (background) are dropped.
        pairs = [(label, index[w]) for label, words in enumerate(label_words) for w in words]
        self._pair_label = np.array([p[0] for p in pairs], np.int64)
        self._pair_word = np.array([p[1] for p in pairs], np.int64)
        self.min_p, self.top_k = min_p, top_k

    @classmethod
    def load(cls, set_dir: str | Path) -> Tagger:
        ms = ModelSet.load(set_dir)
        m = ms.manifest
        if m.get("kind") != "tagger":
            raise ModelSetError(f"{set_dir}: kind is {m.get('kind')!r}, not a tagger")
        try:
            with np.load(ms.path("head")) as z:
                weight = (z["weight"].astype(np.float32) - float(z["weight_zero"])) * float(z["weight_scale"])
                bias = z["bias"].astype(np.float32)
            words = [[str(w) for w in ws] for ws in m["words"]]
            tags = m["tags"]
            min_p, top_k = float(tags["min_p"]), int(tags["top_k"])
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise ModelSetError(f"{set_dir}: not a tagger set ({e})") from e
        if weight.ndim != 2 or bias.shape != (weight.shape[0],) or len(words) != weight.shape[0]:
            raise ModelSetError(f"{ms.path('head')}: inconsistent shapes {weight.shape}, {bias.shape}, "
                                f"{len(words)} words")
        return cls(ms.name, np.ascontiguousarray(weight.T), bias, words, min_p, top_k)

    def word_probabilities(self, pooled: np.ndarray) -> np.ndarray:
        """float32 [len(words)]: each word's confidence for pooled features [1280]."""
        logits = np.asarray(pooled, np.float32) @ self.weight + self.bias
        p = np.exp(logits - logits.max())
        p /= p.sum()
        return np.bincount(self._pair_word, weights=p[self._pair_label], minlength=len(self.words))

    def tag(self, pooled: np.ndarray) -> list[Tag]:
        """The top words with at least `min_p` confidence, most confident first."""
        p = self.word_probabilities(pooled)
        best = np.argsort(-p, kind="stable")[:self.top_k]
        return [Tag(self.words[i], float(p[i])) for i in best if p[i] >= self.min_p]


def load_tagger(models_dir: str | Path | None, name: str = DEFAULT_SET) -> Tagger | None:
    """The tagger set in ``models_dir``, or None when there is none (captions then carry no tags)."""
    set_dir = optional_set(models_dir, name, "captures get no object tags")
    return None if set_dir is None else Tagger.load(set_dir)
