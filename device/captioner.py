"""Caption an image with a captioner model set: int8 encoder + init/step decoder, beam search."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from device.decoder import Contrast, Decoded, Special, StepModel, beam_search
from device.modelset import ModelSet, ModelSetError
from device.preprocess import to_model_input
from device.runtime import make_interpreter
from device.tagger import Tag, Tagger

SIGNATURE = "serving_default"

# Closed-class words (articles, prepositions, conjunctions, pronouns, auxiliaries, numbers) and the
# nouns of fixed phrases ("in front of", "on top of"): with `decoding.no_repeat` every other word is
# said at most once per caption, so "a man in a blue shirt and white shirt" cannot come out.
FUNCTION_WORDS = frozenset("""
a an the this that these those some another other each its his her their it he she they them
in on of at to by for from with into onto over under through down up near next behind around
out off across along above below between against towards toward inside outside beside past
and or but while as than who which where
is are be being been has have was were
one two three four five six several many
front top side
""".split())


@dataclass
class Caption:
    text: str
    score: float                      # length-normalised log-probability (higher is better)
    words: list[str]
    attention: np.ndarray             # float32 [len(words), 7, 7], each map sums to 1
    beams: list[dict] = field(default_factory=list)   # [{"text", "score"}], best first
    image_vector: np.ndarray | None = None            # float32 [1280], mean-pooled features
    tags: list[Tag] = field(default_factory=list)     # ImageNet object words, most confident first

    def to_dict(self) -> dict:
        return {"caption": self.text, "score": round(self.score, 4), "words": self.words,
                "tags": [t.to_dict() for t in self.tags], "beams": self.beams,
                "attention": np.round(self.attention, 4).tolist()}


def load_prior(path: Path, feat_dim: int) -> np.ndarray:
    """A set's prior.npy: the average training image's feature map, float32 [1,49,feat_dim]."""
    try:
        prior = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ModelSetError(f"{path}: not a readable .npy array ({e})") from e
    if prior.shape != (1, 49, feat_dim):
        raise ModelSetError(f"{path}: shape {prior.shape}, want (1, 49, {feat_dim})")
    return prior.astype(np.float32)


class TFLiteStepModel:
    """The `init` and `step` TFLite models behind the decoder's StepModel protocol."""

    def __init__(self, init_path: Path, step_path: Path, num_threads: int):
        self._init = make_interpreter(init_path, num_threads).get_signature_runner(SIGNATURE)
        self._step = make_interpreter(step_path, num_threads).get_signature_runner(SIGNATURE)

    def init(self, features):
        out = self._init(features=features.astype(np.float32))
        return out["values"], out["keys"], out["h"]

    def step(self, tokens, h, values, keys):
        out = self._step(token=tokens.astype(np.int32), h=h, values=values, keys=keys)
        return out["logprobs"], out["h"], out["alpha"]


class Captioner:
    """Thread-safe: one caption at a time per Captioner (TFLite interpreters are not re-entrant).

    With a `tagger`, each caption also gets object tags, and the decoder favours the tagged words by
    `tag_bias` x confidence. `rarity` x -ln(the word's training frequency) is added to every word's
    log-probability: beam search otherwise settles on the safest, commonest words ("a man in a red
    shirt"). With `no_repeat`, a word outside FUNCTION_WORDS is said at most once. `contrast` weighs
    the decoder's word scores for the set's prior, the average training image, against this image's
    (decoder.Contrast). All are chosen on the dev sets by `python -m converters evaluate`.
    """

    def __init__(self, model_set: ModelSet, num_threads: int = 2, tagger: Tagger | None = None):
        m = model_set.manifest
        if m.get("kind") != "captioner":
            raise ModelSetError(f"{model_set.dir}: kind is {m.get('kind')!r}, not a captioner")
        self.model_id = model_set.name
        try:
            self.vocab: list[str] = list(m["vocab"])
            self.special = Special(**m["special"])
            self.max_len = int(m["max_len"])
            self.beam_width = int(m["decoding"]["beam_width"])
            self.length_penalty = float(m["decoding"]["length_penalty"])
            self.tag_bias = float(m["decoding"].get("tag_bias", 0.0))
            self.rarity = float(m["decoding"].get("rarity", 0.0))
            self.no_repeat = bool(m["decoding"].get("no_repeat", False))
            self.contrast = float(m["decoding"].get("contrast", 0.0))
            # Sets exported before the rarity bonus existed have no frequencies: no bonus for them.
            self.log_frequency = (np.asarray(m["word_log_frequency"], dtype=np.float64)
                                  if "word_log_frequency" in m else None)
            # Sets exported before contrastive decoding have no prior: no contrast for them.
            self.prior = (load_prior(model_set.path("prior"), int(m["architecture"]["feat_dim"]))
                          if "prior" in m["files"] else None)
        except KeyError as e:  # say which field, not a bare "'vocab'"
            raise ModelSetError(f"{model_set.dir}/manifest.json has no {e.args[0]!r} field") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise ModelSetError(f"{model_set.dir}/manifest.json: a captioner field has the wrong type ({e})") from e
        self.tagger = tagger
        self._vocab_index = {w: i for i, w in enumerate(self.vocab)}
        self._content_words = frozenset(i for i, w in enumerate(self.vocab)
                                        if w not in FUNCTION_WORDS and not w.startswith("<"))
        self._encoder = make_interpreter(model_set.path("encoder"), num_threads).get_signature_runner(SIGNATURE)
        self.decoder_model = TFLiteStepModel(model_set.path("init"), model_set.path("step"), num_threads)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, set_dir: str | Path, num_threads: int = 2, tagger: Tagger | None = None) -> "Captioner":
        return cls(ModelSet.load(set_dir), num_threads, tagger)

    def encode(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """The encoder's feature map [1,49,1280] for an image (any size: squashed to 224x224)."""
        pixels = to_model_input(image)[None]
        with self._lock:
            return self._encoder(image=pixels)["features"]

    def caption(self, image: Image.Image | np.ndarray, beam_width: int | None = None) -> Caption:
        return self.caption_features(self.encode(image), beam_width)

    def word_bias(self, tags: list[Tag]) -> np.ndarray | None:
        """[V] log-probability bonus for rare words and for the tagged words (None: no bonus)."""
        bias = np.zeros(len(self.vocab))
        if self.rarity and self.log_frequency is not None:
            bias -= self.rarity * self.log_frequency
        if self.tag_bias:
            for t in tags:
                if t.word in self._vocab_index:
                    bias[self._vocab_index[t.word]] += self.tag_bias * t.p
        return bias if bias.any() else None

    def decode(self, model: StepModel, features: np.ndarray, beam_width: int | None = None,
               tags: list[Tag] | None = None) -> Decoded:
        """Beam search over `model` with this set's decoding settings: the TFLite decoder here, the
        Keras one in the converters' evaluation, so both are decoded alike."""
        return beam_search(model, features, self.special, beam_width=beam_width or self.beam_width,
                           max_len=self.max_len, length_penalty=self.length_penalty,
                           word_bias=self.word_bias(tags or []),
                           say_once=self._content_words if self.no_repeat else (),
                           contrast=(Contrast(self.prior, self.contrast)
                                     if self.contrast and self.prior is not None else None))

    def caption_features(self, features: np.ndarray, beam_width: int | None = None,
                         tags: list[Tag] | None = None) -> Caption:
        """Caption an encoded image; `tags` defaults to the tagger's (none without a tagger)."""
        pooled = features[0].mean(axis=0).astype(np.float32)
        if tags is None:
            tags = self.tagger.tag(pooled) if self.tagger else []
        with self._lock:
            decoded = self.decode(self.decoder_model, features, beam_width, tags)
        best = decoded.best
        words = [self.vocab[t] for t in best.tokens]
        attention = (np.stack(best.alphas).reshape(-1, 7, 7).astype(np.float32) if best.alphas
                     else np.zeros((0, 7, 7), np.float32))
        beams = [{"text": " ".join(self.vocab[t] for t in hyp.tokens), "score": round(hyp.score, 4)}
                 for hyp in decoded.beams]
        return Caption(" ".join(words), best.score, words, attention, beams, image_vector=pooled, tags=tags)
