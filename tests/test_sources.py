"""Sources: samples, watched folder, the Pi camera (against the picamera2 stand-in), OpenCV video/streams."""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from device.config import load_config
from device.sources import SourceError, detect_source, open_source
from device.sources.folder import FolderSource
from device.sources.samples import SAMPLES_DIR, SamplesSource

STANDIN = Path(__file__).resolve().parent / "picamera2_standin"


def cfg(**camera):
    overrides = {"camera": camera} if camera else None
    return load_config(env={}, overrides=overrides)


# ---------------------------------------------------------------- samples

def test_samples_give_each_photo_once_and_skip_stored() -> None:
    names = sorted(p.name for p in SAMPLES_DIR.glob("*.jpg"))
    assert len(names) == 9
    src = open_source(cfg(source="samples"))
    frames = list(src)
    assert [Path(f.original_path).name for f in frames] == names
    assert all(f.image.mode == "RGB" and max(f.image.size) <= 640 for f in frames)
    assert src.finished and src.read() is None

    stored = {frames[0].original_path, frames[3].original_path}
    again = list(SamplesSource(skip=lambda p: p in stored))
    assert len(again) == 7 and not stored & {f.original_path for f in again}


# ---------------------------------------------------------------- watched folder

class Clock:
    """Wall time plus an offset we can advance, so 'settle' needs no sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def jpeg_bytes(color=(200, 30, 30), size=(64, 48)) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def test_folder_reads_each_new_file_once_and_only_when_complete(tmp_path: Path) -> None:
    clock = Clock()
    src = FolderSource(tmp_path, settle=2.0, poll=0.0, clock=clock)
    assert src.read() is None

    data = jpeg_bytes()
    part = tmp_path / "a.jpg"
    part.write_bytes(data[: len(data) // 2])  # a writer is half-way through
    os.utime(part, (clock(), clock()))  # as if written at the fake clock's now
    assert src.read() is None  # just written: not settled
    clock.offset += 1.0
    with open(part, "ab") as fh:
        fh.write(data[len(data) // 2:])  # completed; the change restarts the settle time
    os.utime(part, (clock(), clock()))
    assert src.read() is None
    clock.offset += 1.0
    assert src.read() is None  # 1 s unchanged < settle
    clock.offset += 1.5
    frame = src.read()
    assert frame is not None and frame.source == "folder" and frame.original_path == str(part)
    assert frame.image.size == (64, 48)
    clock.offset += 5
    assert src.read() is None  # never twice

    # files that were there before (old mtime) are ready at once; temp and hidden names are ignored
    (tmp_path / "b.jpg").write_bytes(jpeg_bytes((0, 0, 255)))
    (tmp_path / ".c.jpg").write_bytes(data)
    (tmp_path / "d.jpg.part").write_bytes(data)
    old = time.time() - 60
    os.utime(tmp_path / "b.jpg", (old, old))
    frame = src.read()
    assert frame is not None and frame.original_path.endswith("b.jpg")
    r, _g, b = frame.image.getpixel((10, 10))
    assert b > 200 and r < 50
    assert src.read() is None

    # a file replaced under the same name is new content: read again
    (tmp_path / "b.jpg").write_bytes(jpeg_bytes((0, 255, 0)))
    os.utime(tmp_path / "b.jpg", (clock(), clock()))
    assert src.read() is None
    clock.offset += 10
    frame = src.read()
    assert frame is not None and frame.image.getpixel((10, 10))[1] > 200


def test_folder_skips_bad_files_and_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = jpeg_bytes()
    (tmp_path / "1_zero.jpg").write_bytes(b"")
    (tmp_path / "2_text.jpg").write_text("this is not an image\n")
    (tmp_path / "3_truncated.jpg").write_bytes(good[: len(good) // 3])
    corrupt = bytearray(good)
    corrupt[2:120] = b"\xff" * 118  # markers and tables destroyed
    (tmp_path / "4_corrupt.png").write_bytes(bytes(corrupt))  # wrong extension and broken
    (tmp_path / "5_good.jpg").write_bytes(good)
    (tmp_path / "notes.txt").write_text("ignored: not an image name")
    old = time.time() - 60
    for p in tmp_path.iterdir():
        os.utime(p, (old + int(p.name[0]) if p.name[0].isdigit() else old, ) * 2)
    src = FolderSource(tmp_path, settle=1.0, poll=0.0)
    with caplog.at_level(logging.WARNING, logger="device.sources.folder"):
        frames = [f for f in (src.read(), src.read()) if f is not None]
    assert [Path(f.original_path).name for f in frames] == ["5_good.jpg"]
    logged = caplog.text
    for name in ("1_zero.jpg", "2_text.jpg", "3_truncated.jpg", "4_corrupt.png"):
        assert name in logged
    assert "notes.txt" not in logged
    caplog.clear()
    assert src.read() is None and not caplog.text  # logged once, not on every scan


def test_folder_skip_callback_and_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(jpeg_bytes())
    old = time.time() - 60
    os.utime(tmp_path / "x.jpg", (old, old))
    src = FolderSource(tmp_path, settle=0.5, poll=0.0, skip=lambda p: p.endswith("x.jpg"))
    assert src.read() is None
    with pytest.raises(SourceError, match="does not exist"):
        FolderSource(tmp_path / "missing")
    with pytest.raises(SourceError, match="does not exist"):
        open_source(cfg(source="folder", folder=str(tmp_path / "missing")))
    moved = tmp_path / "sub"
    moved.mkdir()
    src = FolderSource(moved, poll=0.0)
    shutil.rmtree(moved)
    with pytest.raises(SourceError, match="cannot read"):
        src.read()


# ---------------------------------------------------------------- Pi camera via the picamera2 stand-in

def test_picamera2_source(picamera2) -> None:
    src = open_source(cfg(source="picamera2", width=320, height=240))
    assert src.live and src.name == "picamera2"
    frames = [src.read() for _ in range(3)]
    for f in frames:
        assert f.image.size == (320, 240) and f.image.mode == "RGB"
        r, g, b = f.image.getpixel((5, 5))
        assert r > 0 and g == 0 and b == 0  # libcamera's "RGB888" is B,G,R in memory: converted
    assert len({f.image.getpixel((0, 0)) for f in frames}) == 3
    calls = picamera2.STANDIN["calls"]
    assert calls[:4] == ["__init__", "create_preview_configuration", "configure", "start"]

    picamera2.STANDIN["fail_after"] = 3  # the camera is unplugged
    with pytest.raises(SourceError, match="capture failed"):
        src.read()
    src.close()
    src.close()
    assert picamera2.STANDIN["open"] == 0 and calls[-2:] == ["stop", "close"]


def test_picamera2_missing_camera(picamera2) -> None:
    picamera2.STANDIN["cameras"] = 0
    with pytest.raises(SourceError, match="Pi camera 0 cannot be opened"):
        open_source(cfg(source="picamera2"))
    assert picamera2.STANDIN["open"] == 0


def test_auto_detection_order(picamera2, caplog: pytest.LogCaptureFixture) -> None:
    c = cfg()
    kind, dev, why = detect_source(c, video_devices=list, probe_usb=lambda n: (False, "x"))
    assert (kind, dev) == ("picamera2", 0) and "imx708" in why

    picamera2.STANDIN["cameras"] = 0
    probed = []

    def probe(n: int):
        probed.append(n)
        return (n == 3, f"/dev/video{n} " + ("gives frames" if n == 3 else "cannot be opened"))

    kind, dev, why = detect_source(c, video_devices=lambda: ["/dev/video0", "/dev/video3"], probe_usb=probe)
    assert (kind, dev) == ("usb", 3) and probed == [0, 3]

    kind, dev, why = detect_source(c, video_devices=list, probe_usb=probe)
    assert kind == "samples"
    assert "picamera2 found no camera" in why and "no /dev/video* device" in why

    # the log says which it chose and why (on this machine: whatever is present)
    with caplog.at_level(logging.INFO, logger="device.sources"):
        src = open_source(c)
    src.close()
    assert "auto-detected" in caplog.text and src.name in caplog.text


def test_auto_detection_without_picamera2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails like on a PC
    kind, _, why = detect_source(cfg(), video_devices=list, probe_usb=lambda n: (False, ""))
    assert kind == "samples" and "picamera2 is not installed" in why


# ---------------------------------------------------------------- OpenCV: video file, stream, USB, Jetson

cv2 = pytest.importorskip("cv2")

COLOURS_BGR = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)]  # one per second


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    fps = 10
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    assert writer.isOpened()
    for second, colour in enumerate(COLOURS_BGR):
        for _ in range(fps):
            writer.write(np.full((48, 64, 3), colour, np.uint8))
    writer.release()
    return path


def expected_rgb(i: int) -> np.ndarray:
    return np.array(COLOURS_BGR[i][::-1], dtype=float)


def test_video_file_sampled_every_interval(video: Path) -> None:
    c = load_config(env={}, overrides={"camera": {"source": "stream", "url": str(video)},
                                       "capture": {"interval": 1.0}})
    src = open_source(c)
    assert src.name == "video" and not src.live
    frames = list(src)
    src.close()
    assert len(frames) == 5
    for i, f in enumerate(frames):
        got = np.asarray(f.image, dtype=float)[24, 32]
        assert np.abs(got - expected_rgb(i)).max() < 40, (i, got)
        assert f.original_path.endswith(f"#t={i:.3f}")

    c.capture.interval = 2.5
    assert len(list(open_source(c))) == 2  # t = 0 and 2.5 s


def test_stream_reader_keeps_newest_frame_and_reports_end(video: Path) -> None:
    from device.sources.opencv import StreamSource

    src = StreamSource(str(video))  # a file is a stream that ends: exercises the reader thread
    seen = []
    deadline = time.monotonic() + 10
    with pytest.raises(SourceError, match="ended or dropped"):
        while time.monotonic() < deadline:
            f = src.read()
            if f is not None:
                seen.append(f)
            time.sleep(0.005)
    src.close()
    assert seen and len(seen) <= 50
    last = np.asarray(seen[-1].image, dtype=float)[24, 32]
    assert np.abs(last - expected_rgb(4)).max() < 40  # the newest frame wins


def test_opencv_errors_are_source_errors(tmp_path: Path) -> None:
    from device.sources.opencv import JetsonCameraSource, UsbCameraSource, _redact, jetson_pipeline

    with pytest.raises(SourceError):
        UsbCameraSource(97, 320, 240)
    with pytest.raises(SourceError, match="does not exist"):
        open_source(load_config(env={}, overrides={"camera": {"source": "stream", "url": str(tmp_path / "x.mp4")}}))
    p = jetson_pipeline(1, 1280, 720)
    assert p.startswith("nvarguscamerasrc sensor-id=1 ! ") and "width=(int)1280" in p and "appsink" in p
    if "GStreamer:                   YES" not in cv2.getBuildInformation():
        with pytest.raises(SourceError, match="Jetson CSI camera 1"):
            JetsonCameraSource(1, 1280, 720)
    assert _redact("rtsp://admin:hunter2@cam.local/s1") == "rtsp://admin:***@cam.local/s1"
