"""Deleting captures and exporting them (CSV, JSON, zip of the photos) from the page or the API."""
from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, abort, jsonify, request, stream_with_context

from device import export

from . import params
from .state import state

log = logging.getLogger(__name__)
bp = Blueprint("bulk", __name__, url_prefix="/api")

MAX_DELETE = 1000  # ids per request


@bp.delete("/captures/<id:cid>")
def delete_capture(cid: int):
    """DELETE /api/captures/<id> : removes the capture, its photo and thumbnail."""
    if not state().store.delete([cid]):
        abort(404)
    log.info("deleted capture %d", cid)
    return jsonify({"deleted": 1, "ids": [cid]})


def _ids_from_request() -> list[int]:
    body: Any = request.get_json(silent=True) if request.is_json else None
    raw = body.get("ids") if isinstance(body, dict) else request.form.get("ids", "").split(",")
    if not isinstance(raw, list) or not raw or raw == [""]:
        raise params.bad('send the capture ids: JSON {"ids": [1, 2]} or a form field ids=1,2')
    if len(raw) > MAX_DELETE:
        raise params.bad(f"at most {MAX_DELETE} ids per request")
    ids = []
    for value in raw:
        try:
            cid = int(str(value).strip(), 10)
        except ValueError:
            raise params.bad(f"ids must be whole numbers, got {str(value)[:40]!r}") from None
        if not 0 <= cid < 2**63:
            raise params.bad(f"no such capture id: {cid}")
        ids.append(cid)
    return ids


@bp.post("/captures/delete")
def delete_captures():
    """POST /api/captures/delete with {"ids": [...]} : removes those captures; says how many existed."""
    ids = _ids_from_request()
    deleted = state().store.delete(ids)
    log.info("deleted %d captures", deleted)
    return jsonify({"deleted": deleted, "ids": sorted(set(ids))})


@bp.get("/export")
def api_export():
    """GET /api/export?format=csv|json|zip&q=&k=&source=&since=&until=&from_time=&to_time= : the
    search's results (or, without q, every capture the filters let through) as a download."""
    fmt = (request.args.get("format") or "csv").strip().lower()
    if fmt not in export.FORMATS:
        raise params.bad(f"format must be one of {', '.join(export.FORMATS)}")
    q = params.query_arg(request.args)
    limit = params.int_arg(request.args, "k", export.MAX_ITEMS, 1, export.MAX_ITEMS)
    st = state()
    rows = export.select(st.store, q, embedder=st.embedder, limit=limit, filters=params.filter_args(request.args))
    items = [params.capture_json(r) for r in rows]
    headers = {"Content-Disposition": f'attachment; filename="{export.file_name(q, fmt)}"'}
    if fmt == "zip":
        body = stream_with_context(export.zip_chunks(items, lambda cid: st.store.file_path(cid, "image")))
    else:
        body = export.csv_text(items) if fmt == "csv" else export.json_text(items)
    return Response(body, content_type=export.MIMETYPES[fmt], headers=headers)
