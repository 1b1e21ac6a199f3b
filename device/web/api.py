"""The JSON API: search, captures, images by id, captioning an upload, stats."""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from flask import Blueprint, abort, jsonify, request, send_file

from device import records
from device.store import StoreFullError

from . import params
from .errors import error_response
from .state import state
from .uploads import decode_upload

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__, url_prefix="/api")

DEFAULT_K = 24
CAPTION_WAIT_S = 30.0


def _search(q: str, k: int, filters: dict[str, Any]):
    from device.search import search  # the one ranking shared with the page and the CLI

    st = state()
    return search(st.store, q, k=k, embedder=st.embedder, **filters)


@bp.get("/search")
def api_search():
    """GET /api/search?q=&k=&source=&since=&until=&from_time=&to_time= : ranked captures (newest
    when q is empty)."""
    q = params.query_arg(request.args)
    k = params.int_arg(request.args, "k", DEFAULT_K, 1, params.MAX_K)
    filters = params.filter_args(request.args)
    t0 = time.perf_counter()
    res = _search(q, k, filters)
    took = (time.perf_counter() - t0) * 1000
    return jsonify({
        "query": q, "k": k, "mode": res.mode, "notice": res.notice,
        "corrections": getattr(res, "corrections", None) or {}, "took_ms": round(took, 2),
        "items": [params.capture_json(c) for c in res.items],
    })


@bp.get("/captures")
def api_captures():
    """GET /api/captures?limit=&offset=&after_id=&source=&since=&until=&from_time=&to_time= : newest
    first, paged. With after_id: only captures stored after that one (live updates), still newest first
    by capture time, so a page can put each where it belongs."""
    limit = params.int_arg(request.args, "limit", DEFAULT_K, 1, params.MAX_K)
    offset = params.int_arg(request.args, "offset", 0, 0, params.MAX_OFFSET)
    after_id = params.int_arg(request.args, "after_id", 0, 0, 2**62) or None
    rows = state().store.recent(limit, offset, after_id=after_id, **params.filter_args(request.args))
    items = [params.capture_json(r) for r in rows]
    more = len(rows) == limit and not after_id
    return jsonify({
        "items": items, "limit": limit, "offset": offset,
        "next_offset": offset + limit if more else None,
    })


@bp.get("/timeline")
def api_timeline():
    """GET /api/timeline?day=&source= : captures per hour of one local day (default: the newest
    capture's day), and the nearest days before and after it that have captures."""
    st = state()
    source = params.source_arg(request.args)
    start = params.date_arg(request.args, "day")
    if start is None:
        newest = st.store.recent(1, source=source)
        start = params.day_start(newest[0]["time"] if newest else time.time())
    end = params.date_arg({"day": params.local_day(start)}, "day", end_of_day=True)
    t = st.store.timeline(start, end, source=source)
    return jsonify({
        "day": params.local_day(start),
        "hours": t["hours"],
        "total": sum(t["hours"]),
        "prev_day": params.local_day(t["before"]) if t["before"] is not None else None,
        "next_day": params.local_day(t["after"]) if t["after"] is not None else None,
    })


def _get_capture(cid: int) -> dict[str, Any]:
    c = state().store.get(cid)
    if c is None:
        abort(404)
    return c


@bp.get("/captures/<id:cid>")
def api_capture(cid: int):
    """GET /api/captures/<id> : one capture with its beams, words and attention maps."""
    return jsonify(params.capture_json(_get_capture(cid), full=True))


def _send_stored(cid: int, kind: str):
    # Only files the store names for this id are ever sent: no client-supplied path reaches the disk.
    path = state().store.file_path(cid, kind)
    if path is None or not Path(path).is_file():
        abort(404)
    resp = send_file(path, mimetype="image/jpeg", conditional=True, max_age=7 * 24 * 3600)
    resp.headers["Cache-Control"] = "private, max-age=604800, immutable"  # a capture never changes
    return resp


@bp.get("/captures/<id:cid>/image")
def capture_image(cid: int):
    return _send_stored(cid, "image")


@bp.get("/captures/<id:cid>/thumb")
def capture_thumb(cid: int):
    return _send_stored(cid, "thumb")


@bp.get("/captures/<id:cid>/similar")
def api_similar(cid: int):
    """GET /api/captures/<id>/similar?k= : captures whose images look most like this one."""
    from device.search import similar

    k = params.int_arg(request.args, "k", 12, 1, params.MAX_K)
    _get_capture(cid)
    items = similar(state().store, cid, k=k)
    return jsonify({"id": cid, "k": k, "items": [params.capture_json(c) for c in items]})


def _caption_upload():
    """Decode the uploaded `image` and caption it, under the caption lock; returns (image, caption, ms)
    or a 4xx/503. Decoding under the lock too keeps one large photo in memory at a time: eight 24 MP
    uploads decoded at once took over a GB."""
    st = state()
    upload = request.files.get("image")
    if upload is None or st.pipeline is None:  # a client's mistake first, then the device's state
        decode_upload(upload, st.max_upload_bytes)
        return None, error_response(503, "no captioner is loaded on this device")
    t0 = time.perf_counter()
    # One at a time; a queue longer than this means the device is overloaded.
    if not st.caption_lock.acquire(timeout=CAPTION_WAIT_S):
        return None, error_response(503, "the captioner is busy; try again shortly")
    try:
        img = decode_upload(upload, st.max_upload_bytes)
        cap = st.pipeline.caption(img)
    finally:
        st.caption_lock.release()
    return (img, cap, (time.perf_counter() - t0) * 1000), None


@bp.post("/search/photo")
def api_search_photo():
    """POST /api/search/photo (multipart `image`, optional `k`): the captures that look most alike."""
    from device.search import search_by_vector

    k = params.int_arg(request.form, "k", 12, 1, params.MAX_K)
    done, error = _caption_upload()
    if error:
        return error
    _, cap, took = done
    vec = getattr(cap, "image_vector", None)
    items = [] if vec is None else search_by_vector(state().store, vec, k=k)
    return jsonify({
        "caption": cap.text, "k": k, "took_ms": round(took, 1),
        "items": [params.capture_json(c) for c in items],
    })


def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes", "on")


@bp.post("/caption")
def api_caption():
    """POST /api/caption (multipart `image`, optional `keep=1`): caption, score, words, attention."""
    st = state()
    done, error = _caption_upload()
    if error:
        return error
    img, cap, took = done
    model_id = getattr(st.captioner, "model_id", None)
    out = records.caption_json(cap, model_id)
    out["took_ms"] = round(took, 1)
    if _truthy(request.form.get("keep")):
        # Stored like a camera frame; a failing text embedder leaves it without an embedding (the
        # pipeline's one policy), so the photo is kept and keyword search finds it.
        (embedding,) = st.pipeline.embed([cap])
        try:
            cid = st.pipeline.save(img, cap, embedding, source="upload", original_path=None, time=time.time())
        except StoreFullError:
            return error_response(507, "the device's disk is full; the photo was not kept")
        out["capture"] = params.capture_json(st.store.get(cid) or {"id": cid})
    return jsonify(out)


@bp.get("/stats")
def api_stats():
    """GET /api/stats : counts, disk, models, uptime."""
    st = state()
    stats = dict(st.store.stats() or {})
    data_dir = getattr(st.store, "data_dir", None) or st.config.data_dir
    if data_dir and "disk" not in stats:
        try:
            du = shutil.disk_usage(data_dir)
            stats["disk"] = {"total_bytes": du.total, "free_bytes": du.free}
        except OSError:
            pass
    stats["models"] = {
        "captioner": getattr(st.captioner, "model_id", None),
        "embedder": getattr(st.embedder, "model_id", None),
    }
    stats["search_mode"] = "hybrid" if st.embedder is not None else "keyword"
    stats["uptime_s"] = round(time.time() - st.started, 1)
    stats["started"] = records.iso_time(st.started)
    return jsonify(_jsonable(stats))


def _jsonable(x: Any) -> Any:
    """Store stats may hold Paths or numpy numbers; make them JSON-friendly."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item") and callable(x.item):
        return x.item()
    return x
