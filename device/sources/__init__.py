"""Frame sources: cameras, streams, video files, a watched folder, the bundled samples.

`open_source(config)` opens the configured one; with `source = "auto"` it picks the Pi camera, then a USB
camera, then the samples, and logs which it chose and why. Hardware libraries (picamera2, OpenCV) are
imported only inside the source that needs them.
"""
from __future__ import annotations

import glob
import logging
import re
from collections.abc import Callable

from device.config import Config

from .base import Frame, Source, SourceError

log = logging.getLogger(__name__)

__all__ = ["Frame", "Source", "SourceError", "detect_source", "open_source"]

USB_PROBE_LIMIT = 4  # a Pi 5 lists a dozen /dev/video* nodes for its ISP and codecs; only try a few


def _video_devices() -> list[str]:
    def number(p: str) -> int:
        m = re.search(r"(\d+)$", p)
        return int(m.group(1)) if m else 1 << 30

    return sorted(glob.glob("/dev/video*"), key=number)


def _probe_usb(device: int) -> tuple[bool, str]:
    """Open /dev/video{device} and read one frame; (ok, why)."""
    from .opencv import UsbCameraSource

    try:
        cam = UsbCameraSource(device, 320, 240)
    except SourceError as e:
        return False, str(e)
    cam.close()
    return True, f"/dev/video{device} gives frames"


def detect_source(
    config: Config,
    video_devices: Callable[[], list[str]] = _video_devices,
    probe_usb: Callable[[int], tuple[bool, str]] = _probe_usb,
) -> tuple[str, int, str]:
    """Choose a source for `source = "auto"`: (kind, device number, the reason in words)."""
    reasons: list[str] = []
    try:
        from .picamera2 import list_cameras

        cameras = list_cameras()
    except ImportError:
        reasons.append("picamera2 is not installed")
    except Exception as e:  # noqa: BLE001 - libcamera raises anything when no camera stack is present
        reasons.append(f"picamera2 cannot list cameras ({e})")
    else:
        if cameras:
            model = cameras[0].get("Model", "a camera") if isinstance(cameras[0], dict) else "a camera"
            return "picamera2", 0, f"picamera2 found {model}"
        reasons.append("picamera2 found no camera")

    devices = video_devices()
    if not devices:
        reasons.append("no /dev/video* device")
    else:
        try:
            import cv2  # noqa: F401
        except ImportError:
            reasons.append(f"{devices[0]} exists but OpenCV is not installed (pip install opencv-python-headless)")
        else:
            numbers = []
            for d in devices:
                m = re.search(r"(\d+)$", d)
                if m:
                    numbers.append(int(m.group(1)))
            preferred = config.camera.device
            order = ([preferred] if preferred in numbers else []) + [n for n in numbers if n != preferred]
            for n in order[:USB_PROBE_LIMIT]:
                ok, why = probe_usb(n)
                if ok:
                    return "usb", n, why
                reasons.append(why)
    return "samples", 0, "; ".join(reasons) if reasons else "no camera found"


def open_source(config: Config, skip: Callable[[str], bool] | None = None) -> Source:
    """Open the configured source. `skip(original_path)` says a file is already stored (folder, samples).

    Raises SourceError when the source cannot be opened (the daemon retries with back-off).
    """
    cam = config.camera
    kind, device = cam.source, cam.device
    if kind == "auto":
        kind, device, why = detect_source(config)
        log.info("camera: auto-detected %s (%s)", kind, why)
    if kind == "picamera2":
        from .picamera2 import PiCameraSource

        return PiCameraSource(device, cam.width, cam.height)
    if kind == "usb":
        from .opencv import UsbCameraSource

        return UsbCameraSource(device, cam.width, cam.height)
    if kind == "jetson":
        from .opencv import JetsonCameraSource

        return JetsonCameraSource(device, cam.width, cam.height)
    if kind == "stream":
        from .opencv import StreamSource, VideoFileSource, is_video_file

        if is_video_file(cam.url):
            return VideoFileSource(cam.url, config.capture.interval)
        return StreamSource(cam.url)
    if kind == "folder":
        from .folder import FolderSource

        return FolderSource(cam.folder, settle=cam.settle, skip=skip, poll=max(0.05, min(1.0, config.capture.interval)))
    if kind == "samples":
        from .samples import SamplesSource

        return SamplesSource(skip=skip)
    raise SourceError(f"unknown source {kind!r}")  # config validation makes this unreachable
