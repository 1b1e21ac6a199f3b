"""Query-argument parsing and the JSON shape of a capture, shared by the API and the pages.

Every argument a client can send is checked here; a bad one raises `BadRequest` with a message
that names it (turned into a 400 by the app's error handler).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Any

import numpy as np
from flask import has_request_context, request
from werkzeug.exceptions import BadRequest

MAX_K = 100
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


def range_args(args: Mapping[str, str]) -> tuple[float | None, float | None]:
    since = date_arg(args, "since")
    until = date_arg(args, "until", end_of_day=True)
    if since is not None and until is not None and since > until:
        raise bad("since must not be after until")
    return since, until


def to_epoch(value: Any) -> float | None:
    """The store's time (Unix seconds, ISO text or datetime) as Unix seconds."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def iso_time(value: Any) -> str | None:
    ts = to_epoch(value)
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).astimezone().isoformat(timespec="seconds")


def _num(x: Any, digits: int = 4) -> float | None:
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return round(f, digits) if math.isfinite(f) else None


def attention_lists(attention: Any) -> list[list[list[float]]] | None:
    """float32 [n_words, 7, 7] (array or nested lists) -> nested lists rounded for a small payload."""
    if attention is None:
        return None
    arr = np.asarray(attention, dtype=np.float32)
    if arr.ndim == 2 and arr.shape[1] == 49:
        arr = arr.reshape(-1, 7, 7)
    if arr.ndim != 3:
        return None
    return np.round(arr, 4).tolist()


def words_of(c: Mapping[str, Any]) -> list[str]:
    words = c.get("words")
    if isinstance(words, (list, tuple)):
        return [str(w) for w in words]
    return str(c.get("caption") or "").split()


def capture_json(c: Mapping[str, Any], *, full: bool = False) -> dict[str, Any]:
    """The API's view of a store record: what every capture in every response carries."""
    cid = int(c["id"])
    ts = to_epoch(c.get("time"))
    # URLs are formatted here rather than with url_for(): four url_for calls per item cost ~1 ms
    # per page of results. tests/test_web.py fetches them, so they cannot drift from the routes.
    root = request.script_root if has_request_context() else ""
    out: dict[str, Any] = {
        "id": cid,
        "caption": c.get("caption") or "",
        "score": _num(c.get("score")),
        "tags": [{"word": t["word"], "p": _num(t["p"], 3)} for t in c.get("tags") or []],
        "time": c.get("time_iso") or iso_time(ts),
        "timestamp": _num(ts, 3),
        "source": c.get("source"),
        "original_path": c.get("original_path"),
        "model": c.get("model_id"),
        "width": c.get("width"),
        "height": c.get("height"),
        "url": f"{root}/capture/{cid}",
        "image_url": f"{root}/api/captures/{cid}/image",
        "thumb_url": f"{root}/api/captures/{cid}/thumb",
    }
    if c.get("rank_score") is not None:
        out["rank_score"] = _num(c.get("rank_score"))
    if full:
        beams = c.get("beams") or []
        out["beams"] = [{"text": str(b.get("text", "")), "score": _num(b.get("score"))} for b in beams
                        if isinstance(b, Mapping)]
        out["words"] = words_of(c)
        out["attention"] = attention_lists(c.get("attention"))
    return out
