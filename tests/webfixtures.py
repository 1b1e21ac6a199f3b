"""Shared by tests/test_web.py and tests/test_browser.py: a real Store filled from the bundled sample
photos, a real waitress server on a free port, and a small HTTP client over a socket."""
from __future__ import annotations

import base64
import contextlib
import http.client
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from device.config import Config, WebConfig
from device.store import Store
from device.vectors import encode_for_store
from device.web import make_server
from device.web.server import WebServer

SAMPLES = Path(__file__).resolve().parent.parent / "device" / "samples"
PASSWORD = "correct horse battery staple"
DAY = 86400.0
T0 = 1_714_000_000.0  # 2024-04-24 (UTC), far from any test's "now"

# Hand-written captions (what a good model would say) and where the attention should sit (row, col).
CAPTURES = [
    ("dog_and_cats.jpg", "two dogs and two cats sit in front of a pink wall", (3, 3), "samples"),
    ("fox_in_snow.jpg", "a red fox stands in the snow", (3, 3), "samples"),
    ("cat_chelsea.jpg", "a close up of a cat with green eyes", (2, 3), "samples"),
    ("cat_in_box.jpg", "a cat sleeps in a cardboard box", (4, 3), "folder"),
    ("coffee_cup.jpg", "a cup of coffee on a wooden table", (3, 3), "folder"),
    ("boy_red_cap.jpg", "a boy in a red cap stands by the railway", (2, 3), "folder"),
    ("rocket_launch.jpg", "a rocket on a launch pad at night", (3, 3), "samples"),
]


def attention_for(words: int, centre: tuple[int, int]) -> np.ndarray:
    """A plausible attention map per word: a normalised Gaussian blob that drifts word by word."""
    yy, xx = np.mgrid[0:7, 0:7]
    maps = []
    for i in range(words):
        r, c = centre[0] + (i % 3) - 1, centre[1] + (i % 2)
        m = np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / 2.0)
        maps.append(m / m.sum())
    return np.stack(maps).astype(np.float32)


def pixel_vector(img: Image.Image) -> np.ndarray:
    """A real (if crude) image descriptor: the 8x8 colour thumbnail, centred. Photos that look alike
    get close vectors, which is all the image-similarity routes need to be tested end to end."""
    arr = np.asarray(img.convert("RGB").resize((8, 8), Image.Resampling.BILINEAR), np.float32).reshape(-1)
    return arr - arr.mean()


class PixelCaptioner:
    """The captioner interface (device/captioner.py) with a fixed caption and pixel_vector() as the
    image vector: for routes whose subject is the plumbing, not the model."""

    model_id = "pixel-test"

    def caption(self, image: Image.Image, beam_width: int = 3) -> Any:
        from device.captioner import Caption

        words = ["a", "photo"]
        return Caption("a photo", -1.0, words, attention_for(len(words), (3, 3)),
                       [{"text": "a photo", "score": -1.0}], image_vector=pixel_vector(image))


def add_sample(store: Store, i: int, *, time: float | None = None, embedder: Any = None,
               image_vector: Any = pixel_vector) -> int:
    """Store sample i. image_vector: image -> vector, the same function a search by photo will use."""
    name, caption, centre, source = CAPTURES[i % len(CAPTURES)]
    img = Image.open(SAMPLES / name).convert("RGB")
    words = caption.split()
    return store.add(
        img, time=T0 + i * DAY if time is None else time, source=source,
        original_path=f"/srv/camera/{name}" if source == "folder" else None,
        caption=caption, score=-0.5 - 0.05 * i, model_id="captioner-int8",
        beams=[{"text": caption, "score": -0.5 - 0.05 * i},
               {"text": " ".join(words[:-1]) + " outside", "score": -0.9 - 0.05 * i}],
        attention=attention_for(len(words), centre),
        **encode_for_store(None if embedder is None else embedder.embed([caption])[0], image_vector(img),
                           store.image_projection),
    )


def fill_store(data_dir: Path, embedder: Any = None, image_vector: Any = pixel_vector,
               image_projection: Any = None) -> Store:
    """One capture per sample photo, one day apart, oldest first (ids 1..7). With the real captioner's
    vectors, pass models/image-projection so they are stored as a device stores them."""
    store = Store(data_dir, image_projection=image_projection)
    for i in range(len(CAPTURES)):
        add_sample(store, i, embedder=embedder, image_vector=image_vector)
    return store


def load_real_captioner() -> Any:
    """The committed captioner model set, or None when it is not (yet) in models/."""
    models = Path(__file__).resolve().parent.parent / "models"
    if not (models / "captioner-int8" / "manifest.json").is_file():
        return None
    from device.captioner import Captioner
    from device.tagger import load_tagger

    return Captioner.load(models / "captioner-int8", num_threads=1, tagger=load_tagger(models))


def captioner_vector(captioner: Any):
    """image -> the captioner's image vector (what /api/search/photo compares against)."""
    return lambda img: captioner.caption(img, beam_width=1).image_vector


def web_config(data_dir: Path, **web: Any) -> Config:
    """The Config create_app reads: these [web] keys over the defaults (max_upload_bytes: the upload
    limit in bytes; password: what load_config reads from EDGECAP_PASSWORD), and data_dir, where the
    app keeps its session key and logged-out sessions."""
    if "max_upload_bytes" in web:
        web["max_upload_mb"] = web.pop("max_upload_bytes") / (1024 * 1024)
    return Config(data_dir=Path(data_dir), web=WebConfig(**web))


@contextlib.contextmanager
def serving(app: Any, threads: int = 8) -> Iterator[WebServer]:
    """Serve `app` with waitress on 127.0.0.1:<free port>; yields the server (`.port`, `.guard`)."""
    server = make_server(app, "127.0.0.1", 0, threads=threads)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server
    finally:
        server.stop()
        t.join(10)


@contextlib.contextmanager
def running(app: Any, threads: int = 8) -> Iterator[str]:
    """Serve `app` as `serving` does; yields the base URL."""
    with serving(app, threads) as server:
        yield f"http://127.0.0.1:{server.port}"


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def basic(password: str = PASSWORD, user: str = "edgecap") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class Client:
    """Raw HTTP/1.1 over a socket (http.client): sends exactly what the test says, nothing hidden."""

    def __init__(self, base: str, headers: dict[str, str] | None = None):
        host_port = base.split("//", 1)[1]
        self.host, port = host_port.split(":")
        self.port = int(port)
        self.headers = dict(headers or {})
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 30) -> Reply:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        h = {**self.headers, **(headers or {})}
        if self.cookies and "Cookie" not in h:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            conn.request(method, path, body=body, headers=h)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        for value in resp.headers.get_all("Set-Cookie") or []:
            name, _, rest = value.partition("=")
            self.cookies[name.strip()] = rest.split(";", 1)[0]
        return Reply(resp.status, resp.headers, data)

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
             **kw: Any) -> Reply:
        return self.request("POST", path, body=body, headers=headers, **kw)


def multipart(fields: dict[str, str] | None = None, files: dict[str, tuple[str, bytes, str]] | None = None,
              boundary: str = "edgecapTestBoundary7MA4YWxk") -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body and its Content-Type header."""
    parts: list[bytes] = []
    for k, v in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for k, (fname, data, ctype) in (files or {}).items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{fname}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def wait_until(pred, timeout: float = 10.0, every: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(every)
    return pred()


def held_bytes(folder: Path) -> int:
    """Bytes of files under `folder` this process has open, deleted ones included (O_TMPFILE)."""
    total = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            if str(fd.readlink()).startswith(str(folder)):
                total += fd.stat().st_size
        except OSError:
            continue
    return total
