"""Extract MobileNetV2 feature maps once into a resumable float16 cache.

work/features.f16  [N, 49, 1280] memory-mapped, rows in the order of work/features.txt;
work/features.done counts the rows written, so a killed run picks up where it stopped. Asking for more
images later (a second dataset) appends their rows and keeps the ones already extracted.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from device.preprocess import load_image, to_model_input

log = logging.getLogger(__name__)
POSITIONS, CHANNELS = 49, 1280


class FeatureCache:
    def __init__(self, work: Path):
        self.names_file = Path(work) / "features.txt"
        self.data_file = Path(work) / "features.f16"
        self.done_file = Path(work) / "features.done"

    def names(self) -> list[str]:
        return self.names_file.read_text().split()

    def done(self) -> int:
        return int(self.done_file.read_text()) if self.done_file.exists() else 0

    def open(self, mode: str = "r") -> np.memmap:
        return np.memmap(self.data_file, dtype=np.float16, mode=mode,
                         shape=(len(self.names()), POSITIONS, CHANNELS))

    def load(self) -> tuple[dict[str, int], np.ndarray]:
        """(name -> row, the whole cache in memory as float16)."""
        names = self.names()
        if self.done() < len(names):
            raise RuntimeError(f"{self.data_file}: only {self.done()} of {len(names)} rows extracted; "
                               "run `python -m converters features` again to finish")
        return {n: i for i, n in enumerate(names)}, np.array(self.open())


def extract(image_paths: list[Path], work: Path, encoder, batch_size: int = 32) -> FeatureCache:
    """Run the float Keras encoder over every image, appending to the cache; resumable."""
    work.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache(work)
    by_name = {p.name: p for p in image_paths}
    old = cache.names() if cache.names_file.exists() else []
    if old and cache.done() == len(old) and set(old) <= by_name.keys():
        # A complete cache of some of these images: keep its rows and append the others.
        known = set(old)
        image_paths = [by_name[n] for n in old] + [p for p in image_paths if p.name not in known]
    names = [p.name for p in image_paths]
    if old != names:
        if names[:len(old)] != old:
            cache.done_file.write_text("0")
        cache.names_file.write_text("\n".join(names) + "\n")
        with open(cache.data_file, "ab") as f:  # grow (or create) the file to the new row count
            f.truncate(len(names) * POSITIONS * CHANNELS * 2)
    start = cache.done()
    if start >= len(names):
        log.info("feature cache complete (%d images)", len(names))
        return cache
    data = cache.open("r+")
    with tqdm(total=len(names), initial=start, desc="features", unit="img") as bar:
        for i in range(start, len(names), batch_size):
            batch = np.stack([to_model_input(load_image(p)) for p in image_paths[i:i + batch_size]])
            feats = encoder(batch.astype(np.float32), training=False).numpy()
            data[i:i + len(batch)] = feats.reshape(len(batch), POSITIONS, CHANNELS).astype(np.float16)
            data.flush()
            cache.done_file.write_text(str(i + len(batch)))
            bar.update(len(batch))
    return cache
