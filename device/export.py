"""Exporting captures: CSV, JSON, or a zip of the photos with both. Used by `GET /api/export` and
`edgecap export`, so a download from the page and a file from the command line are the same.

Rows are the API's capture JSON (device/records.py). A zip is produced as a stream, file by file,
so exporting thousands of photos never holds them in memory.
"""
from __future__ import annotations

import csv
import io
import json
import re
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

FORMATS = ("csv", "json", "zip")
MIMETYPES = {"csv": "text/csv; charset=utf-8", "json": "application/json", "zip": "application/zip"}
MAX_ITEMS = 10_000  # one export; a search returns at most 1000 anyway
COLUMNS = ("id", "time", "caption", "confidence", "tags", "source", "original_path", "model", "width", "height",
           "image")


def file_name(query: str, fmt: str, now: float | None = None) -> str:
    """edgecap-dog-on-grass-20240501-1310.zip: what the download is called."""
    slug = re.sub(r"[^a-z0-9]+", "-", query.lower()).strip("-")[:40] or "captures"
    return f"edgecap-{slug}-{time.strftime('%Y%m%d-%H%M', time.localtime(now))}.{fmt}"


def _cell(value: Any) -> Any:
    # A spreadsheet runs a cell starting with = + - @ as a formula; a file name can start with one.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def zip_member(item: dict[str, Any]) -> str:
    return f"images/{int(item['id'])}.jpg"


def csv_text(items: Iterable[dict[str, Any]], in_zip: bool = False) -> str:
    """One row per capture; ``tags`` the tag words ("cat, sofa"); ``image`` is the photo's URL, or its path
    inside the zip."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for it in items:
        row = dict(it, image=zip_member(it) if in_zip else it.get("image_url"),
                   tags=", ".join(t["word"] for t in it.get("tags") or []))
        writer.writerow([_cell(row.get(c)) for c in COLUMNS])
    return out.getvalue()


def json_text(items: Iterable[dict[str, Any]]) -> str:
    return json.dumps(list(items), ensure_ascii=False, indent=1) + "\n"


class _Sink:
    """A write-only file for ZipFile: it collects what was written until taken. Having no tell(),
    it makes ZipFile write a streamable zip (sizes after each member)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        return out


def zip_chunks(items: list[dict[str, Any]], image_path: Callable[[int], Path | None]) -> Iterator[bytes]:
    """The zip, piece by piece: captures.csv, captures.json and images/<id>.jpg for each capture
    whose file is still there (a capture deleted meanwhile is left out of images/, not an error)."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("captures.csv", csv_text(items, in_zip=True))
        zf.writestr("captures.json", json_text(items))
        yield sink.take()
        for it in items:
            path = image_path(int(it["id"]))
            if path is None:
                continue
            try:
                # JPEGs do not compress; storing them saves the Pi's CPU
                zf.write(path, zip_member(it), compress_type=zipfile.ZIP_STORED)
            except OSError:  # deleted between the listing and now
                continue
            yield sink.take()
    yield sink.take()


def write(items: list[dict[str, Any]], fmt: str, out: Any, image_path: Callable[[int], Path | None]) -> None:
    """Write an export to a binary file object."""
    if fmt == "csv":
        out.write(csv_text(items).encode("utf-8"))
    elif fmt == "json":
        out.write(json_text(items).encode("utf-8"))
    elif fmt == "zip":
        for chunk in zip_chunks(items, image_path):
            out.write(chunk)
    else:
        raise ValueError(f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")


def select(store: Any, query: str, *, embedder: Any = None, limit: int = MAX_ITEMS,
           filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The store records to export: a search's results in rank order, or with no query every
    capture the filters let through, newest first (at most ``limit``)."""
    from device.search import search

    filters = filters or {}
    limit = max(1, min(int(limit), MAX_ITEMS))
    if query.strip():
        return search(store, query, k=min(limit, 1000), embedder=embedder, **filters).items
    rows: list[dict[str, Any]] = []
    while len(rows) < limit:
        page = store.recent(min(1000, limit - len(rows)), len(rows), **filters)
        rows += page
        if len(page) < 1000:
            break
    return rows
