"""Which frames are worth storing, and how long to wait after a failure.

`ChangeGate` skips frames that barely differ from the last stored one (a still scene must not fill the
disk); `Backoff` spaces out retries of a failing camera or store.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 60.0


def signature(image: Image.Image) -> np.ndarray:
    """A 64x64 grey thumbnail in 0..1: cheap to compute, blind to sensor noise and JPEG detail."""
    small = image.convert("L").resize((64, 64), Image.BILINEAR)
    return np.asarray(small, dtype=np.float32) / 255.0


class ChangeGate:
    """Skips frames that barely differ from the last *stored* one, so a still scene doesn't fill the disk."""

    def __init__(self, min_change: float) -> None:
        self.min_change = min_change
        self._last: np.ndarray | None = None

    def check(self, image: Image.Image) -> tuple[bool, float, np.ndarray]:
        """(store it?, mean absolute difference to the last stored frame, its signature)."""
        sig = signature(image)
        if self._last is None:
            return True, 1.0, sig
        diff = float(np.abs(sig - self._last).mean())
        return diff >= self.min_change, diff, sig

    def remember(self, sig: np.ndarray) -> None:
        self._last = sig


class Backoff:
    """1 s, 2 s, 4 s ... 60 s between attempts; reset after a success."""

    def __init__(self, first: float = BACKOFF_MIN_S, cap: float = BACKOFF_MAX_S) -> None:
        self.first, self.cap = first, cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first

