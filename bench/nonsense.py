"""Does nonsense find nothing, while real queries still find their photo? (issue 14)

    python -m bench.nonsense [--data ../shared/data/flickr8k] [--store DIR] [--split dev]

Ingests the split's 1000 Flickr8k images with `edgecap ingest` (or reuses --store), then through
device.search.search with the shipped ranking and other image floors:
- Recall@1/10 of each image's own 5 human captions and of a short query from each (as
  python -m converters retrieval measures them; every other query, for time);
- 300 random letter strings ("qzvtk", "hmw ojrapx"): the share that returns anything, and how
  many captures they return on average;
- a fixed list of real words for things Flickr8k has few or no photos of ("xylophone", "spreadsheet").
Prints a table and saves bench/results/nonsense-<split>.json. The floor is chosen on dev.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import random
import string
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_OF_DOMAIN = ["xylophone quartet zzqx", "xylophone", "spreadsheet", "submarine", "saxophone", "tax return",
                 "quantum physics", "laptop computer", "microwave oven", "calculator", "violin concerto",
                 "sushi", "telescope", "penguin", "giraffe", "chess board"]


def letter_strings(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    word = lambda: "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8)))  # noqa: E731
    return [" ".join(word() for _ in range(rng.randint(1, 3))) for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.nonsense", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "flickr8k")
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--split", default="dev", choices=("dev", "test"))
    p.add_argument("--store", type=Path, help="reuse (or create) this data folder")
    p.add_argument("--floors", type=float, nargs="*", default=[-1.0, 0.0, 0.05, 0.1, 0.15],
                   help="image floors to compare (on the hubness-corrected image score)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    from converters.data import load_dataset
    from converters.retrieval import CachedEmbedder, evaluate, ingest, queries
    from device.embedder import load_embedder
    from device.pipeline import open_store
    from device.search import SHIPPED, search

    dataset = load_dataset(args.data)
    names = dataset.splits[args.split]
    tmp = None if args.store else tempfile.TemporaryDirectory(prefix="edgecap-nonsense-")
    data_dir = args.store or Path(tmp.name)
    if not (data_dir / "edgecap.db").is_file():
        ingest([dataset.image_path(n) for n in names], data_dir, args.models, "captioner-int8")
    store = open_store(data_dir, args.models)
    ids = {Path(r[1]).name: r[0] for r in store.connection().execute("SELECT id, original_path FROM captures")}
    embedder = CachedEmbedder(load_embedder(args.models, "minilm-int8", num_threads=2))
    qs = {kind: v[::2] for kind, v in queries(dataset.captions, names).items()}
    nonsense = letter_strings(300)
    report = {"benchmark": "nonsense", "split": args.split, "images": len(ids), "letter_strings": len(nonsense),
              "machine": {"platform": platform.platform(), "python": platform.python_version()}, "variants": {}}
    print(f"Flickr8k {args.split}, {len(ids)} images; recall over {len(qs['full'])} full / "
          f"{len(qs['short'])} short queries; {len(nonsense)} random letter strings\n")
    print("| image floor | full R@1 / R@10 | short R@1 / R@10 | letter strings: any result | mean results | "
          "out-of-domain words: mean results |")
    print("| --- | --- | --- | --- | --- | --- |")
    for floor in args.floors:
        rk = dataclasses.replace(SHIPPED, image_floor=floor)
        t0 = time.perf_counter()
        recall = {kind: evaluate(store, embedder, rk, v, ids, 10) for kind, v in qs.items()}
        junk = [len(search(store, q, k=100, embedder=embedder, ranking=rk).items) for q in nonsense]
        ood = [len(search(store, q, k=100, embedder=embedder, ranking=rk).items) for q in OUT_OF_DOMAIN]
        row = {"recall": recall, "letter_strings_any": round(sum(n > 0 for n in junk) / len(junk), 3),
               "letter_strings_mean": round(sum(junk) / len(junk), 2), "out_of_domain_mean": round(sum(ood) / len(ood), 1),
               "out_of_domain": dict(zip(OUT_OF_DOMAIN, ood)), "seconds": round(time.perf_counter() - t0, 1)}
        label = f"{floor:g}" + (" (shipped)" if floor == SHIPPED.image_floor else "")
        report["variants"][label] = row
        f, s = recall["full"], recall["short"]
        print(f"| {label} | {f['r1']} / {f['r10']} | {s['r1']} / {s['r10']} | {row['letter_strings_any']:.0%} | "
              f"{row['letter_strings_mean']} | {row['out_of_domain_mean']} |", flush=True)
    out = args.out or ROOT / "bench" / "results" / f"nonsense-{args.split}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nsaved {out}")
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
