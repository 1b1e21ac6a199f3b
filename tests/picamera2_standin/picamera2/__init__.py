"""Stand-in for picamera2 with the real library's API surface used by edgecap (see ../README.md)."""
from __future__ import annotations

import copy
import os
from typing import Any

import numpy as np


# Test hooks: not part of picamera2.
def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else default


# Environment variables set these for subprocesses (edgecap run under test).
STANDIN: dict[str, Any] = {
    "cameras": _env_int("PICAMERA2_STANDIN_CAMERAS", 1),  # how many cameras global_camera_info() reports
    "fail_after": _env_int("PICAMERA2_STANDIN_FAIL_AFTER", None),  # capture_array raises after this many
    "calls": [],  # names of the methods called, in order
    "open": 0,  # Picamera2 objects not closed yet
}

_FORMATS = {"RGB888": 3, "BGR888": 3, "XRGB8888": 4, "XBGR8888": 4}


def reset() -> None:
    STANDIN.update(cameras=1, fail_after=None, calls=[], open=0)


class Picamera2:
    def __init__(self, camera_num: int = 0, tuning: Any = None) -> None:
        STANDIN["calls"].append("__init__")
        cams = self.global_camera_info()
        if camera_num >= len(cams):
            # picamera2 fails with an IndexError ("list index out of range") or RuntimeError here
            raise IndexError("list index out of range")
        self.camera_num = camera_num
        self.camera_config: dict | None = None
        self.started = False
        self.closed = False
        self._captures = 0
        STANDIN["open"] += 1

    @staticmethod
    def global_camera_info() -> list[dict]:
        return [
            {"Model": "imx708", "Location": 2, "Rotation": 180, "Id": f"/base/soc/i2c0mux/i2c@1/imx708@1a/{i}",
             "Num": i}
            for i in range(STANDIN["cameras"])
        ]

    def _make_config(self, use_case: str, main: dict | None, **kwargs: Any) -> dict:
        main = dict(main or {})
        size = tuple(main.get("size", (640, 480) if use_case == "preview" else (4608, 2592)))
        fmt = main.get("format", "XBGR8888")
        if fmt not in _FORMATS:
            raise RuntimeError(f"Format {fmt} not supported by this stand-in")
        if len(size) != 2 or min(size) <= 0:
            raise RuntimeError(f"bad size {size}")
        return {"use_case": use_case, "main": {"size": size, "format": fmt}, "buffer_count": 4, **kwargs}

    def create_preview_configuration(self, main: dict | None = None, lores: Any = None, raw: Any = None,
                                     **kwargs: Any) -> dict:
        STANDIN["calls"].append("create_preview_configuration")
        return self._make_config("preview", main)

    def create_still_configuration(self, main: dict | None = None, lores: Any = None, raw: Any = None,
                                   **kwargs: Any) -> dict:
        STANDIN["calls"].append("create_still_configuration")
        return self._make_config("still", main)

    def configure(self, camera_config: dict | str | None = None) -> None:
        STANDIN["calls"].append("configure")
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        if not isinstance(camera_config, dict):
            raise TypeError("stand-in only accepts configuration dicts")
        self.camera_config = copy.deepcopy(camera_config)

    def start(self, config: dict | None = None, show_preview: bool = False) -> None:
        STANDIN["calls"].append("start")
        if config is not None:
            self.configure(config)
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True

    def capture_array(self, name: str = "main", wait: Any = None, signal_function: Any = None) -> np.ndarray:
        STANDIN["calls"].append("capture_array")
        if not self.started or self.camera_config is None:
            raise RuntimeError("Camera is not running")
        if name not in self.camera_config:
            raise RuntimeError(f"Stream {name!r} is not configured")
        limit = STANDIN["fail_after"]
        if limit is not None and self._captures >= limit:
            raise RuntimeError("Device or resource busy: camera frontend has timed out")
        self._captures += 1
        w, h = self.camera_config[name]["size"]
        fmt = self.camera_config[name]["format"]
        # a pure red scene whose brightness changes per capture; stored B, G, R for RGB888
        red = np.uint8((60 * self._captures) % 256)
        if fmt in ("RGB888", "XRGB8888"):  # memory order B, G, R(, X)
            px = [0, 0, red] + ([255] if _FORMATS[fmt] == 4 else [])
        else:  # BGR888 / XBGR8888: memory order R, G, B(, X)
            px = [red, 0, 0] + ([255] if _FORMATS[fmt] == 4 else [])
        arr = np.empty((h, w, _FORMATS[fmt]), dtype=np.uint8)
        arr[...] = np.array(px, dtype=np.uint8)
        return arr

    def stop(self) -> None:
        STANDIN["calls"].append("stop")
        self.started = False

    def close(self) -> None:
        STANDIN["calls"].append("close")
        if not self.closed:
            self.closed = True
            STANDIN["open"] -= 1
