"""The JSON shape of a capture and of a caption: one definition for the API, the page and the CLI."""
from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

MAX_K = 100  # results per request, the same for the API, the page and the CLI


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


def num(x: Any, digits: int = 4) -> float | None:
    """A finite float rounded for JSON, else None."""
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return round(f, digits) if math.isfinite(f) else None


def confidence(score: Any, n_words: int, length_penalty: float | None = None) -> float | None:
    """The caption's score as a plain 0..1: the model's average probability per word (geometric mean).

    The score is log-probability / length**length_penalty (length = words + the end token), a number
    no user can read ("-2.79"); undoing the normalisation and averaging per token gives one they can.
    """
    s = num(score, 8)
    if s is None:
        return None
    if length_penalty is None:
        from device.decoder import DEFAULT_LENGTH_PENALTY as length_penalty  # numpy: imported at use
    length = max(int(n_words), 0) + 1
    return round(math.exp(s * length**length_penalty / length), 3)


def attention_lists(attention: Any) -> list[list[list[float]]] | None:
    """float32 [n_words, 7, 7] (array or nested lists) -> nested lists rounded for a small payload."""
    if attention is None:
        return None
    import numpy as np  # at use: `edgecap --help` stays instant

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


def capture_json(c: Mapping[str, Any], *, full: bool = False, root: str = "") -> dict[str, Any]:
    """What every capture in every API response (and `edgecap search --json`) carries.

    ``root``: the web app's URL prefix. ``rank_score`` (present for search results) orders results
    and has no fixed scale; ``confidence`` is the caption's.
    """
    cid = int(c["id"])
    ts = to_epoch(c.get("time"))
    caption = c.get("caption") or ""
    # URLs are formatted here rather than with url_for(): four url_for calls per item cost ~1 ms
    # per page of results. tests/test_web.py fetches them, so they cannot drift from the routes.
    out: dict[str, Any] = {
        "id": cid,
        "caption": caption,
        "score": num(c.get("score")),
        "confidence": confidence(c.get("score"), len(caption.split())),
        "tags": [{"word": t["word"], "p": num(t["p"], 3)} for t in c.get("tags") or []],
        "time": c.get("time_iso") or iso_time(ts),
        "timestamp": num(ts, 3),
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
        out["rank_score"] = num(c.get("rank_score"))
    if full:
        beams = c.get("beams") or []
        out["beams"] = [beam_json(b) for b in beams if isinstance(b, Mapping)]
        out["words"] = words_of(c)
        out["attention"] = attention_lists(c.get("attention"))
    return out


def beam_json(b: Mapping[str, Any]) -> dict[str, Any]:
    text = str(b.get("text", ""))
    return {"text": text, "score": num(b.get("score")), "confidence": confidence(b.get("score"), len(text.split()))}


def caption_json(c: Any, model_id: str | None) -> dict[str, Any]:
    """A fresh caption (device.captioner.Caption): `POST /api/caption` and `edgecap caption --json`."""
    return {
        "caption": c.text,
        "score": num(c.score),
        "confidence": confidence(c.score, len(c.words)),
        "words": [str(w) for w in c.words],
        "tags": [t.to_dict() for t in c.tags],
        "attention": attention_lists(c.attention),
        "beams": [beam_json(b) for b in c.beams],
        "model": model_id,
    }
