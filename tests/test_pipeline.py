"""The one caption -> embed -> store path: a failing text embedder is handled the same way by the
capture loop, the upload route and `ingest` (the capture is stored without an embedding, one warning,
no traceback), and open_device composes what each command asks for."""
from __future__ import annotations

import io
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from webfixtures import SAMPLES, PixelCaptioner, web_config

from device.config import load_config
from device.daemon import Daemon
from device.ingest import ingest
from device.pipeline import Pipeline, StartupError, open_device
from device.sources import Frame
from device.store import Store
from device.web import create_app

PHOTOS = ["cat_chelsea.jpg", "fox_in_snow.jpg", "coffee_cup.jpg"]


class FailingEmbedder:
    """A text embedder that loaded but fails on every call (a broken runtime, memory...)."""

    model_id = "failing-test"
    dim = 384

    def embed(self, texts: list[str]) -> Any:
        raise RuntimeError("the embedder broke")


class RecordingStore:
    """A real Store that also remembers the embedding each add() was given."""

    def __init__(self, data_dir: Path) -> None:
        self.store = Store(data_dir)
        self.embeddings: list[Any] = []

    def add(self, *args: Any, **kwargs: Any) -> int:
        self.embeddings.append(kwargs.get("embedding"))
        return self.store.add(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def through_the_daemon(tmp_path: Path, store: RecordingStore) -> int:
    config = load_config(env={}, overrides={"data_dir": str(tmp_path / "data")})
    daemon = Daemon(config, Pipeline(store, PixelCaptioner(), FailingEmbedder()), threading.Event())
    for name in PHOTOS:
        daemon.handle(Frame(Image.open(SAMPLES / name).convert("RGB"), "usb", None), gated=False)
    assert daemon.stats.errors == 0
    return daemon.stats.stored


def through_an_upload(tmp_path: Path, store: RecordingStore) -> int:
    app = create_app(web_config(tmp_path / "data", auth=False), store, PixelCaptioner(), FailingEmbedder())
    client = app.test_client()
    for name in PHOTOS:
        r = client.post("/api/caption", data={"keep": "1", "image": (io.BytesIO((SAMPLES / name).read_bytes()),
                                                                      name)})
        assert r.status_code == 200, r.get_json()
        assert r.get_json()["capture"]["caption"] == "a photo"
    return len(PHOTOS)


def through_ingest(tmp_path: Path, store: RecordingStore) -> int:
    result = ingest(Pipeline(store, PixelCaptioner(), FailingEmbedder()), [str(SAMPLES / n) for n in PHOTOS])
    assert result.failed == 0
    return result.stored


@pytest.mark.parametrize("path", [through_the_daemon, through_an_upload, through_ingest])
def test_a_failing_embedder_loses_no_capture(tmp_path: Path, caplog, path) -> None:
    caplog.set_level(logging.DEBUG)
    store = RecordingStore(tmp_path / "data")
    try:
        stored = path(tmp_path, store)
        assert stored == len(PHOTOS) == store.count()  # every capture is kept, with its caption
        assert store.embeddings == [None] * len(PHOTOS)  # ... and no embedding
    finally:
        store.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "the text embedder failed" in warnings[0].getMessage()
    assert "the embedder broke" in warnings[0].getMessage()
    assert not any(r.exc_info for r in warnings)  # a line in the log, not a traceback


def test_the_embedder_recovering_is_logged(tmp_path: Path, caplog) -> None:
    class Flaky(FailingEmbedder):
        fail = True

        def embed(self, texts):
            if self.fail:
                raise RuntimeError("the embedder broke")
            return [[1.0] * 3 for _ in texts]

    emb = Flaky()
    pipeline = Pipeline(None, PixelCaptioner(), emb)
    cap = PixelCaptioner().caption(Image.new("RGB", (8, 8)))
    caplog.set_level(logging.INFO)
    assert pipeline.embed([cap]) == [None] and pipeline.embed([cap]) == [None]
    emb.fail = False
    assert pipeline.embed([cap]) == [[1.0] * 3]
    messages = [r.getMessage() for r in caplog.records if r.name == "device.pipeline"]
    assert len(messages) == 2 and "works again" in messages[1]


def test_open_device_loads_only_what_a_command_asks_for(tmp_path: Path) -> None:
    config = load_config(env={}, overrides={"data_dir": str(tmp_path / "data"), "models_dir": str(tmp_path),
                                            "model": {"embedder": "none"}})
    with open_device(config, captioner=False, embedder=False) as device:
        assert device.store.count() == 0
        assert device.captioner is device.embedder is device.pipeline is None
    with pytest.raises(StartupError, match="captioner model set 'captioner-int8' not found"):
        open_device(config)  # no models here: the same message as before, and the store is closed
    with open_device(config, captioner="optional") as device:  # `serve`: the captures without uploads
        assert device.captioner is None and device.pipeline is None


def test_an_upload_kept_on_a_running_daemon_is_announced_like_a_camera_frame(tmp_path: Path) -> None:
    """The daemon hands the web app its own pipeline, so MQTT and alerts hear of kept uploads too."""
    saved: list[int] = []
    store = Store(tmp_path / "data")
    pipeline = Pipeline(store, PixelCaptioner(), None, on_saved=saved.append)
    try:
        app = create_app(web_config(tmp_path / "data", auth=False), store, PixelCaptioner(), None, pipeline=pipeline)
        photo = (io.BytesIO((SAMPLES / PHOTOS[0]).read_bytes()), PHOTOS[0])
        kept = app.test_client().post("/api/caption", data={"keep": "1", "image": photo}).get_json()["capture"]
        photo = (io.BytesIO((SAMPLES / PHOTOS[1]).read_bytes()), PHOTOS[1])
        app.test_client().post("/api/caption", data={"image": photo})  # not kept: nothing to announce
        assert saved == [kept["id"]] and store.count() == 1
    finally:
        store.close()
