"""`edgecap ingest`: caption a folder of existing photos into the store, skipping ones already stored.

Four stages overlap so both cores stay busy (TFLite, PIL, SQLite and fsync release the GIL):
  decode pool (JPEG decode)  ->  caption thread (TFLite)  ->  embed thread (batched)  ->  this thread (store)
All store calls happen on the calling thread. A capture is reported (`on_stored`) only after the store
committed it, so a listing printed by `--json` never names a capture a crash could lose.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from device.pipeline import Pipeline
from device.preprocess import BadImageError, load_image
from device.sources.samples import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

_END = object()


@dataclass
class IngestResult:
    stored: int = 0
    already: int = 0  # skipped: the store has them
    failed: int = 0  # unreadable files (logged)
    total: int = 0  # image files found


def find_images(paths: Iterable[str | Path]) -> list[str]:
    """Image files in the given folders (recursively, sorted) and files, absolute, without duplicates."""
    out: list[str] = []
    seen: set[str] = set()
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            found = sorted(
                str(Path(root) / f)
                for root, dirs, files in os.walk(p)
                for f in files
                if Path(f).suffix.lower() in IMAGE_SUFFIXES and not f.startswith(".")
                if not any(d.startswith(".") for d in Path(root).relative_to(p).parts)
            )
        elif p.is_file():
            found = [str(p)]
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
        for f in found:
            a = os.path.abspath(f)  # abspath, not resolve: a symlinked folder keeps its own names
            if a not in seen:
                seen.add(a)
                out.append(a)
    return out


def _decode(path: str, max_side: int) -> Image.Image:
    image = load_image(path)
    # draft-free downscale of very large photos: the store keeps at most `max_side` anyway and the
    # captioner squashes to 224, so carrying a 12 MP bitmap through the pipeline only costs time
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.BILINEAR)
    return image


def ingest(
    pipeline: Pipeline,
    files: list[str],
    *,
    workers: int = 2,
    batch: int = 8,
    max_side: int = 1600,
    stop: threading.Event | None = None,
    on_stored: Callable[[int, str, Any], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> IngestResult:
    """Caption and store `files` (absolute paths). Unreadable files are logged and skipped."""
    stop = stop or threading.Event()
    result = IngestResult(total=len(files))
    todo = []
    for f in files:
        if pipeline.store.has_original(f):
            result.already += 1
        else:
            todo.append(f)
    if progress and result.already:
        progress(result.already)
    if not todo:
        return result

    captioned: queue.Queue = queue.Queue(maxsize=2 * batch)
    embedded: queue.Queue = queue.Queue(maxsize=2 * batch)
    failure: list[BaseException] = []

    def caption_stage(decoded: Iterator[tuple[str, Future]]) -> None:
        try:
            for path, fut in decoded:
                if stop.is_set():
                    break
                try:
                    image = fut.result()
                except BadImageError as e:
                    captioned.put((path, None, e))
                    continue
                captioned.put((path, image, pipeline.caption(image)))
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which re-raises it
            failure.append(e)
        finally:
            captioned.put(_END)

    def embed_stage() -> None:
        # its own thread, so the embedder runs while the store waits for fsync
        try:
            done = False
            while not done:
                items = [captioned.get()]
                while len(items) < batch and items[-1] is not _END:  # one call for what is ready
                    try:
                        items.append(captioned.get_nowait())
                    except queue.Empty:
                        break
                if items[-1] is _END:
                    items.pop()
                    done = True
                good = [it for it in items if it[1] is not None]
                vectors = iter(pipeline.embed([cap for _, _, cap in good]))
                for path, image, cap in items:
                    embedded.put((path, image, cap, next(vectors) if image is not None else None))
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which re-raises it
            failure.append(e)
            while captioned.get() is not _END:  # unblock the caption stage
                pass
        finally:
            embedded.put(_END)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="edgecap-decode") as pool:
        def submit_ahead() -> Iterator[tuple[str, Future]]:
            # keep a bounded window of decodes in flight: enough to hide JPEG decoding, not the whole folder
            window: list[tuple[str, Future]] = []
            it = iter(todo)
            for path in it:
                window.append((path, pool.submit(_decode, path, max_side)))
                if len(window) >= 2 * max(1, workers) + 2:
                    break
            while window:
                yield window.pop(0)
                if stop.is_set():
                    break
                nxt = next(it, None)
                if nxt is not None:
                    window.append((nxt, pool.submit(_decode, nxt, max_side)))
            for _, fut in window:
                fut.cancel()

        threads = [
            threading.Thread(target=caption_stage, args=(submit_ahead(),), name="edgecap-caption", daemon=True),
            threading.Thread(target=embed_stage, name="edgecap-embed", daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            while True:
                item = embedded.get()
                if item is _END:
                    break
                path, image, cap, vec = item
                if image is None:
                    log.warning("skipping %s", cap)
                    result.failed += 1
                elif not stop.is_set():
                    cid = pipeline.save(image, cap, vec, source="ingest", original_path=path,
                                        time=_mtime(path))
                    result.stored += 1
                    if on_stored:
                        on_stored(cid, path, cap)
                if progress:
                    progress(1)
        except BaseException:
            stop.set()  # a store error: let the stages wind down, then report it
            while embedded.get() is not _END:
                pass
            raise
        finally:
            for t in threads:
                t.join()
    if failure:
        raise failure[0]
    return result


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        import time

        return time.time()
