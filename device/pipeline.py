"""The one composition root: `open_device(config)` opens the store and loads the models the way every
command does, and `Pipeline` is the one caption -> embed -> store path (daemon, ingest, upload, repair).

Start-up problems a user must fix raise `StartupError`, whose message says what to do. Optional models
(text embedder, image projection, object tags) that are missing or broken are logged and left out:
capturing goes on without them.
"""
from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from device.config import Config
from device.metrics import Histogram
from device.sources import Frame
from device.vectors import encode_for_store

log = logging.getLogger(__name__)

OPTIONAL: Literal["optional"] = "optional"  # open_device(captioner=OPTIONAL): go on without one


class StartupError(RuntimeError):
    """Start-up cannot go on (models missing, data folder not writable...); the message says what to do."""


# ---------------------------------------------------------------------------------------------- models

def load_captioner(models_dir: Path, name: str, num_threads: int) -> Any:
    """The captioner model set `name` (a folder in models_dir, or a path). Raises StartupError."""
    from device.modelset import ModelSetError, available_sets, find_set, set_path

    path = find_set(models_dir, name)
    if path is None:
        sets = available_sets(models_dir, kind="captioner")
        hint = f"available: {', '.join(sets)}" if sets else f"no captioner sets in {models_dir}"
        raise StartupError(
            f"captioner model set {name!r} not found at {set_path(models_dir, name)} ({hint}); set [model] "
            "captioner, or models_dir / EDGECAP_MODELS_DIR"
        )
    from device.captioner import Captioner
    from device.tagger import load_tagger

    try:
        tagger = load_tagger(models_dir)
    except ModelSetError as e:  # optional, like the image projection: capture on without tags
        log.warning("object tags are off: %s (reinstall models/imagenet-tags)", e)
        tagger = None
    try:
        return Captioner.load(path, num_threads=num_threads, tagger=tagger)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise StartupError(f"cannot load captioner {path}: {e}") from e


def load_text_embedder(config: Config) -> Any | None:
    """The embedder for captions, or None: search is then keyword-only. A broken set is logged as an
    error (as `edgecap doctor` warns about it) but does not stop capturing."""
    name = config.model.embedder
    if name == "none":
        return None
    from device.embedder import load_embedder

    try:
        return load_embedder(config.models_dir, name, num_threads=config.model.num_threads)
    except (OSError, ValueError, RuntimeError) as e:
        log.error("cannot load embedder %r (%s): search is keyword-only and new captures get no caption "
                  "embedding until it is fixed (reinstall the model set; `edgecap doctor` checks it)", name, e)
        return None


def load_projection(models_dir: Path | None) -> Any | None:
    """models/image-projection (text -> image search), or None when it is missing or broken."""
    from device.image_projection import load_image_projection
    from device.modelset import ModelSetError

    try:
        return load_image_projection(models_dir)
    except (ModelSetError, OSError, ValueError) as e:
        # Captures go on (their image vectors then only serve "more like this"), as doctor warns.
        log.error("cannot load the image projection (%s): typed searches will not find new captures by "
                  "their image until it is fixed (reinstall the model set; `edgecap doctor` checks it)", e)
        return None


def open_store(data_dir: Path, models_dir: Path | None = None, *, projection: Any = None) -> Any:
    """The store; with `models_dir`, image vectors go through models/image-projection when present
    (text -> image search). `projection`: one already loaded (then `models_dir` is not read)."""
    from device.store import Store, StoreError

    if projection is None and models_dir is not None:
        projection = load_projection(models_dir)
    try:
        return Store(data_dir, image_projection=projection)
    except StoreError as e:
        raise StartupError(f"{e} (set data_dir / --data-dir / EDGECAP_DATA_DIR)") from e
    except (OSError, sqlite3.Error) as e:
        raise StartupError(f"cannot open the store in {data_dir}: {e} (set data_dir / --data-dir)") from e


# ---------------------------------------------------------------------------------------------- pipeline

def embedding_text(cap: Any) -> str:
    """What the text embedder sees of a caption: its text, then its object tags."""
    words = [t.word for t in getattr(cap, "tags", [])]
    return f"{cap.text}. {', '.join(words)}" if words else cap.text


@dataclass
class Pipeline:
    """Caption, embed and store one image: the one path shared by the daemon, `ingest`, uploads,
    `repair` and tests."""

    store: Any
    captioner: Any
    embedder: Any | None
    beam_width: int = 3
    # Called with each new capture's id once it is committed (EventHub.submit: must not block).
    on_saved: Callable[[int], None] | None = None
    caption_seconds: Histogram = field(default_factory=Histogram)
    embedder_failing: bool = False  # the last embed() failed: warn once, say when it works again

    def caption(self, image: Image.Image) -> Any:
        t0 = time.perf_counter()
        cap = self.captioner.caption(image, beam_width=self.beam_width)
        self.caption_seconds.observe(time.perf_counter() - t0)
        return cap

    def embed(self, caps: list[Any]) -> list[np.ndarray | None]:
        """Each caption's embedding, its tag words included: a query for "cat" comes near a capture
        tagged cat even when the caption missed it.

        The one policy for a failing text embedder: None for every caption of the call, a warning the
        first time (not once per frame), and the captures are stored all the same. The caption is what
        a capture is for; keyword search still finds it, and the embedding is optional.
        """
        if self.embedder is None or not caps:
            return [None] * len(caps)
        try:
            vectors = list(self.embedder.embed([embedding_text(c) for c in caps]))
        except Exception as e:  # any failure of the optional model: the captures must not be lost
            if not self.embedder_failing:
                log.warning("the text embedder failed (%s: %s): captures are stored without a caption "
                            "embedding (keyword search still finds them) until it works again",
                            type(e).__name__, e)
            log.debug("text embedder failure", exc_info=True)
            self.embedder_failing = True
            return [None] * len(caps)
        if self.embedder_failing:
            log.info("the text embedder works again")
            self.embedder_failing = False
        return vectors

    def save(self, image: Image.Image, cap: Any, embedding: np.ndarray | None, *, source: str,
             original_path: str | None, time: float) -> int:
        cid = self.store.add(
            image, time=time, source=source, original_path=original_path, caption=cap.text,
            score=cap.score, model_id=self.captioner.model_id, beams=cap.beams, attention=cap.attention,
            tags=[t.to_dict() for t in getattr(cap, "tags", [])],
            **encode_for_store(embedding, getattr(cap, "image_vector", None), self.store.image_projection),
        )
        if self.on_saved is not None:
            self.on_saved(cid)
        return cid

    def process(self, frame: Frame) -> tuple[int, Any]:
        cap = self.caption(frame.image)
        (vec,) = self.embed([cap])
        cid = self.save(frame.image, cap, vec, source=frame.source, original_path=frame.original_path,
                        time=frame.time)
        return cid, cap


# ---------------------------------------------------------------------------------------------- device

@dataclass
class Device:
    """What a command works with: the store, the models it asked for, and the pipeline over them
    (None without a captioner). `close()` (or leaving a `with` block) closes the store."""

    config: Config
    store: Any
    projection: Any | None = None
    captioner: Any | None = None
    embedder: Any | None = None
    pipeline: Pipeline | None = None

    def load_models(self, captioner: bool | Literal["optional"] = True, embedder: bool = True) -> Device:
        """Load the captioner and the text embedder, in that order, and build the pipeline.

        captioner=OPTIONAL: a captioner that cannot load is a warning, not a StartupError (`serve`
        still shows the captures). Raises StartupError."""
        cfg = self.config
        if captioner:
            try:
                self.captioner = load_captioner(cfg.models_dir, cfg.model.captioner, cfg.model.num_threads)
            except StartupError as e:
                if captioner != OPTIONAL:
                    raise
                log.warning("%s; uploads will not be captioned", e)
        if embedder:
            self.embedder = load_text_embedder(cfg)
        if self.captioner is not None:
            self.pipeline = Pipeline(self.store, self.captioner, self.embedder, cfg.model.beam_width)
        return self

    def close(self) -> None:
        close = getattr(self.store, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_device(config: Config, *, captioner: bool | Literal["optional"] = True, embedder: bool = True,
                reconcile: bool = False) -> Device:
    """Open the store in config.data_dir (image projection included), then load the models asked for.

    Every command starts here, so they all open the data folder the same way and show the same
    messages. reconcile: make rows and files agree after a crash first (`run`, `ingest`).
    Raises StartupError; the store is closed again when a later step fails.
    """
    projection = load_projection(config.models_dir)
    device = Device(config, open_store(config.data_dir, projection=projection), projection)
    try:
        if reconcile:
            device.store.reconcile()
        device.load_models(captioner, embedder)
    except BaseException:
        device.close()
        raise
    return device
