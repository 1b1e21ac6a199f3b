"""Cameras and streams through OpenCV: USB/V4L2, a Jetson CSI camera (GStreamer), RTSP/HTTP, video files.

OpenCV (opencv-python-headless, or JetPack's build with GStreamer) is imported only here.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from .base import Frame, Source, SourceError, bgr_to_image

log = logging.getLogger(__name__)

INSTALL_HINT = "OpenCV is not installed (pip install opencv-python-headless, or edgecap[camera])"


def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise SourceError(INSTALL_HINT) from e
    return cv2


def jetson_pipeline(sensor_id: int, width: int, height: int, fps: int = 30) -> str:
    """The GStreamer pipeline for a Jetson CSI camera: ISP-processed NVMM frames to BGR for OpenCV.

    appsink keeps only the newest buffer (drop, max-buffers=1) so a capture every few seconds gets the
    current scene, not one queued seconds ago.
    """
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM), width=(int){width}, height=(int){height}, framerate=(fraction){fps}/1 ! "
        "nvvidconv ! video/x-raw, format=(string)BGRx ! "
        "videoconvert ! video/x-raw, format=(string)BGR ! "
        "appsink drop=true max-buffers=1 sync=false"
    )


def is_video_file(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


class _Capture(Source):
    """A cv2.VideoCapture opened once, closed on close()."""

    def __init__(self, target: str | int, api: int | None, what: str) -> None:
        super().__init__()
        cv2 = _cv2()
        self._what = what
        self._cap = cv2.VideoCapture(target, api) if api is not None else cv2.VideoCapture(target)
        if not self._cap.isOpened():
            self._cap.release()
            self._cap = None
            raise SourceError(f"{what} cannot be opened")

    def _require(self):
        if self._cap is None:
            raise SourceError(f"{self._what} is closed")
        return self._cap

    def close(self) -> None:
        cap, self._cap = getattr(self, "_cap", None), None
        if cap is not None:
            cap.release()

    def describe(self) -> str:
        return self._what


class UsbCameraSource(_Capture):
    name = "usb"
    live = True
    FLUSH = 4  # V4L2 drivers queue a few buffers; grab past them so the frame is current

    def __init__(self, device: int = 0, width: int = 1280, height: int = 720) -> None:
        cv2 = _cv2()
        api = cv2.CAP_V4L2 if Path(f"/dev/video{device}").exists() else None
        super().__init__(device, api, f"USB camera /dev/video{device}")
        self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self.read()  # fail now, not at the first capture, if the device gives no frames
        log.info("%s opened", self._what)

    def read(self) -> Frame | None:
        cap = self._require()
        for _ in range(self.FLUSH):
            if not cap.grab():
                raise SourceError(f"{self._what} gives no frames (unplugged?)")
        ok, array = cap.retrieve()
        if not ok or array is None:
            raise SourceError(f"{self._what} gives no frames (unplugged?)")
        return Frame(bgr_to_image(array), self.name)


class JetsonCameraSource(_Capture):
    name = "jetson"
    live = True

    def __init__(self, sensor_id: int = 0, width: int = 1280, height: int = 720) -> None:
        cv2 = _cv2()
        pipeline = jetson_pipeline(sensor_id, width, height)
        super().__init__(pipeline, cv2.CAP_GSTREAMER, f"Jetson CSI camera {sensor_id} (nvarguscamerasrc)")
        log.info("%s opened: %s", self._what, pipeline)

    def read(self) -> Frame | None:
        ok, array = self._require().read()
        if not ok or array is None:
            raise SourceError(f"{self._what} gives no frames")
        return Frame(bgr_to_image(array), self.name)


class StreamSource(_Capture):
    """An RTSP/HTTP stream. A reader thread keeps only the newest frame: network streams must be read
    continuously or their buffers fill and captures show the past (and some servers disconnect)."""

    name = "stream"
    live = True
    STALL_S = 10.0  # no new frame for this long counts as the stream being down

    def __init__(self, url: str) -> None:
        super().__init__(url, None, f"stream {_redact(url)}")
        self._lock = threading.Lock()
        self._latest = None
        self._latest_at = time.monotonic()
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="edgecap-stream", daemon=True)
        self._thread.start()
        log.info("%s opened", self._what)

    def _pump(self) -> None:
        cap = self._cap
        try:
            while not self._stop.is_set() and cap is not None:
                ok, array = cap.read()
                if not ok:
                    self._error = f"{self._what} ended or dropped"
                    return
                with self._lock:
                    self._latest, self._latest_at = array, time.monotonic()
        finally:
            if self._stop.is_set() and cap is not None and self._cap is None:
                cap.release()  # close() gave up waiting for us; release here, never under a read()

    def read(self) -> Frame | None:
        self._require()
        with self._lock:
            array, self._latest = self._latest, None
            age = time.monotonic() - self._latest_at
        if array is not None:
            return Frame(bgr_to_image(array), self.name)
        if self._error:
            raise SourceError(self._error)
        if age > self.STALL_S:
            raise SourceError(f"{self._what} gave no frame for {age:.0f} s")
        return None  # no new frame since the last read

    def close(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            self._thread.join(timeout=5)  # the pump may be blocked in read(); release after it returns
            if self._thread.is_alive():
                self._cap = None  # the pump releases it when its read() returns
                return
        super().close()


class VideoFileSource(_Capture):
    """A video file, sampled every `interval` seconds of video time, as fast as it decodes."""

    name = "video"
    live = False

    def __init__(self, path: str, interval: float) -> None:
        path = path.removeprefix("file://")
        if not Path(path).is_file():
            raise SourceError(f"video file {path} does not exist")
        super().__init__(path, None, f"video file {path}")
        self.path = path
        self.interval_ms = max(0.0, interval) * 1000.0
        self._next_ms = 0.0
        self._count = 0
        fps = self._cap.get(_cv2().CAP_PROP_FPS) or 0.0
        self._fps = fps if fps > 0 else None

    def read(self) -> Frame | None:
        cap = self._require()
        cv2 = _cv2()
        while True:
            if not cap.grab():
                self.finished = True
                return None
            index = self._count
            self._count += 1
            # position of the grabbed frame: from the frame rate when known (exact), else the container
            pos_ms = index * 1000.0 / self._fps if self._fps else cap.get(cv2.CAP_PROP_POS_MSEC)
            if pos_ms + 1e-6 >= self._next_ms:
                break
        ok, array = cap.retrieve()
        if not ok or array is None:
            self.finished = True
            return None
        self._next_ms = pos_ms + self.interval_ms if self.interval_ms else pos_ms + 1e-3
        return Frame(bgr_to_image(array), self.name, f"{self.path}#t={pos_ms / 1000:.3f}")


def _redact(url: str) -> str:
    """rtsp://user:pass@host/... -> rtsp://user:***@host/... (URLs end up in logs)."""
    if "://" in url and "@" in url.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = url.split("://", 1)
        cred, host = rest.split("@", 1)
        user = cred.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
