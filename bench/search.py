"""Search latency through the real web server, at store sizes the device may reach.

    python -m bench.search --sizes 100000 1000000 --requests 1000 --duration 30

For each size: fills a store with SYNTHETIC captures (rows only: every row points to one shared
placeholder JPEG; captions drawn from a Zipf-weighted word list; embeddings are bag-of-words vectors
so that similar captions have similar vectors, like real ones), starts the web app (device.web) with
waitress on 127.0.0.1, then

1. sends --requests sequential GET /api/search requests (mixed queries, some with filters) and
   prints p50/p95/p99;
2. runs --clients concurrent clients for --duration seconds and prints throughput, errors and p99.

With models/image-projection present (and without --no-image-vectors), every row also gets a
384-byte image vector plus its hubness (like a capture stored through the projection: here the
caption's vector plus noise) and the store opens with the projection, so each text query also runs
the text -> image ranking and the score fusion. The bytes the image vectors add per capture are
measured (SQLite dbstat) and saved.

The query embedding comes from the same synthetic embedder; the MiniLM time per query (if the model
set is present) is measured separately and printed, since it adds to each hybrid query.
Results go to bench/results/search.json (one entry per size, merged with earlier runs).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.load import percentiles, run_clients
from device import search as search_mod
from device.store import Store
from device.vectors import encode_embedding

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("bench.search")
RESULTS = ROOT / "bench" / "results" / "search.json"
SYNTHETIC_SOURCE = "synthetic"
PLACEHOLDER = "images/synthetic/placeholder.jpg"  # the one file every synthetic row points to

SUBJECTS = ["man", "woman", "dog", "boy", "girl", "child", "people", "dogs", "men", "women", "person", "group", "player", "cat", "bird", "horse", "biker", "skier", "surfer", "climber", "crowd", "baby", "puppy", "team", "couple", "kid"]
VERBS = ["runs", "walks", "jumps", "plays", "sits", "stands", "rides", "climbs", "swims", "looks", "holds", "throws", "catches", "stands", "sleeps", "eats", "carries", "wears", "smiles", "poses", "waits", "crosses", "skates"]
OBJECTS = ["ball", "frisbee", "bike", "rock", "wave", "snow", "water", "grass", "street", "field", "beach", "pool", "wall", "shirt", "hat", "toy", "stick", "fence", "road", "trail", "car", "bench", "table", "sofa", "tree", "hill", "mountain", "river", "sand", "ramp", "board", "umbrella", "kite", "camera", "dress", "jacket"]
COLORS = ["red", "blue", "black", "white", "brown", "green", "yellow", "orange", "pink", "purple", "gray"]
PLACES = ["park", "city", "forest", "lake", "yard", "garden", "stadium", "market", "station", "bridge"]
GLUE = ["a", "the", "in", "on", "with", "at", "of", "through", "into", "near"]
MISSPELLED = ["dgo", "bech", "moutain", "skatboard", "frisbe", "childern", "grss", "yelow"]


def _zipf_choice(rng: np.random.Generator, words: list[str], n: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, len(words) + 1)
    return rng.choice(len(words), size=n, p=weights / weights.sum())


def synthetic_captions(n: int, seed: int = 0) -> list[str]:
    """n captions like "a brown dog runs through the grass in the park" (Zipf-weighted words)."""
    rng = np.random.default_rng(seed)
    s, v, o = (_zipf_choice(rng, w, n) for w in (SUBJECTS, VERBS, OBJECTS))
    c1, c2, pl = rng.integers(0, len(COLORS), n), rng.integers(0, len(COLORS), n), rng.integers(0, len(PLACES), n)
    shape = rng.integers(0, 4, n)
    out = []
    for i in range(n):
        subj, verb, obj = SUBJECTS[s[i]], VERBS[v[i]], OBJECTS[o[i]]
        if shape[i] == 0:
            out.append(f"a {COLORS[c1[i]]} {subj} {verb} on the {obj}")
        elif shape[i] == 1:
            out.append(f"a {subj} in a {COLORS[c2[i]]} {obj} {verb} in the {PLACES[pl[i]]}")
        elif shape[i] == 2:
            out.append(f"the {subj} {verb} with a {obj}")
        else:
            out.append(f"a {subj} {verb} near the {COLORS[c1[i]]} {obj} at the {PLACES[pl[i]]}")
    return out


class SyntheticEmbedder:
    """Bag-of-words vectors: fixed random vector per word, summed and normalised (not semantic)."""

    dim = 384
    model_id = "synthetic-bag-of-words"

    def __init__(self) -> None:
        self._cache: dict[str, np.ndarray] = {}

    def _word(self, w: str) -> np.ndarray:
        vec = self._cache.get(w)
        if vec is None:
            seed = int.from_bytes(hashlib.sha256(w.encode()).digest()[:8], "little")
            vec = self._cache[w] = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return vec

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                if w not in GLUE:
                    out[i] += self._word(w)
            out[i] /= max(float(np.linalg.norm(out[i])), 1e-9)
        return out


def fill(store: Store, n: int, *, seed: int = 0, batch: int = 20_000, image_vectors: bool = False) -> float:
    """Bulk-insert n synthetic rows (one transaction per batch). Returns seconds taken."""
    from PIL import Image

    placeholder = store.data_dir / PLACEHOLDER
    placeholder.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), "gray").save(placeholder, quality=85)
    (store.data_dir / "SYNTHETIC-BENCHMARK-DATA.txt").write_text(
        "Rows in this store are synthetic benchmark captures; all point to one placeholder image.\n")
    emb = SyntheticEmbedder()
    conn = store.connection()
    t0 = time.perf_counter()
    start_time = 1_600_000_000.0
    done = 0
    while done < n:
        m = min(batch, n - done)
        caps = synthetic_captions(m, seed=seed + done)
        vecs = emb.embed(caps)
        conn.execute("BEGIN")
        rows = []
        for i, cap in enumerate(caps):
            t = start_time + (done + i) * 30.0  # one capture every 30 s
            src = SYNTHETIC_SOURCE if (done + i) % 10 else SYNTHETIC_SOURCE + "-b"
            rows.append((t, src, PLACEHOLDER, PLACEHOLDER, cap, "[]"))
        first = conn.execute("SELECT coalesce(max(id), 0) FROM captures").fetchone()[0] + 1
        conn.executemany(
            "INSERT INTO captures (time, source, image, thumb, caption, beams) VALUES (?, ?, ?, ?, ?, ?)", rows)
        conn.executemany(
            "INSERT INTO embeddings (capture_id, vector) VALUES (?, ?)",
            ((first + i, encode_embedding(v)) for i, v in enumerate(vecs)),
        )
        if image_vectors:
            rng = np.random.default_rng(seed + done + 1)
            img = vecs + 0.8 * rng.standard_normal(vecs.shape).astype(np.float32) / np.sqrt(vecs.shape[1])
            img /= np.linalg.norm(img, axis=1, keepdims=True)
            hub = rng.uniform(0.2, 0.5, m)
            conn.executemany(
                "INSERT INTO image_vectors (capture_id, vector, hub) VALUES (?, ?, ?)",
                ((first + i, encode_embedding(v), float(h)) for i, (v, h) in enumerate(zip(img, hub))),
            )
        conn.execute("COMMIT")
        done += m
        log.info("filled %d / %d", done, n)
    conn.execute("DELETE FROM capture_changes")  # the bulk load needs no change log
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return time.perf_counter() - t0


def make_queries(n: int, seed: int = 1) -> list[dict[str, str]]:
    """A mix: one-word, two/three-word, misspelled, stop-words only, empty; some with filters."""
    rng = np.random.default_rng(seed)
    vocab = SUBJECTS + VERBS + OBJECTS + COLORS + PLACES
    out = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.3:
            q = vocab[rng.integers(len(vocab))]
        elif kind < 0.7:
            q = " ".join(vocab[j] for j in rng.integers(0, len(vocab), rng.integers(2, 4)))
        elif kind < 0.8:
            q = f"{COLORS[rng.integers(len(COLORS))]} {SUBJECTS[rng.integers(len(SUBJECTS))]} on the beach"
        elif kind < 0.9:
            q = MISSPELLED[rng.integers(len(MISSPELLED))]
        elif kind < 0.95:
            q = "the"
        else:
            q = ""
        params = {"q": q, "k": "24"}
        if i % 10 == 3:
            params["source"] = SYNTHETIC_SOURCE + "-b"
        if i % 10 == 7:
            params["since"] = "2021-01-01"
        out.append(params)
    return out


class Client:
    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(self, params: dict[str, str]) -> tuple[int, float]:
        url = "/api/search?" + urllib.parse.urlencode(params)
        t0 = time.perf_counter()
        try:
            self.conn.request("GET", url)
            resp = self.conn.getresponse()
            body = resp.read()
            status = resp.status
            if status == 200:
                json.loads(body)
        except (OSError, http.client.HTTPException, ValueError):
            self.conn.close()
            status = 0
        return status, (time.perf_counter() - t0) * 1000


def start_server(store: Store, embedder: Any) -> tuple[Any, threading.Thread]:
    from device.config import Config, WebConfig
    from device.web import create_app, make_server

    config = Config(data_dir=store.data_dir, web=WebConfig(auth=False, secret_key="bench"))
    app = create_app(config, store, None, embedder)
    server = make_server(app, "127.0.0.1", 0, threads=8)
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    return server, th


def sequential(port: int, queries: list[dict[str, str]]) -> dict[str, Any]:
    client = Client(port)
    ms, errors = [], 0
    for q in queries:
        status, took = client.get(q)
        ms.append(took)
        errors += status != 200
    return {"latency_ms": percentiles(ms), "errors": errors}


def concurrent(port: int, queries: list[dict[str, str]], clients: int, duration: float) -> dict[str, Any]:
    def make_client() -> Callable[[int], int]:
        client = Client(port)
        return lambda i: client.get(queries[i % len(queries)])[0]
    return run_clients(clients, duration, make_client)


def minilm_ms() -> dict[str, float] | None:
    """Median MiniLM time for one query (adds to every hybrid query), when the model set is here."""
    try:
        from device.embedder import load_embedder

        emb = load_embedder(ROOT / "models", "minilm-int8", num_threads=1)
    except Exception as e:  # noqa: BLE001 - the bench still runs without it
        log.info("MiniLM not measured: %s", e)
        return None
    if emb is None:
        return None
    qs = [q["q"] or "a dog" for q in make_queries(50)]
    emb.embed(qs[:1])
    times = []
    for q in qs:
        t0 = time.perf_counter()
        emb.embed([q])
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50": round(statistics.median(times), 2), "p95": round(float(np.percentile(times, 95)), 2)}


def run_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    base = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="edgecap-bench-"))
    data = base / f"store-{n}"
    if data.exists() and not args.reuse:
        shutil.rmtree(data)
    projection = None
    if not args.no_image_vectors:
        from device.image_projection import load_image_projection

        projection = load_image_projection(ROOT / "models")
    store = Store(data, image_projection=projection)
    fill_s = None
    if store.count() != n:
        if store.count():
            raise SystemExit(f"{data} holds {store.count()} captures, not {n}; remove it or drop --reuse")
        fill_s = round(fill(store, n, image_vectors=projection is not None), 1)
    image_bytes = store.connection().execute(
        "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = 'image_vectors'").fetchone()[0]
    embedder = SyntheticEmbedder()
    t0 = time.perf_counter()
    search_mod.warm(store)
    warm_s = round(time.perf_counter() - t0, 2)
    server, th = start_server(store, embedder)
    try:
        queries = make_queries(args.requests)
        Client(server.port).get(queries[0])
        seq = sequential(server.port, queries)
        conc = concurrent(server.port, queries, args.clients, args.duration)
        # The same queries straight through search(), without HTTP, for comparison.
        direct = []
        for q in queries[: min(300, len(queries))]:
            t1 = time.perf_counter()
            search_mod.search(store, q["q"], k=24, embedder=embedder, source=q.get("source"))
            direct.append((time.perf_counter() - t1) * 1000)
    finally:
        server.stop()
        th.join(timeout=10)
        store.close()
        if not args.keep and not args.data_dir:
            shutil.rmtree(base, ignore_errors=True)
    return {
        "captures": n, "fill_s": fill_s, "cache_load_s": warm_s,
        "image_vectors": projection is not None,
        "image_vector_bytes_per_capture": round(image_bytes / max(1, n), 1),
        "http_sequential": seq, "http_concurrent": conc, "direct_search_ms": percentiles(direct),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000])
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--data-dir", help="keep stores here (default: a temp folder, removed afterwards)")
    p.add_argument("--reuse", action="store_true", help="reuse a filled store of the same size in --data-dir")
    p.add_argument("--keep", action="store_true", help="do not remove the temp folder")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--no-image-vectors", action="store_true",
                   help="captions only (no text -> image ranking), as before models/image-projection")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("waitress").setLevel(logging.ERROR)  # "Task queue depth" under 50 clients is expected

    results = []
    for n in args.sizes:
        r = run_size(n, args)
        results.append(r)
        s, c = r["http_sequential"]["latency_ms"], r["http_concurrent"]
        print(f"{n:>9} captures  HTTP p50 {s['p50']:7.2f} ms  p95 {s['p95']:7.2f} ms  p99 {s['p99']:7.2f} ms  "
              f"errors {r['http_sequential']['errors']}  |  {c['clients']} clients: {c['rps']} req/s, "
              f"p99 {c['latency_ms']['p99']:.1f} ms, errors {c['errors']}  |  direct p95 "
              f"{r['direct_search_ms']['p95']:.2f} ms  (fill {r['fill_s']} s, cache load {r['cache_load_s']} s, "
              f"image vectors {r['image_vector_bytes_per_capture']} B/capture)")
    embed = minilm_ms()
    if embed:
        print(f"MiniLM query embedding (adds to each hybrid query): p50 {embed['p50']} ms, p95 {embed['p95']} ms")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.exists() else {}
    by_size = {str(r["captures"]): r for r in previous.get("runs", [])}
    by_size.update({str(r["captures"]): r for r in results})
    doc = {
        "what": "GET /api/search latency through waitress on 127.0.0.1; synthetic captures (rows only)",
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": __import__("os").cpu_count()},
        "minilm_query_ms": embed,
        "runs": sorted(by_size.values(), key=lambda r: r["captures"]),
    }
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(out)
    print(f"saved {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
