"""Keeping the store tidy: retention (size limit, free-space floor) and the start-up reconcile.

Part of the store (device/store.py calls in here; the file helpers are device/files.py). Both delete
captures, so both refuse when deleting cannot be what the user wants: retention does not empty the
store for a free-space floor it cannot reach anyway, and reconcile does not delete files or rows in
numbers no crash can explain (a new, replaced or damaged database; image folders not all there).
"""
from __future__ import annotations

import itertools
import logging
import math
import time
from pathlib import Path
from typing import Any

from device.files import (
    DAY,
    IMAGES,
    THUMB_QUALITY,
    THUMBS,
    TMP_PREFIX,
    day_start,
    jpeg_bytes,
    thumbnail,
    write_atomic,
)

log = logging.getLogger("device.store")

# A crash leaves at most a few files without a row (or rows without files): one per capture in flight.
RECONCILE_SAFE_COUNT = 32


def too_many_to_delete(orphans: int, intact_rows: int) -> bool:
    """True when `orphans` are more than a crash can explain next to `intact_rows`: the database is
    empty or new, or lost a tenth of its rows or more. Deleting them would then lose captures."""
    return orphans > 0 and (intact_rows == 0 or orphans > max(RECONCILE_SAFE_COUNT, intact_rows // 10))


def enforce_retention(store: Any, max_bytes: int | None, min_free_bytes: int | None = None) -> int:
    """Delete the oldest captures until store bytes <= max_bytes and disk free >= min_free_bytes.

    Store bytes = database pages in use + image and thumbnail files. 0/None disables a limit. When the
    free-space floor is further away than deleting every capture would get (the disk is full of other
    things, or the floor is above the disk's size), nothing is deleted for it: that would empty the
    store and still not meet it. Returns the number of captures deleted.
    """
    deleted = 0
    while True:
        count = store.count()
        if count == 0:
            break
        files = store.file_bytes()
        size = store.used_db_bytes() + files
        need = max(0, size - max_bytes) if max_bytes else 0
        if min_free_bytes:
            short = int(min_free_bytes) - store.disk_free()
            if short > files:  # database pages are reused, not given back: only files free space
                log.warning(
                    "retention: the disk needs %.0f MB more free space than deleting every capture would "
                    "give (%.0f MB); keeping the captures. Free space on the disk or lower [store] "
                    "min_free_mb", short / 2**20, files / 2**20,
                )
            else:
                need = max(need, short)
        if need <= 0:
            break
        batch = min(500, max(1, math.ceil(need / max(1.0, size / count))))
        ids = [r[0] for r in store.connection().execute(
            "SELECT id FROM captures ORDER BY time, id LIMIT ?", (batch,))]
        n = store.delete(ids)
        if n == 0:
            break
        deleted += n
    if deleted:
        log.info("retention: deleted %d oldest captures", deleted)
    return deleted


def reconcile(store: Any, grace_seconds: float = 60.0) -> dict[str, int]:
    """Make rows and files agree after a crash; run at start-up.

    Deletes rows whose image is missing, files that no row references, and leftover temp files.
    Files younger than ``grace_seconds`` are left alone: another process (``edgecap ingest``) may have
    written them and not yet committed the row. A missing thumbnail is rebuilt. When there are more
    files without rows (or rows without files) than a crash can leave, they are kept, a warning says
    so, and ``files_kept`` / ``rows_kept`` count them (``edgecap repair`` gives files their rows back).
    """
    result = {"rows_deleted": 0, "files_deleted": 0, "temp_deleted": 0, "thumbs_rebuilt": 0,
              "files_kept": 0, "rows_kept": 0}
    cutoff = time.time() - grace_seconds
    rows_total = store.count()
    days, covered = _scan_days(store, cutoff, result)
    missing: list[int] = []
    unreferenced: list[Path] = []
    for listings, rows in days:
        referenced: set[str] = set()
        for r in rows:
            referenced.update((r["image"], r["thumb"]))
            if not (r["image"] in listings[IMAGES] or (store.data_dir / r["image"]).is_file()):
                missing.append(r["id"])
            elif not (r["thumb"] in listings[THUMBS] or (store.data_dir / r["thumb"]).is_file()):
                if _rebuild_thumb(store, r["image"], r["thumb"]):
                    result["thumbs_rebuilt"] += 1
                else:
                    missing.append(r["id"])
        unreferenced += [p for kind in (IMAGES, THUMBS) for rel, p in listings[kind].items()
                         if rel not in referenced and _mtime(p) < cutoff]
    missing += _rows_outside(store, covered)

    captures_unreferenced = len({p.name for p in unreferenced})  # an image and its thumb share a name
    if too_many_to_delete(captures_unreferenced, rows_total):
        result["files_kept"] = len(unreferenced)
        log.warning(
            "reconcile: %d image files have no row in %s (%d rows): the database looks new, replaced or "
            "damaged, so they are kept. Run `edgecap repair` to give them their rows back.",
            captures_unreferenced, store.db_path, rows_total,
        )
    else:
        for p in unreferenced:
            p.unlink(missing_ok=True)
        result["files_deleted"] = len(unreferenced)

    if too_many_to_delete(len(missing), rows_total - len(missing)):
        result["rows_kept"] = len(missing)
        log.warning(
            "reconcile: %d of %d captures have no image file under %s: is the data folder complete (a "
            "disk not mounted, files moved)? Their rows are kept.", len(missing), rows_total, store.images_dir,
        )
    elif missing:
        result["rows_deleted"] = store.delete(missing)

    for root in (store.images_dir, store.thumbs_dir):
        for folder in list(root.iterdir()) if root.is_dir() else []:
            if folder.is_dir() and day_start(folder.name) is not None:
                try:
                    folder.rmdir()  # only succeeds when empty
                except OSError:
                    pass
    if any(result.values()):
        log.info("reconcile: %s", result)
    return result


def unreferenced_images(store: Any) -> list[Path]:
    """Image files (not temp files) that no row names, oldest name first: what `edgecap repair` adopts."""
    out = []
    conn = store.connection()
    for folder in sorted(p for p in store.images_dir.iterdir() if p.is_dir()) if store.images_dir.is_dir() else []:
        start = day_start(folder.name)
        if start is None:
            continue
        named = {r[0] for r in conn.execute(
            "SELECT image FROM captures WHERE time >= ? AND time < ?", (start, start + DAY))}
        out += [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(TMP_PREFIX)
                and f"{IMAGES}/{folder.name}/{p.name}" not in named]
    return out


def _scan_days(store: Any, cutoff: float, result: dict[str, int]):
    """([(files by kind, rows) per day folder], the time ranges those folders cover). Deletes old temp files."""
    conn = store.connection()
    roots = ((IMAGES, store.images_dir), (THUMBS, store.thumbs_dir))
    names = sorted({p.name for _, d in roots if d.is_dir() for p in d.iterdir() if p.is_dir()})
    days, covered = [], []
    for day in names:
        start = day_start(day)
        if start is None:
            log.warning("reconcile: leaving %s alone (not a store folder)", day)
            continue
        covered.append((start, start + DAY))
        listings: dict[str, dict[str, Path]] = {}
        for kind, root in roots:
            files: dict[str, Path] = {}
            folder = root / day
            for p in folder.iterdir() if folder.is_dir() else []:
                if p.name.startswith(TMP_PREFIX):
                    if _mtime(p) < cutoff:
                        p.unlink(missing_ok=True)
                        result["temp_deleted"] += 1
                elif p.is_file():
                    files[f"{kind}/{day}/{p.name}"] = p
            listings[kind] = files
        rows = conn.execute(
            "SELECT id, image, thumb FROM captures WHERE time >= ? AND time < ?", (start, start + DAY)
        ).fetchall()
        days.append((listings, rows))
    return days, covered


def _rows_outside(store: Any, covered: list[tuple[int, int]]) -> list[int]:
    """Rows whose day has no folder at all (and whose image is indeed not there)."""
    missing = []
    bounds = [(-math.inf, -math.inf), *covered, (math.inf, math.inf)]
    for (_, gap_start), (gap_end, _) in itertools.pairwise(bounds):
        if gap_start >= gap_end:
            continue
        for r in store.connection().execute(
            "SELECT id, image FROM captures WHERE time >= ? AND time < ?",
            (max(gap_start, -1e300), min(gap_end, 1e300)),
        ):
            if not (store.data_dir / r["image"]).is_file():
                missing.append(r["id"])
    return missing


def _rebuild_thumb(store: Any, rel_image: str, rel_thumb: str) -> bool:
    src = store.data_dir / rel_image
    dst = store.data_dir / rel_thumb
    try:
        from PIL import Image

        with Image.open(src) as im:
            data = jpeg_bytes(thumbnail(im.convert("RGB")), THUMB_QUALITY)
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(dst, data)
    except (OSError, ValueError) as e:
        log.warning("reconcile: cannot rebuild thumbnail %s: %s", dst, e)
        return False
    with store._write_lock:  # the thumbnail size changed; keep the byte totals right
        store.connection().execute("UPDATE captures SET thumb_bytes = ? WHERE thumb = ?", (len(data), rel_thumb))
    return True


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0
