"""What the web layer (Flask + waitress + auth + JSON) adds on top of the store and search calls.

    python -m bench.web --captures 20000 --requests 300 --clients 50 --duration 30

Fills a store with the synthetic captures of bench/search.py, starts device.web with authentication
ON (HTTP Basic, a real scrypt hash: the setting a device runs with), and for each endpoint times
(a) the library call alone, (b) the same request through the app in-process (no socket) and
(c) over a real socket through waitress. Then --clients concurrent clients send a mix of requests
(search, newest list, one capture, an image) for --duration seconds: errors, p50/p95/p99, rps.
Results go to bench/results/web.json.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import logging
import platform
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.load import percentiles, run_clients
from bench.search import SyntheticEmbedder, fill, make_queries
from device import search as search_mod
from device.config import Config, WebConfig
from device.store import Store
from device.web import create_app, hash_password, make_server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "web.json"
PASSWORD = "bench-password"
log = logging.getLogger("bench.web")
AUTH = {"Authorization": "Basic " + base64.b64encode(f"edgecap:{PASSWORD}".encode()).decode()}


def _time(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


class Conn:
    """One keep-alive HTTP/1.1 connection, reopened after an error."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def get(self, path: str) -> int:
        try:
            self.conn.request("GET", path, headers=AUTH)
            resp = self.conn.getresponse()
            resp.read()
            return resp.status
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            return 0


def endpoints(store: Store, embedder: Any, n: int) -> dict[str, tuple[str, Callable[[], Any]]]:
    """name -> (path, the library call the route makes)."""
    q = make_queries(n)
    ids = [r["id"] for r in store.recent(50)]
    cycle = {"i": 0}

    def next_query() -> dict[str, str]:
        cycle["i"] += 1
        return q[cycle["i"] % len(q)]

    return {
        "search": ("/api/search?{}", lambda p=None: search_mod.search(
            store, (p or next_query())["q"], k=24, embedder=embedder)),
        "captures": ("/api/captures?limit=24", lambda: store.recent(24)),
        "capture": (f"/api/captures/{ids[0]}", lambda: store.get(ids[0])),
        # synthetic rows share one placeholder under images/, so only the image route has a file
        "image": (f"/api/captures/{ids[0]}/image", lambda: store.file_path(ids[0], "image").read_bytes()),
        "healthz": ("/healthz", lambda: None),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--captures", type=int, default=20_000)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--threads", type=int, default=8, help="waitress worker threads")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("waitress").setLevel(logging.ERROR)  # "task queue depth" under load is expected

    tmp = Path(tempfile.mkdtemp(prefix="edgecap-bench-web-"))
    store = Store(tmp / "store")
    try:
        fill(store, args.captures)
        embedder = SyntheticEmbedder()
        search_mod.warm(store)
        config = Config(data_dir=tmp / "store", web=WebConfig(password_hash=hash_password(PASSWORD),
                                                              secret_key="bench"))
        app = create_app(config, store, None, embedder)
        client = app.test_client()
        server = make_server(app, "127.0.0.1", 0, threads=args.threads)
        th = threading.Thread(target=server.serve_forever, daemon=True)
        th.start()
        conn = Conn(server.port)
        queries = make_queries(args.requests)
        rows = {}
        for name, (path, call) in endpoints(store, embedder, args.requests).items():
            if name == "search":
                paths = ["/api/search?" + urllib.parse.urlencode({"q": x["q"], "k": "24"}) for x in queries]
                direct = [_timed(lambda x=x: search_mod.search(store, x["q"], k=24, embedder=embedder))
                          for x in queries]
            else:
                paths = [path] * args.requests
                direct = _time(call, args.requests)
            conn.get(paths[0])
            in_app = [_timed(lambda u=u: client.get(u, headers=AUTH)) for u in paths]
            statuses: list[int] = []
            sock = [_timed(lambda u=u, out=statuses: out.append(conn.get(u))) for u in paths]
            bad = sum(s != 200 for s in statuses)
            rows[name] = {"library_ms": percentiles(direct), "in_app_ms": percentiles(in_app),
                          "http_ms": percentiles(sock), "errors": bad}
            log.info("%-9s library p50 %6.2f  in-app p50 %6.2f  http p50 %6.2f p95 %6.2f  errors %d",
                         name, rows[name]["library_ms"]["p50"], rows[name]["in_app_ms"]["p50"],
                         rows[name]["http_ms"]["p50"], rows[name]["http_ms"]["p95"], bad)
        conc = concurrent(server.port, store, queries, args.clients, args.duration)
        log.info("%d clients x %.0f s: %d requests, %d errors, %.1f rps, p50 %.1f p95 %.1f p99 %.1f ms",
                     args.clients, conc["duration_s"], conc["requests"], conc["errors"], conc["rps"],
                     conc["latency_ms"]["p50"], conc["latency_ms"]["p95"], conc["latency_ms"]["p99"])
        server.stop()
        th.join(10)
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "what": "device.web overhead (auth on, HTTP Basic) vs the library calls; synthetic captures",
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": __import__("os").cpu_count()},
        "captures": args.captures, "threads": args.threads, "endpoints": rows, "concurrent": conc,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"endpoints_http_p50_ms": {k: v["http_ms"]["p50"] for k, v in rows.items()},
                      "concurrent": conc}, indent=1))
    return 0


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def concurrent(port: int, store: Store, queries: list[dict[str, str]], clients: int,
               duration: float) -> dict[str, Any]:
    """clients threads, each on its own keep-alive connection, for duration seconds: a request mix of
    60% search, 20% newest list, 10% one capture, 10% its image."""
    ids = [r["id"] for r in store.recent(100)]

    def path(i: int) -> str:
        r = i % 10
        if r < 6:
            return "/api/search?" + urllib.parse.urlencode({"q": queries[i % len(queries)]["q"], "k": "24"})
        if r < 8:
            return "/api/captures?limit=24"
        if r < 9:
            return f"/api/captures/{ids[i % len(ids)]}"
        return f"/api/captures/{ids[i % len(ids)]}/image"

    def make_client() -> Callable[[int], int]:
        conn = Conn(port)
        return lambda i: conn.get(path(i))
    return run_clients(clients, duration, make_client, stride=7)


if __name__ == "__main__":
    raise SystemExit(main())
