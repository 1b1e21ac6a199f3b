"""Query-argument parsing and the JSON shape of a capture, shared by the API and the pages.

Every argument a client can send is checked here; a bad one raises `BadRequest` with a message
that names it (turned into a 400 by the app's error handler).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from datetime import time as dtime
from typing import Any

from flask import has_request_context, request
from werkzeug.exceptions import BadRequest

from device import records

MAX_K = records.MAX_K
MAX_QUERY_CHARS = 200
MAX_SOURCE_CHARS = 64
MAX_OFFSET = 10_000_000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def bad(message: str) -> BadRequest:
    return BadRequest(description=message)


def int_arg(args: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw.strip(), 10)
    except (ValueError, AttributeError):
        raise bad(f"{name} must be a whole number, got {raw[:40]!r}") from None
    if not lo <= value <= hi:
        raise bad(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def text_arg(args: Mapping[str, str], name: str, max_chars: int) -> str:
    raw = args.get(name) or ""
    value = _CONTROL.sub(" ", raw).strip()
    if len(value) > max_chars:
        raise bad(f"{name} is too long (at most {max_chars} characters)")
    return value


def query_arg(args: Mapping[str, str]) -> str:
    return text_arg(args, "q", MAX_QUERY_CHARS)


def source_arg(args: Mapping[str, str]) -> str | None:
    return text_arg(args, "source", MAX_SOURCE_CHARS) or None


def date_arg(args: Mapping[str, str], name: str, *, end_of_day: bool = False) -> float | None:
    """An ISO date or date-time as a Unix time. A bare date means the device's local day; with
    end_of_day (for `until`, which the store treats as exclusive) it means the next day's midnight,
    so until=2024-05-01 includes that whole day."""
    raw = (args.get(name) or "").strip()
    if not raw:
        return None
    if len(raw) > 40:
        raise bad(f"{name} must be an ISO date like 2024-05-01 or 2024-05-01T13:00")
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            moment = datetime.combine(day + timedelta(days=1) if end_of_day else day, dtime())
        else:
            moment = datetime.fromisoformat(raw.replace(" ", "T", 1))
        ts = moment.timestamp()  # naive values are local time, as a user typing a date means
    except (OverflowError, OSError):
        raise bad(f"{name} is out of range: {raw!r}") from None
    except ValueError:
        raise bad(f"{name} must be an ISO date like 2024-05-01 or 2024-05-01T13:00, got {raw!r}") from None
    return ts


def local_day(ts: float) -> str:
    """The device's local date of a Unix time, as YYYY-MM-DD."""
    return datetime.fromtimestamp(float(ts)).date().isoformat()


def day_start(ts: float) -> float:
    """The Unix time of local midnight at the start of the day holding ``ts``."""
    return datetime.combine(datetime.fromtimestamp(float(ts)).date(), dtime()).timestamp()


def range_args(args: Mapping[str, str]) -> tuple[float | None, float | None]:
    since = date_arg(args, "since")
    until = date_arg(args, "until", end_of_day=True)
    if since is not None and until is not None and since > until:
        raise bad("since must not be after until")
    return since, until


_CLOCK = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


def clock_arg(args: Mapping[str, str], name: str) -> int | None:
    """A local time of day "HH:MM" as minutes since midnight, or None when absent."""
    raw = (args.get(name) or "").strip()
    if not raw:
        return None
    m = _CLOCK.fullmatch(raw[:8])
    if not m:
        raise bad(f"{name} must be a time of day like 08:30, got {raw[:40]!r}")
    return int(m.group(1)) * 60 + int(m.group(2))


def time_of_day_args(args: Mapping[str, str]) -> tuple[int, int] | None:
    """from_time / to_time ("HH:MM", local): (first minute, end minute), end exclusive; a range
    like 22:00-06:00 wraps past midnight. One of them alone runs from midnight / to midnight."""
    first, end = clock_arg(args, "from_time"), clock_arg(args, "to_time")
    if first is None and end is None:
        return None
    first, end = first or 0, 24 * 60 if end is None else end
    if first == end:
        raise bad("from_time and to_time must differ")
    return first, end


def filter_args(args: Mapping[str, str]) -> dict[str, Any]:
    """source, since, until and time_of_day, as search() and Store.recent() take them."""
    since, until = range_args(args)
    return {"source": source_arg(args), "since": since, "until": until, "time_of_day": time_of_day_args(args)}


def capture_json(c: Mapping[str, Any], *, full: bool = False) -> dict[str, Any]:
    """records.capture_json with URLs under this app's root."""
    root = request.script_root if has_request_context() else ""
    return records.capture_json(c, full=full, root=root)
