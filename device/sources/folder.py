"""A watched folder: images other tools drop in (motion, rpicam-still --timelapse, an FTP upload).

Each new file is read once, and only after it has stopped changing for `settle` seconds, so a file
still being written is never read half-way. Polling (no inotify) keeps it portable and dependency-free;
at one scan per second a folder of a few thousand files costs next to nothing.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from device.preprocess import BadImageError, load_image

from .base import Frame, Source, SourceError
from .samples import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

# Names editors and uploaders use while writing; they get renamed when complete.
_TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", "~")


class FolderSource(Source):
    name = "folder"
    live = False

    def __init__(
        self,
        folder: str | Path,
        settle: float = 1.0,
        skip: Callable[[str], bool] | None = None,
        poll: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.folder = Path(folder).expanduser()
        self.settle = settle
        self.poll = poll
        self._skip = skip
        self._clock = clock
        self._watch: dict[str, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, first seen so)
        self._done: dict[str, tuple[int, int]] = {}  # path -> (size, mtime_ns) when read or skipped
        self._ready: list[str] = []
        self._last_scan = float("-inf")
        if not self.folder.is_dir():
            raise SourceError(f"watched folder {self.folder} does not exist or is not a folder")
        log.info("watching %s for new images (settle %.1f s)", self.folder, settle)

    def _scan(self) -> None:
        now = self._clock()
        try:
            entries = list(os.scandir(self.folder))
        except OSError as e:
            raise SourceError(f"cannot read watched folder {self.folder}: {e.strerror or e}") from e
        present = set()
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.endswith(_TEMP_SUFFIXES):
                continue
            if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except OSError:
                continue  # vanished between listing and stat
            path = entry.path
            present.add(path)
            sig = (st.st_size, st.st_mtime_ns)
            if self._done.get(path) == sig:
                continue
            seen = self._watch.get(path)
            if seen is None or seen[:2] != sig:
                self._watch[path] = (*sig, now)
                seen = self._watch[path]
            # Ready once unchanged for `settle` seconds: either we watched it stay the same that long,
            # or its modification time is already that old (files present before we started).
            unchanged_for = max(now - seen[2], now - st.st_mtime_ns / 1e9)
            if unchanged_for >= self.settle and path not in self._ready:
                self._ready.append(path)
        # forget files that were removed, so the maps stay as small as the folder
        for d in (self._watch, self._done):
            for path in [p for p in d if p not in present]:
                del d[path]
        self._ready = [p for p in self._ready if p in present]
        self._ready.sort(key=lambda p: (self._watch.get(p, (0, 0, 0))[1], p))  # oldest first
        self._last_scan = now

    def read(self) -> Frame | None:
        if not self._ready and self._clock() - self._last_scan >= self.poll:
            self._scan()
        while self._ready:
            path = self._ready.pop(0)
            size, mtime_ns, _ = self._watch.pop(path)
            self._done[path] = (size, mtime_ns)
            if self._skip is not None and self._skip(path):
                log.debug("%s is already stored", path)
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
                # changed again since it looked settled: watch it again
                del self._done[path]
                continue
            try:
                image = load_image(path)
            except BadImageError as e:
                log.warning("skipping %s", e)
                continue
            return Frame(image, self.name, path, st.st_mtime)
        return None

    def describe(self) -> str:
        return f"folder {self.folder}"
