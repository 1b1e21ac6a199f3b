"""The image -> text projection (``models/image-projection``), applied in numpy.

It maps the captioner's pooled image features (float32 [1280]) into the text embedder's space
(MiniLM, 384-d, unit length), so a typed query is compared with the stored image vectors directly.
Trained by ``converters/projection.py``; see there for the hubness correction ``query_for_images``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.modelset import ModelSet, ModelSetError

log = logging.getLogger(__name__)

DEFAULT_SET = "image-projection"


@dataclass
class ImageProjection:
    model_id: str
    weight: np.ndarray  # float32 [d_in, d_out]
    bias: np.ndarray  # float32 [d_out]
    ref_mean: np.ndarray  # float32 [d_out]: mean embedding of the reference captions
    hub_weight: float

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
                weight = z["weight"].astype(np.float32)
                bias = z["bias"].astype(np.float32)
                ref_mean = z["ref_mean"].astype(np.float32)
        except (OSError, KeyError, ValueError) as e:
            raise ModelSetError(f"{ms.path('weights')}: not a projection file ({e})") from e
        if weight.ndim != 2 or bias.shape != (weight.shape[1],) or ref_mean.shape != bias.shape:
            raise ModelSetError(f"{ms.path('weights')}: inconsistent shapes {weight.shape}, {bias.shape}")
        hub = float(ms.manifest.get("hubness", {}).get("weight", 0.0))
        return cls(ms.name, weight, bias, ref_mean, hub)

    def project(self, features: np.ndarray) -> np.ndarray:
        """Pooled features [d_in] (or [n, d_in]) -> unit vectors [d_out] (or [n, d_out])."""
        x = np.asarray(features, np.float32)
        y = x @ self.weight + self.bias
        norm = np.linalg.norm(y, axis=-1, keepdims=True)
        return y / np.maximum(norm, 1e-12)

    def query_for_images(self, query: np.ndarray) -> np.ndarray:
        """A text query vector, hubness-corrected for ranking image vectors (see the converter)."""
        return np.asarray(query, np.float32) - self.hub_weight * self.ref_mean


def load_image_projection(models_dir: str | Path | None, name: str = DEFAULT_SET) -> ImageProjection | None:
    """The projection set in ``models_dir``, or None when there is none (image vectors then fall back
    to the store's fixed random projection: "more like this" works, text -> image does not)."""
    if models_dir is None:
        return None
    set_dir = Path(models_dir) / name
    if not (set_dir / "manifest.json").is_file():
        log.info("no image projection at %s: text -> image search is off", set_dir)
        return None
    return ImageProjection.load(set_dir)
