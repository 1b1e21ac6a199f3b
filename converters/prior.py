"""Give each captioner set its `prior`: the average training image's feature map, for contrastive
decoding (`Contrast` in device/decoder.py).

`python -m converters prior` runs the set's own int8 encoder over a fixed sample of the training
images (both datasets) and stores the mean feature map [1,49,1280] as prior.npy (float16, 125 KB),
listed in the manifest like the TFLite files. `python -m converters export` calls it for every set
it writes. The decoding weight (`decoding.contrast`) is chosen on dev by `python -m converters evaluate`.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from device.captioner import Captioner
from device.modelset import ModelSet, write_manifest
from device.preprocess import load_image

log = logging.getLogger(__name__)

PRIOR_IMAGES = 1000  # a seeded sample: the same prior on every run, in seconds
FILE = "prior.npy"


def training_sample(dataset, count: int = PRIOR_IMAGES) -> list[Path]:
    """A fixed (seeded) sample of the training images of every dataset part."""
    names = dataset.splits["train"]
    picks = np.random.default_rng(0).choice(len(names), min(count, len(names)), replace=False)
    return [dataset.image_path(names[i]) for i in sorted(picks)]


def average_feature_map(set_dir: Path, images: list[Path]) -> np.ndarray:
    """The mean of the set's encoder output over `images`: float32 [1,49,F]."""
    captioner = Captioner.load(set_dir)
    total = None
    for path in tqdm(images, desc=f"{set_dir.name} prior"):
        features = captioner.encode(load_image(path)).astype(np.float64)
        total = features if total is None else total + features
    return (total / len(images)).astype(np.float32)


def write_priors(set_dirs: list[Path], images: list[Path]) -> None:
    """Store each set's prior and list it in its manifest (sha256 and size recomputed). The prior
    depends only on the encoder, so sets that share one (every set `export` writes) share the work."""
    by_encoder: dict[str, np.ndarray] = {}
    for set_dir in set_dirs:
        manifest = ModelSet.load(set_dir, verify=False).manifest
        encoder = manifest["sha256"][manifest["files"]["encoder"]]
        if encoder not in by_encoder:
            by_encoder[encoder] = average_feature_map(set_dir, images)
        np.save(set_dir / FILE, by_encoder[encoder].astype(np.float16))
        manifest["files"]["prior"] = FILE
        manifest["prior"] = {"images": len(images), "what": "mean encoder feature map of training images"}
        write_manifest(set_dir, manifest)
        log.info("%s: prior of %d training images", set_dir.name, len(images))
