"""The whole converters pipeline on the committed dozen-image fixture (plus four photos in the COCO
subset's layout): features, one epoch, export of every variant, evaluation, and decoding through the
exported TFLite files with the device code."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("pycocoevalcap")

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "tiny_flickr"
COCO = ROOT / "tests" / "fixtures" / "tiny_coco"
SETS = ("captioner-int8", "captioner-4bit", "captioner-float")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    cmd = [sys.executable, "-m", "converters", "all", "--data", str(FIXTURE), "--coco", str(COCO),
           "--work", str(tmp / "work"),
           "--models", str(tmp / "models"), "--report", str(tmp / "report.json"),
           "--encoder-weights", "none", "--epochs", "1", "--min-count", "2", "--max-len", "12",
           "--images-per-batch", "4", "--calibration", "4", "--rare-word-weight", "0.5",
           "--patience", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return tmp, run


def test_training_leaves_checkpoint_history_and_curves(pipeline):
    tmp, _ = pipeline
    work = tmp / "work"
    state = json.loads((work / "train_state.json").read_text())
    assert [h["epoch"] for h in state["history"]] == [1]
    assert state["history"][0]["train_loss"] > 0
    train_config = json.loads((work / "decoder_config.json").read_text())["train"]
    assert train_config["rare_word_weight"] == 0.5 and train_config["patience"] == 2
    assert set(state["history"][0]["dev"]) == {"flickr8k", "coco"}  # selected on both dev splits
    assert (work / "best.weights.h5").is_file() and (work / "training_curves.png").is_file()
    assert (work / "features.done").read_text() == "16"
    vocab = json.loads((work / "vocab.json").read_text())
    assert "tabby" in vocab  # only the COCO-layout captions say it (twice)


def test_every_variant_is_exported_with_a_manifest(pipeline):
    from device.modelset import ModelSet
    tmp, _ = pipeline
    sizes = {}
    for name in SETS:
        ms = ModelSet.load(tmp / "models" / name)  # verifies every sha256
        m = ms.manifest
        assert m["kind"] == "captioner" and m["vocab"][:4] == ["<pad>", "<start>", "<end>", "<unk>"]
        assert m["tensors"]["encoder"]["inputs"]["image"] == {"dtype": "uint8", "shape": [1, 224, 224, 3]}
        assert m["tensors"]["step"]["outputs"]["logprobs"]["shape"] == [-1, len(m["vocab"])]
        assert "CIDEr" in m["metrics"]["flickr8k_test"]
        assert len(m["word_log_frequency"]) == len(m["vocab"]) and max(m["word_log_frequency"]) < 0
        assert m["files"]["prior"] == "prior.npy" and m["prior"]["images"] == 13  # every training image (of 13)
        assert np.load(ms.path("prior")).shape == (1, 49, 1280)
        sizes[name] = m["sizes"]["step.tflite"]
    # int8 weights are about a quarter of float, 4-bit weights smaller again
    assert sizes["captioner-4bit"] < sizes["captioner-int8"] < sizes["captioner-float"] / 3
    stored = ModelSet.load(tmp / "models" / "captioner-4bit").manifest["weights"]["step"]["bytes_by_dtype"]
    assert stored["int4"] > 4 * stored.get("float32", 0)  # the matrices really are stored at 4 bits


def test_evaluation_report_scores_every_set_and_the_keras_model(pipeline):
    tmp, run = pipeline
    report = json.loads((tmp / "report.json").read_text())
    sets = report["results"]["flickr8k_test"]["sets"]
    assert set(report["results"]) == {"flickr8k_test"}  # the COCO subset has no test split
    assert set(sets) == set(SETS) | {"keras-float"}
    for metrics in sets.values():
        assert {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "gender_error_rate", "distinct_words"} <= set(metrics)
    assert sets["captioner-int8"]["ms_per_caption"] > 0
    chosen = report["decoding"]["chosen"]
    assert chosen["length_penalty"] in (0.0, 0.3, 0.5, 0.7, 1.0, 1.3, 1.6) and chosen["tag_bias"] == 0.0  # no tagger
    assert chosen["rarity"] in (0.0, 0.025, 0.05, 0.075, 0.1) and chosen["contrast"] in (0.0, 0.05, 0.1, 0.15)
    assert {t["contrast"] for t in report["decoding"]["dev"].values()} == {0.0, 0.05, 0.1, 0.15}
    assert {(t["rarity"], t["no_repeat"]) for t in report["decoding"]["dev"].values()} == {
        (r, n) for r in (0.0, 0.025, 0.05, 0.075, 0.1) for n in (False, True)}
    assert set(next(iter(report["decoding"]["dev"].values()))["dev"]) == {"flickr8k", "coco"}
    assert "| captioner-int8 |" in run.stdout


def test_exported_files_caption_through_the_device_decoder(pipeline):
    from device.captioner import Captioner
    from device.preprocess import load_image
    tmp, _ = pipeline
    for name in SETS:
        captioner = Captioner.load(tmp / "models" / name, num_threads=1)
        caption = captioner.caption(load_image(FIXTURE / "Images" / "cat_in_box.jpg"), beam_width=3)
        assert caption.words and all(w in captioner.vocab for w in caption.words)
        assert caption.attention.shape == (len(caption.words), 7, 7)
        assert abs(float(caption.attention[0].sum()) - 1.0) < 1e-3
        assert caption.beams[0]["text"] == caption.text and len(caption.beams) <= 3
