"""What every source gives the daemon: frames, one `read()` at a time.

Sources yield frames; they never caption or store. The daemon decides when to call `read()`: every
`interval` seconds for a live camera, as fast as frames come for a folder or a video file.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Self

from PIL import Image


class SourceError(RuntimeError):
    """The source cannot give frames now (camera missing, unplugged, stream down, folder gone).

    The daemon closes the source and opens it again later with back-off; it never exits on this.
    """


@dataclass
class Frame:
    image: Image.Image  # RGB
    source: str  # "picamera2", "usb", "jetson", "stream", "video", "folder", "samples"
    original_path: str | None = None  # the file a folder/sample frame came from
    time: float = field(default_factory=time.time)  # seconds since the epoch, when it was captured


class Source:
    """Base class. `live` sources are paced by the daemon; others are drained as fast as they give."""

    name = "source"
    live = False

    def __init__(self) -> None:
        self.finished = False  # True once a finite source (samples, video file) has nothing more

    def read(self) -> Frame | None:
        """The next frame, or None when there is nothing new right now. Raises SourceError."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the device; safe to call twice."""

    def describe(self) -> str:
        return self.name

    def __iter__(self) -> Iterator[Frame]:
        """All frames until the source is finished (for finite sources and tests; no pacing)."""
        while not self.finished:
            frame = self.read()
            if frame is not None:
                yield frame

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bgr_to_image(array) -> Image.Image:
    """An OpenCV/libcamera BGR (or BGRA/BGRX) HxWxC uint8 array as an RGB PIL image."""
    import numpy as np

    if array.ndim == 2:
        return Image.fromarray(array).convert("RGB")
    rgb = np.ascontiguousarray(array[..., 2::-1])  # first three channels, reversed: B,G,R -> R,G,B
    return Image.fromarray(rgb, "RGB")
