"""Evaluate the Keras model and every exported model set through the one device decoder.

BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap) against the 5 references of each image, the
gender-word error rate, distinct words, object-tag precision, size on disk and milliseconds per
caption (encoder + tags + beam search through the TFLite files), on the chosen split of every dataset
that has one (`--split test`: Flickr8k test; `--split dev`: Flickr8k dev and COCO val). The metrics go
into each manifest and docs/models.md.

Decoding settings (length penalty, the bonuses for tagged and rare words, no repeats, contrast with
the average image) are chosen first on the dev splits of all datasets: see `tune_decoding`.
"""
from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from converters.data import Dataset, normalize
from converters.features import FeatureCache
from converters.metrics import corpus_scores, gender_error_rate
from converters.train import load_trained, references, selection_score, tokens_to_text
from device.captioner import Captioner
from device.modelset import ModelSet, update_manifest
from device.preprocess import load_image
from device.search.textnorm import inflections
from device.tagger import Tagger

log = logging.getLogger(__name__)
LENGTH_PENALTIES = (0.0, 0.3, 0.5, 0.7, 1.0)
TAG_BIASES = (0.0, 0.5, 1.0, 2.0)  # log-probability bonus per unit of tag confidence
RARITIES = (0.0, 0.025, 0.05, 0.075, 0.1)  # log-probability bonus per nat of a word's rarity
CONTRASTS = (0.05, 0.1, 0.15)  # weight of the average image's log-probabilities (decoder.Contrast)
CONTRAST_LENGTH_PENALTIES = (1.0, 1.3, 1.6)  # contrast moves the best length: searched again
CONTRAST_RARITIES = (0.0, 0.05, 0.1)


class KerasStepModel:
    """The Keras decoder behind the decoder's StepModel protocol (float reference)."""

    def __init__(self, decoder):
        self._init = tf.function(lambda f: decoder.init(f), reduce_retracing=True)
        self._step = tf.function(lambda t, h, v, k: decoder.step(t, h, v, k), reduce_retracing=True)

    def init(self, features):
        return tuple(x.numpy() for x in self._init(tf.constant(features, tf.float32)))

    def step(self, tokens, h, values, keys):
        logits, h, alpha = self._step(tokens, h, values, keys)
        return tf.nn.log_softmax(logits).numpy(), h.numpy(), alpha.numpy()


def score(refs, hyps: dict[str, str], metrics=("bleu", "meteor", "rouge", "cider")) -> dict:
    out = corpus_scores(refs, hyps, metrics)
    if "meteor" in metrics:
        out.update(gender_error_rate(refs, hyps))
        out["distinct_words"] = len({w for h in hyps.values() for w in h.split()})
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def tag_precision(dataset, tags: dict[str, list[str]]) -> dict:
    """Share of the tags whose word (or its plural) some reference caption of the image uses: a
    lower bound (a reference may say "kitten" for a cat), but one that needs no labelling."""
    shown = hits = 0
    for name, words in tags.items():
        said: set[str] = set()  # the references' words and adjacent pairs ("teddy bear")
        for caption in dataset.captions[name]:
            ref = normalize(caption)
            said.update(ref)
            said.update(" ".join(pair) for pair in zip(ref, ref[1:]))
        shown += len(words)
        hits += sum(bool(inflections(w) & said) for w in words)
    return {"tag_precision": round(100 * hits / max(shown, 1), 2),
            "tags_per_image": round(shown / max(len(tags), 1), 2)}


def tune_decoding(captioner: Captioner, dataset: Dataset) -> tuple[dict, dict]:
    """Choose the decoding settings on the dev splits, by `selection_score` (train.py: the criterion
    that selected the training epoch) and the captions' distinct words.

    1. The length penalty and tag bias; then at those the rarity bonus and whether content words may
       repeat: the best criterion wins (`plain`).
    2. With the set's prior, contrast x length penalty x rarity: of the settings no worse than
       `plain` on any dev split (BLEU-4 + 100 x CIDEr of each), the one whose captions use the most
       distinct words. Contrast buys quality; this spends it on saying more than "a man in a red
       shirt", and on each dataset keeps at least what plain decoding had.
    """
    dev = {name: (names, references(dataset, names)) for name, names in dataset.dev_sets().items() if names}
    features = {n: captioner.encode(load_image(dataset.image_path(n)))
                for names, _ in dev.values() for n in tqdm(names, desc="dev encode")}
    results = {}

    def trial(length_penalty: float, tag_bias: float, rarity: float = 0.0, no_repeat: bool = False,
              contrast: float = 0.0) -> dict:
        setting = {"length_penalty": length_penalty, "tag_bias": tag_bias, "rarity": rarity,
                   "no_repeat": no_repeat, "contrast": contrast}
        for name, value in setting.items():
            setattr(captioner, name, value)
        scores, words = {}, 0
        for set_name, (names, refs) in dev.items():
            hyps = {n: captioner.caption_features(features[n]).text for n in names}
            s = corpus_scores(refs, hyps, ("bleu", "cider"))
            scores[set_name] = {"BLEU-4": round(s["BLEU-4"], 3), "CIDEr": round(s["CIDEr"], 4),
                                "distinct_words": len({w for h in hyps.values() for w in h.split()})}
            words += scores[set_name]["distinct_words"]
        key = " ".join(f"{name}={value}" for name, value in setting.items())
        results[key] = {**setting, "dev": scores, "criterion": round(selection_score(scores), 3),
                        "distinct_words": words}
        log.info("dev %s: %s", key, results[key])
        return results[key]

    def criterion(r):
        return r["criterion"]

    def no_worse(r, than) -> bool:
        return all(selection_score({name: scores}) >= selection_score({name: than["dev"][name]})
                   for name, scores in r["dev"].items())

    biases = TAG_BIASES if captioner.tagger else (0.0,)
    best = max((trial(lp, bias) for lp in LENGTH_PENALTIES for bias in biases), key=criterion)
    rarities = RARITIES if captioner.log_frequency is not None else (0.0,)
    plain = max([best] + [trial(best["length_penalty"], best["tag_bias"], rarity, no_repeat)
                          for no_repeat in (False, True) for rarity in rarities if rarity or no_repeat],
                key=criterion)
    chosen = plain
    if captioner.prior is not None:
        contrasted = [trial(lp, plain["tag_bias"], rarity, plain["no_repeat"], contrast)
                      for contrast in CONTRASTS for lp in CONTRAST_LENGTH_PENALTIES
                      for rarity in (CONTRAST_RARITIES if captioner.log_frequency is not None else (0.0,))]
        chosen = max([plain] + [r for r in contrasted if no_worse(r, plain)],
                     key=lambda r: (r["distinct_words"], r["criterion"]))
    return {k: chosen[k] for k in ("length_penalty", "tag_bias", "rarity", "no_repeat", "contrast")}, results


def evaluate_set(set_dir: Path, dataset, names: list[str], beam_width: int, num_threads: int,
                 tagger: Tagger | None) -> dict:
    captioner = Captioner.load(set_dir, num_threads=num_threads, tagger=tagger)
    hyps, tags, times = {}, {}, []
    for name in tqdm(names, desc=set_dir.name):
        image = load_image(dataset.image_path(name))
        started = time.perf_counter()
        caption = captioner.caption(image, beam_width=beam_width)
        times.append(1000 * (time.perf_counter() - started))
        hyps[name], tags[name] = caption.text, [t.word for t in caption.tags]
    manifest = ModelSet.load(set_dir).manifest
    result = score(references(dataset, names), hyps)
    if tagger:
        result.update(tag_precision(dataset, tags))
    result.update(ms_per_caption=round(statistics.median(times), 2), beam_width=beam_width,
                  num_threads=num_threads, bytes=sum(manifest["sizes"].values()),
                  length_penalty=captioner.length_penalty, tag_bias=captioner.tag_bias if tagger else 0.0,
                  rarity=captioner.rarity, no_repeat=captioner.no_repeat, contrast=captioner.contrast)
    return {"metrics": result, "examples": {n: {"caption": hyps[n], "tags": tags[n]} for n in names[:5]}}


def evaluate_keras(work: Path, dataset, names: list[str], beam_width: int, captioner: Captioner) -> dict:
    """The Keras float decoder on the cached features, decoded with the set's settings (no tags)."""
    decoder, vocab, _ = load_trained(work)
    row_of, features = FeatureCache(work).load()
    model = KerasStepModel(decoder)
    hyps = {}
    for name in tqdm(names, desc="keras-float"):
        decoded = captioner.decode(model, features[row_of[name]][None].astype(np.float32), beam_width)
        hyps[name] = tokens_to_text(decoded.best.tokens, vocab)
    return {"metrics": score(references(dataset, names), hyps)}


def evaluate(dataset: Dataset, work: Path, models: Path, sets: list[str], *, tagger: Tagger | None = None,
             beam_width: int = 3, num_threads: int = 2, tune: bool = True, keras: bool = True,
             split: str = "test") -> dict:
    targets = {f"{p.name}_{split}": p for p in dataset.parts or [dataset] if p.splits.get(split)}
    report: dict = {"split": split, "results": {}}
    if tune:
        decoding, table = tune_decoding(Captioner.load(models / sets[0], num_threads, tagger), dataset)
        report["decoding"] = {"chosen": decoding, "dev": table, "tuned_on": sets[0]}
        for name in sets:
            update_manifest(models / name, lambda m: m["decoding"].update(decoding))
    for target, part in targets.items():
        names = part.splits[split]
        result = report["results"][target] = {"images": len(names), "sets": {}, "examples": {}}
        for name in sets:
            done = evaluate_set(models / name, part, names, beam_width, num_threads, tagger)
            result["sets"][name] = done["metrics"]
            result["examples"][name] = done["examples"]
            update_manifest(models / name, lambda m, r=done["metrics"]: m["metrics"].update({target: r}))
        if keras and (work / "best.weights.h5").exists():
            result["sets"]["keras-float"] = evaluate_keras(
                work, part, names, beam_width, Captioner.load(models / sets[0], num_threads))["metrics"]
    return report


def markdown_table(report: dict) -> str:
    return "\n\n".join(f"{target} ({r['images']} images)\n\n" + _table(r["sets"])
                       for target, r in report["results"].items())


def _table(sets: dict) -> str:
    cols = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "distinct_words",
            "gender_error_rate", "tag_precision", "bytes", "ms_per_caption"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in sets.items():
        cells = []
        for c in cols:
            v = m.get(c, "")
            if c == "bytes" and v:
                v = f"{v / 1e6:.2f} MB"
            elif isinstance(v, float):
                v = f"{v:.3f}" if c == "CIDEr" else f"{v:.2f}"
            cells.append(str(v))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
