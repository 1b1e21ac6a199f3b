"""GET /metrics: Prometheus' text format, behind the same password as the API (scrape it with
basic_auth). The store's numbers are read at each scrape; the daemon's parts add their own."""
from __future__ import annotations

import logging
import time

from flask import Blueprint, Response

from device.metrics import Sample, gauge, render

from .state import state

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)


def _store_samples() -> list[Sample]:
    st = state()
    stats = st.store.stats()
    out = [
        gauge("edgecap_store_captures", "Captures in the store", stats["count"]),
        gauge("edgecap_store_bytes", "Bytes the store uses (database pages in use + image files)",
              stats["store_bytes"]),
    ]
    disk = stats.get("disk")
    if disk:
        out.append(gauge("edgecap_disk_free_bytes", "Free space on the disk holding the data folder",
                         disk["free_bytes"]))
        out.append(gauge("edgecap_disk_total_bytes", "Size of the disk holding the data folder",
                         disk["total_bytes"]))
    return out


@bp.get("/metrics")
def metrics():
    st = state()
    samples = [
        gauge("edgecap_up", "1 while the page answers", 1),
        gauge("edgecap_process_start_time_seconds", "When this process started (Unix time)", st.started),
        gauge("edgecap_uptime_seconds", "Seconds since this process started", round(time.time() - st.started, 1)),
    ]
    samples += _store_samples()
    if st.metrics is not None:
        samples += st.metrics.collect()
    return Response(render(samples), content_type="text/plain; version=0.0.4; charset=utf-8")
