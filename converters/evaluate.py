"""Evaluate the Keras model and every exported model set through the one device decoder.

BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap) against the 5 references of each test image, the
gender-word error rate, distinct words, size on disk and milliseconds per caption (encoder + beam
search through the TFLite files). The metrics go into each manifest and docs/models.md.
"""
from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from converters.data import load_dataset
from converters.features import FeatureCache
from converters.metrics import corpus_scores, gender_error_rate
from converters.train import load_trained, references, tokens_to_text
from device.captioner import Captioner
from device.decoder import Special, beam_search
from device.modelset import ModelSet
from device.preprocess import load_image

log = logging.getLogger(__name__)
LENGTH_PENALTIES = (0.0, 0.3, 0.5, 0.7, 1.0)


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


def tune_length_penalty(captioner: Captioner, dataset, names: list[str]) -> tuple[float, dict]:
    """Pick the length penalty on dev by BLEU-4 + 100 x CIDEr (both headline metrics, equal weight)."""
    refs = references(dataset, names)
    features = {n: captioner.encode(load_image(dataset.image_path(n))) for n in tqdm(names, desc="dev encode")}
    results = {}
    for lp in LENGTH_PENALTIES:
        captioner.length_penalty = lp
        hyps = {n: captioner.caption_features(f).text for n, f in features.items()}
        s = corpus_scores(refs, hyps, ("bleu", "cider"))
        results[lp] = {"BLEU-4": round(s["BLEU-4"], 3), "CIDEr": round(s["CIDEr"], 4),
                       "criterion": round(s["BLEU-4"] + 100 * s["CIDEr"], 3)}
        log.info("dev length penalty %.1f: %s", lp, results[lp])
    best = max(results, key=lambda lp: results[lp]["criterion"])
    return best, results


def evaluate_set(set_dir: Path, dataset, names: list[str], beam_width: int, num_threads: int) -> dict:
    captioner = Captioner.load(set_dir, num_threads=num_threads)
    hyps, times = {}, []
    for name in tqdm(names, desc=set_dir.name):
        image = load_image(dataset.image_path(name))
        started = time.perf_counter()
        hyps[name] = captioner.caption(image, beam_width=beam_width).text
        times.append(1000 * (time.perf_counter() - started))
    manifest = ModelSet.load(set_dir).manifest
    result = score(references(dataset, names), hyps)
    result.update(ms_per_caption=round(statistics.median(times), 2), beam_width=beam_width,
                  num_threads=num_threads, bytes=sum(manifest["sizes"].values()),
                  length_penalty=captioner.length_penalty)
    return {"metrics": result, "examples": {n: hyps[n] for n in names[:5]}, "captions": hyps}


def evaluate_keras(work: Path, dataset, names: list[str], beam_width: int, length_penalty: float,
                   special: Special, max_len: int) -> dict:
    decoder, vocab, _ = load_trained(work)
    row_of, features = FeatureCache(work).load()
    model = KerasStepModel(decoder)
    hyps = {}
    for name in tqdm(names, desc="keras-float"):
        feats = features[row_of[name]][None].astype(np.float32)
        decoded = beam_search(model, feats, special, beam_width=beam_width, max_len=max_len,
                              length_penalty=length_penalty)
        hyps[name] = tokens_to_text(decoded.best.tokens, vocab)
    return {"metrics": score(references(dataset, names), hyps), "captions": hyps}


def evaluate(data: Path, work: Path, models: Path, sets: list[str], *, beam_width: int = 3,
             num_threads: int = 2, tune: bool = True, keras: bool = True, split: str = "test") -> dict:
    dataset = load_dataset(data)
    names = dataset.splits[split]
    first = ModelSet.load(models / sets[0]).manifest
    report: dict = {"split": split, "images": len(names), "sets": {}}
    length_penalty = first["decoding"]["length_penalty"]
    if tune:
        lp, table = tune_length_penalty(Captioner.load(models / sets[0], num_threads), dataset,
                                        dataset.splits["dev"])
        report["length_penalty"] = {"chosen": lp, "dev": table, "tuned_on": sets[0]}
        length_penalty = lp
        for name in sets:
            _update_manifest(models / name, lambda m: m["decoding"].update(length_penalty=lp))
    for name in sets:
        result = evaluate_set(models / name, dataset, names, beam_width, num_threads)
        report["sets"][name] = result["metrics"]
        report.setdefault("examples", {})[name] = result["examples"]
        _update_manifest(models / name, lambda m, r=result["metrics"]: m.update(metrics={f"flickr8k_{split}": r}))
    if keras and (work / "best.weights.h5").exists():
        report["sets"]["keras-float"] = evaluate_keras(work, dataset, names, beam_width, length_penalty,
                                                      Special(**first["special"]), first["max_len"])["metrics"]
    return report


def _update_manifest(set_dir: Path, change) -> None:
    path = set_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=1) + "\n")


def markdown_table(report: dict) -> str:
    cols = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "distinct_words",
            "gender_error_rate", "bytes", "ms_per_caption"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in report["sets"].items():
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
