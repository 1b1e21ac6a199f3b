"""The Raspberry Pi camera through picamera2 (libcamera). picamera2 is imported only here.

Install on Raspberry Pi OS with `sudo apt install python3-picamera2` (a venv needs
`--system-site-packages` to see it).
"""
from __future__ import annotations

import logging

from .base import Frame, Source, SourceError, bgr_to_image

log = logging.getLogger(__name__)


def list_cameras() -> list[dict]:
    """picamera2's camera list; raises ImportError when picamera2 is not installed."""
    from picamera2 import Picamera2

    return list(Picamera2.global_camera_info())


class PiCameraSource(Source):
    name = "picamera2"
    live = True

    def __init__(self, camera_num: int = 0, width: int = 1280, height: int = 720) -> None:
        super().__init__()
        try:
            from picamera2 import Picamera2
        except ImportError as e:
            raise SourceError(
                "picamera2 is not installed (on Raspberry Pi OS: sudo apt install python3-picamera2)"
            ) from e
        self.camera_num = camera_num
        self._cam = None
        try:
            self._cam = Picamera2(camera_num)
            # A preview configuration keeps the sensor streaming at the requested size, so exposure and
            # white balance stay settled between captures and a capture costs one frame, not a mode switch.
            # "RGB888" is libcamera's name for 24-bit pixels stored B, G, R in memory.
            config = self._cam.create_preview_configuration(main={"size": (width, height), "format": "RGB888"})
            self._cam.configure(config)
            self._cam.start()
        except Exception as e:  # picamera2 raises RuntimeError, IndexError, OSError... for a missing camera
            self.close()
            raise SourceError(f"Pi camera {camera_num} cannot be opened: {e}") from e
        log.info("Pi camera %d started at %dx%d", camera_num, width, height)

    def read(self) -> Frame | None:
        if self._cam is None:
            raise SourceError("Pi camera is closed")
        try:
            array = self._cam.capture_array("main")
        except Exception as e:
            raise SourceError(f"Pi camera {self.camera_num} capture failed: {e}") from e
        if array is None or getattr(array, "ndim", 0) < 2 or array.size == 0:
            raise SourceError(f"Pi camera {self.camera_num} returned an empty frame")
        return Frame(bgr_to_image(array), self.name)

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is None:
            return
        for step in (cam.stop, cam.close):
            try:
                step()
            except Exception as e:  # noqa: BLE001 - closing a vanished camera must not raise
                log.debug("Pi camera %s: %s", step.__name__, e)

    def describe(self) -> str:
        return f"Pi camera {self.camera_num} (picamera2)"
