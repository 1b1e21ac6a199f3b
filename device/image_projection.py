"""The image -> text projection (``models/image-projection``), applied in numpy.

It maps the captioner's pooled image features (float32 [1280]) into the text embedder's space
(MiniLM, 384-d, unit length), so a typed query is compared with the stored image vectors directly.
Trained by ``converters/projection.py``.

Hubness: some images come close to every query. ``hubness(v)`` is an image vector's mean cosine to
its ``k`` nearest reference captions (CSLS); the store keeps it per capture and text -> image
ranking subtracts ``hub_weight`` times it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.modelset import ModelSet, ModelSetError, optional_set

DEFAULT_SET = "image-projection"


@dataclass
class ImageProjection:
    model_id: str
    weight: np.ndarray  # float32 [d_in, d_out]
    bias: np.ndarray  # float32 [d_out]
    refs: np.ndarray  # float32 [n_refs, d_out]: reference caption embeddings (unit)
    hub_weight: float
    hub_k: int = 10

    @property
    def dim_in(self) -> int:
        return int(self.weight.shape[0])

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    @classmethod
    def load(cls, set_dir: str | Path) -> ImageProjection:
        ms = ModelSet.load(set_dir)
        if ms.manifest.get("kind") != "image-projection":
            raise ModelSetError(f"{set_dir}: kind is {ms.manifest.get('kind')!r}, not an image-projection")
        try:
            with np.load(ms.path("weights")) as z:
                # int8 weights with one scale per output column (quarter the size of float32)
                weight = z["weight"].astype(np.float32) * z["weight_scale"].astype(np.float32)
                bias = z["bias"].astype(np.float32)
                refs = z["refs"].astype(np.float32) / 127.0
        except (OSError, KeyError, ValueError) as e:
            raise ModelSetError(f"{ms.path('weights')}: not a projection file ({e})") from e
        if weight.ndim != 2 or bias.shape != (weight.shape[1],) or refs.ndim != 2 or refs.shape[1] != bias.size:
            raise ModelSetError(f"{ms.path('weights')}: inconsistent shapes {weight.shape}, {bias.shape}")
        hub = ms.manifest.get("hubness", {})
        return cls(ms.name, weight, bias, refs, float(hub.get("weight", 0.0)), int(hub.get("k", 10)))

    def project(self, features: np.ndarray) -> np.ndarray:
        """Pooled features [d_in] (or [n, d_in]) -> unit vectors [d_out] (or [n, d_out])."""
        x = np.asarray(features, np.float32)
        y = x @ self.weight + self.bias
        norm = np.linalg.norm(y, axis=-1, keepdims=True)
        return y / np.maximum(norm, 1e-12)

    def hubness(self, vectors: np.ndarray) -> np.ndarray | float:
        """Mean cosine of unit image vector(s) [d_out] / [n, d_out] to their k nearest references."""
        v = np.asarray(vectors, np.float32)
        out = hubness(np.atleast_2d(v), self.refs, self.hub_k)
        return float(out[0]) if v.ndim == 1 else out


def hubness(images: np.ndarray, refs: np.ndarray, k: int) -> np.ndarray:
    """Mean cosine of each unit image vector [n, d] to its ``k`` nearest reference captions [m, d]
    (CSLS). The one definition: the device stores it per capture, converters/projection.py chooses
    the hub weight and k with it on dev."""
    sims = images @ refs.T
    k = max(1, min(k, sims.shape[1]))
    return np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:].mean(axis=1)


def load_image_projection(models_dir: str | Path | None, name: str = DEFAULT_SET) -> ImageProjection | None:
    """The projection set in ``models_dir``, or None when there is none (image vectors then fall back
    to the fixed random projection of device/vectors.py: "more like this" works, text -> image does not)."""
    set_dir = optional_set(models_dir, name, "text -> image search is off")
    return None if set_dir is None else ImageProjection.load(set_dir)
