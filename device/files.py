"""The store's files: the data folder's layout, crash-safe writes, JPEG encoding, disk problems.

Layout::

    data_dir/edgecap.db                    captures, FTS index, vectors, bookkeeping
    data_dir/images/YYYY-MM-DD/<name>.jpg  the frame, JPEG quality 85
    data_dir/thumbs/YYYY-MM-DD/<name>.jpg  the same name, <= 320 px long side

A file is written to a temporary name in its folder, fsynced and renamed, then the folder is fsynced:
a crash leaves the old state or the new one, plus at worst a temp file that reconcile removes.
"""
from __future__ import annotations

import errno
import io
import logging
import os
import secrets
import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from PIL import Image

log = logging.getLogger("device.store")

DB_NAME = "edgecap.db"
IMAGES = "images"
THUMBS = "thumbs"
TMP_PREFIX = ".tmp-"
JPEG_QUALITY = 85
THUMB_SIZE = 320
THUMB_QUALITY = 80
DAY = 86400
# Errors fsync gives for a folder on file systems that cannot sync one (some FUSE and network ones):
# nothing to do about it there, so not worth a warning per capture.
_FSYNC_UNSUPPORTED = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF)


def day_dir(t: float) -> str:
    # Derived with exact integer arithmetic on floor(t / 86400) so reconcile's range query
    # "day*86400 <= time < (day+1)*86400" finds exactly the rows whose files are in that folder.
    return (date(1970, 1, 1) + timedelta(days=int(t // DAY))).isoformat()


def day_start(day: str) -> int | None:
    """The unix time a day folder's name (YYYY-MM-DD) starts at; None when the name is not a date
    (the folder is not the store's, and the callers leave it alone)."""
    try:
        return (date.fromisoformat(day) - date(1970, 1, 1)).days * DAY
    except ValueError:
        return None


def capture_names(t: float) -> tuple[str, str]:
    """The image and thumbnail paths (relative to the data folder) for a capture taken at `t`."""
    stamp = datetime.fromtimestamp(t // 1, tz=UTC).strftime("%Y%m%dT%H%M%S")
    # Time + random suffix: sortable, unique, and never derived from user input.
    name = f"{stamp}{int((t % 1) * 1000):03d}Z-{secrets.token_hex(5)}.jpg"
    day = day_dir(t)
    return f"{IMAGES}/{day}/{name}", f"{THUMBS}/{day}/{name}"


def not_writable(data_dir: Path) -> str | None:
    """Why the store cannot write in `data_dir` (None when it can): what to fix, not a SQLite message."""
    for p in (data_dir, data_dir / DB_NAME):
        if not p.exists() or os.access(p, os.W_OK):
            continue
        try:
            read_only = bool(os.statvfs(p).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        if read_only:
            return f"{p} is on a read-only file system: mount it read-write, or set data_dir to another folder"
        return (f"{p} is not writable by this user: give the user edgecap runs as write access "
                f"(e.g. sudo chown -R edgecap: {data_dir}), or set data_dir")
    return None


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return False


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable. Best effort: the file itself is already fsynced, so a failure
    here can at worst lose the rename on a power cut (reconcile then finds a temp file or no file);
    it is logged, not raised, so the capture is still stored."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        log.warning("store: cannot open folder %s to sync it: %s", path, e)
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno in _FSYNC_UNSUPPORTED:
            log.debug("store: this file system cannot sync folder %s: %s", path, e)
        else:
            log.warning("store: syncing folder %s failed: %s (a power cut may lose the newest file)", path, e)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp name in the same folder, fsync, rename."""
    tmp = path.with_name(TMP_PREFIX + path.name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_files(files: dict[Path, bytes]) -> None:
    """Write each file atomically (creating its day folder), then sync the folders."""
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    for path in files:
        fsync_dir(path.parent)


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def thumbnail(image: Image.Image) -> Image.Image:
    thumb = image.copy()
    thumb.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
    return thumb
