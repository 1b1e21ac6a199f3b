"""The sample photos bundled with the package: the default when there is no camera.

Each photo is given once (and not at all when the store already has it), so a new user sees the whole
system work, and a restart does not fill the store with copies.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from device.preprocess import BadImageError, load_image

from .base import Frame, Source

log = logging.getLogger(__name__)

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def sample_paths(folder: Path = SAMPLES_DIR) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class SamplesSource(Source):
    name = "samples"
    live = False

    def __init__(self, folder: Path = SAMPLES_DIR, skip: Callable[[str], bool] | None = None) -> None:
        super().__init__()
        self.folder = Path(folder)
        self._pending = sample_paths(self.folder) if self.folder.is_dir() else []
        if not self._pending:
            log.warning("no sample images in %s", self.folder)
        self._skip = skip

    def read(self) -> Frame | None:
        while self._pending:
            path = self._pending.pop(0)
            if self._skip is not None and self._skip(str(path)):
                log.debug("sample %s is already stored", path.name)
                continue
            try:
                image = load_image(path)
            except BadImageError as e:
                log.warning("skipping sample: %s", e)
                continue
            return Frame(image, self.name, str(path))
        self.finished = True
        return None

    def describe(self) -> str:
        return f"samples ({self.folder})"
