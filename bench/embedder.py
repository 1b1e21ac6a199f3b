"""Benchmark the device embedder: milliseconds per caption, one caption per call (as the daemon does).

    python -m bench.embedder [--data ../shared/data/flickr8k] [--models models] [--set minilm-int8]

Prints a table and saves bench/results/embedder.json. Uses the Flickr8k test captions when the data
folder is there, otherwise the project's own fixture sentences (and says so).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "flickr8k"


def load_texts(data: Path, limit: int) -> tuple[list[str], str]:
    if (data / "captions.txt").is_file() and (data / "Flickr_8k.testImages.txt").is_file():
        from converters.embedder import read_test_captions

        texts, source = read_test_captions(data), "Flickr8k test captions"
    else:
        from converters.embedder_reference import FIXTURE_SENTENCES

        texts, source = list(FIXTURE_SENTENCES), "fixture sentences (Flickr8k not found)"
    return (texts[:limit] if limit else texts), source


def run(models: Path, name: str, texts: list[str], threads: int) -> dict:
    from device.embedder import load_embedder

    t0 = time.perf_counter()
    emb = load_embedder(models, name, num_threads=threads)
    load_s = time.perf_counter() - t0
    if emb is None:
        raise SystemExit(f"no embedder {name!r} under {models}")
    emb.embed(texts[:20])  # warm-up: first runs at a new length allocate
    tok_t0 = time.perf_counter()
    lengths = [len(emb.token_ids(t)) for t in texts]
    tok_ms = (time.perf_counter() - tok_t0) * 1000 / len(texts)
    per = []
    for t in texts:
        s = time.perf_counter()
        emb.embed([t])
        per.append((time.perf_counter() - s) * 1000)
    per.sort()
    return {
        "set": name,
        "num_threads": threads,
        "n": len(texts),
        "load_s": round(load_s, 3),
        "tokenize_ms": round(tok_ms, 4),
        "ms_mean": round(statistics.fmean(per), 3),
        "ms_p50": round(per[len(per) // 2], 3),
        "ms_p95": round(per[int(len(per) * 0.95)], 3),
        "ms_max": round(per[-1], 3),
        "tokens_mean": round(statistics.fmean(lengths), 1),
        "tokens_max": max(lengths),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.embedder", description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    ap.add_argument("--set", default="minilm-int8")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--limit", type=int, default=0, help="first N captions only")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "embedder.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    texts, source = load_texts(args.data, args.limit)
    rows = [run(args.models, args.set, texts, t) for t in args.threads]
    model = args.models / args.set / "model.tflite"
    result = {
        "benchmark": "embedder",
        "texts": source,
        "model_file": f"models/{args.set}/model.tflite",
        "model_mb": round(model.stat().st_size / 1e6, 2) if model.is_file() else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": {"platform": platform.platform(), "machine": platform.machine(),
                    "python": platform.python_version()},
        "runs": rows,
    }
    print(f"embedder {args.set}: {len(texts)} {source}, model {result['model_mb']} MB, "
          f"peak RSS {result['peak_rss_mb']} MB")
    print(f"{'threads':>7} {'load s':>7} {'tok ms':>7} {'mean ms':>8} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'max ms':>7} {'tokens':>7}")
    for r in rows:
        print(f"{r['num_threads']:>7} {r['load_s']:>7.3f} {r['tokenize_ms']:>7.3f} {r['ms_mean']:>8.3f} "
              f"{r['ms_p50']:>7.3f} {r['ms_p95']:>7.3f} {r['ms_max']:>7.3f} {r['tokens_mean']:>7.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"saved {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
