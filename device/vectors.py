"""Vector encodings: how caption embeddings and image vectors become the int8 bytes the store keeps.

One place, so the writer (``Pipeline.save``, repair) and the readers (the search cache, "more like
this") agree. The store takes the bytes as they are (``Store.add(embedding=, image_vector=,
image_hub=)``); ``encode_for_store`` makes those three arguments from raw vectors.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

EMBEDDING_SCALE = 127.0
IMAGE_VECTOR_DIM = 512  # int8 bytes per capture after the random projection below (issue: <= 1 KB)


def encode_embedding(vec: Any) -> bytes:
    """A unit text embedding (float [d]) -> int8 bytes, value * 127 rounded."""
    arr = np.asarray(vec, dtype=np.float32).reshape(-1)
    return np.clip(np.rint(arr * EMBEDDING_SCALE), -127, 127).astype(np.int8).tobytes()


def decode_embedding(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.int8).astype(np.float32) / EMBEDDING_SCALE


_projection_cache: dict[int, np.ndarray] = {}


def _projection(dim_in: int) -> np.ndarray:
    """A fixed random +-1 matrix [dim_in, IMAGE_VECTOR_DIM] from a hash of (row, column).

    Johnson-Lindenstrauss: cosines survive a random projection to 512 dimensions within about
    +-0.05, and 512 int8 values fit the 1 KB budget where 1280 do not. The matrix comes from
    splitmix64 of the index, not from numpy's RNG, so it can never change with a numpy upgrade
    (stored vectors would silently stop matching new ones).
    """
    mat = _projection_cache.get(dim_in)
    if mat is None:
        idx = np.arange(dim_in * IMAGE_VECTOR_DIM, dtype=np.uint64)
        with np.errstate(over="ignore"):
            z = idx + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
        signs = np.where((z >> np.uint64(63)) == 1, 1.0, -1.0).astype(np.float32)
        mat = signs.reshape(dim_in, IMAGE_VECTOR_DIM)
        _projection_cache[dim_in] = mat
    return mat


def encode_image_vector(vec: Any, projection: Any = None) -> bytes:
    """Image features (float32 [1280] mean-pooled MobileNetV2) -> at most 1 KB of int8.

    With the trained image projection (``device.image_projection``, models/image-projection) the
    features go into the text embedder's space (384 bytes), where typed queries can rank them.
    Without it, vectors longer than 1024 are projected to 512 dimensions (see ``_projection``), good
    for "more like this" only. Then the vector is L2-normalised and quantised like the text
    embeddings. The byte length identifies the format (the search cache skips the other one).
    """
    arr = np.asarray(vec, dtype=np.float32).reshape(-1)
    if projection is not None and arr.size == projection.dim_in:
        arr = projection.project(arr)
    elif arr.size > 1024:
        arr = arr @ _projection(arr.size)
    norm = float(np.linalg.norm(arr))
    if not math.isfinite(norm) or norm == 0.0:
        arr = np.zeros_like(arr)
    else:
        arr = arr / norm
    return encode_embedding(arr)


def image_hub(blob: bytes, projection: Any) -> float:
    """The hubness of an encoded image vector (see device/image_projection.py), measured on the
    stored int8 values as the search cache sees them; 0 when the vector is not in the projection's
    space (no projection, or the random one)."""
    if projection is None or len(blob) != projection.dim:
        return 0.0
    return float(projection.hubness(decode_embedding(blob)))


def encode_for_store(embedding: Any = None, image_vector: Any = None, projection: Any = None) -> dict[str, Any]:
    """``Store.add``'s ``embedding``, ``image_vector`` and ``image_hub`` arguments from raw vectors: a
    unit caption embedding (float [d]) and the captioner's pooled image features (float32 [1280]),
    either None. ``projection``: the store's ``image_projection``."""
    emb_blob = None if embedding is None else encode_embedding(embedding)
    img_blob = None if image_vector is None else encode_image_vector(image_vector, projection)
    hub = 0.0 if img_blob is None else image_hub(img_blob, projection)
    return {"embedding": emb_blob, "image_vector": img_blob, "image_hub": hub}
