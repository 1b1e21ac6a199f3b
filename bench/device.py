"""Device benchmark: `python -m bench.device` prints a table and saves bench/results/device.json.

For each captioner set in models/: encoder ms, decoder ms per step (beam 1 and 3), object tags ms, caption
ms (greedy and beam 3, tags and the tag bonus included, as on the device); then `edgecap ingest` images per second end to end over the Flickr8k test split (JPEG decode,
captioning, embedding, thumbnails, SQLite), in-process (the ingest loop) and as the real command.
Numbers are medians; the machine and its load average are recorded with them.
"""
from __future__ import annotations

import os

# as `edgecap` does (device/cli.py): one OpenBLAS thread, set before numpy is imported
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FLICKR = ROOT.parent / "shared" / "data" / "flickr8k"
OUT = ROOT / "bench" / "results" / "device.json"


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def model_timings(set_dir: Path, threads: int, repeats: int) -> dict[str, float]:
    """Encoder ms, one decoder step ms (1 and 3 hypotheses), caption ms (greedy, beam 3), through the
    same Captioner the device uses (so the numbers include the Python glue around each invoke)."""
    from device.captioner import Captioner
    from device.preprocess import load_image, to_model_input
    from device.tagger import load_tagger

    cap = Captioner.load(set_dir, num_threads=threads, tagger=load_tagger(set_dir.parent))
    images = [load_image(p) for p in sorted((ROOT / "device" / "samples").glob("*.jpg"))]
    pixels = to_model_input(images[0])  # already 224x224: encode() does not resize again
    out: dict[str, float] = {"encoder_ms": median_ms(lambda: cap.encode(pixels), repeats)}

    features = cap.encode(pixels)
    if cap.tagger:
        pooled = features[0].mean(axis=0)
        out["tags_ms"] = median_ms(lambda: cap.tagger.tag(pooled), repeats * 4)
    values, keys, h = cap.decoder_model.init(features)
    for beams in (1, 3):
        tokens = np.full([beams], cap.special.start, np.int32)
        hb, vb, kb = np.repeat(h, beams, 0), np.repeat(values, beams, 0), np.repeat(keys, beams, 0)
        out[f"step_ms_beam{beams}"] = median_ms(lambda t=tokens, hb=hb, vb=vb, kb=kb:
                                                cap.decoder_model.step(t, hb, vb, kb), repeats * 4)

    for label, beam in (("greedy", 1), ("beam3", 3)):
        times, words = [], []
        for _ in range(max(1, repeats // len(images))):
            for im in images:
                t = time.perf_counter()
                c = cap.caption(im, beam_width=beam)
                times.append((time.perf_counter() - t) * 1000)
                words.append(len(c.words))
        out[f"caption_ms_{label}"] = statistics.median(times)
        out[f"words_{label}"] = statistics.mean(words)
    return out


def test_images(n: int) -> list[str]:
    names = (FLICKR / "Flickr_8k.testImages.txt").read_text().split()[:n]
    return [str(FLICKR / "Images" / name) for name in names]


def ingest_in_process(files: list[str], set_name: str, threads: int, workers: int) -> dict[str, Any]:
    from device.config import load_config
    from device.ingest import ingest
    from device.pipeline import open_device

    with tempfile.TemporaryDirectory(prefix="edgecap-bench-") as d:
        cfg = load_config(env={}, overrides={"data_dir": d, "models_dir": str(ROOT / "models"),
                                             "model": {"captioner": set_name, "num_threads": threads}})
        with open_device(cfg) as device:  # as `edgecap ingest` opens it
            t, cpu = time.perf_counter(), time.process_time()
            res = ingest(device.pipeline, files, workers=workers)
            secs, cpu = time.perf_counter() - t, time.process_time() - cpu
    # CPU time per image does not depend on what else runs on the machine; with 2 idle cores the
    # rate cannot exceed 2 / cpu_s_per_image (and the stages must overlap to get near it).
    return {"images": res.stored, "seconds": round(secs, 2), "images_per_s": round(res.stored / secs, 1),
            "cpu_ms_per_image": round(cpu / max(1, res.stored) * 1000, 2),
            "cpu_bound_images_per_s_2_cores": round(2 * max(1, res.stored) / cpu, 1),
            "failed": res.failed, "threads": threads, "workers": workers, "beam_width": cfg.model.beam_width,
            "embedder": cfg.model.embedder}


def ingest_command(files: list[str], set_name: str) -> dict[str, Any]:
    """The real `edgecap ingest` over a folder of symlinks, timed from launch to exit."""
    with tempfile.TemporaryDirectory(prefix="edgecap-bench-") as d:
        src = Path(d) / "photos"
        src.mkdir()
        for f in files:
            (src / Path(f).name).symlink_to(f)
        env = {**os.environ, "EDGECAP_MODELS_DIR": str(ROOT / "models"), "PYTHONPATH": str(ROOT)}
        env.pop("EDGECAP_CONFIG", None)
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "device", "--data-dir", str(Path(d) / "data"),
                            "--log-level", "warning", "ingest", "--model", set_name, str(src)],
                           env=env, capture_output=True, text=True, check=False)
        secs = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"edgecap ingest failed: {r.stderr[-2000:]}")
    return {"command": "edgecap ingest --model " + set_name + " DIR", "images": len(files),
            "seconds": round(secs, 2), "images_per_s": round(len(files) / secs, 1)}


def run_rss(captures: int, set_name: str) -> dict[str, Any]:
    """Peak RSS of `edgecap run` (web page on) after `captures` stored captures, via /usr/bin/time -v.

    The camera is the picamera2 stand-in from tests/ (a live source with no hardware), capturing as fast
    as the models allow with the gate off, so every frame goes through caption, embed and store.
    """
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="edgecap-rss-") as d:
        cfg = Path(d) / "config.toml"
        cfg.write_text(
            f'[camera]\nsource = "picamera2"\nwidth = 640\nheight = 480\n'
            f"[capture]\ninterval = 0\nmin_change = 0\nmax_captures = {captures}\n"
            f'[model]\ncaptioner = "{set_name}"\n[web]\nhost = "127.0.0.1"\nport = {port}\n'
            "[store]\nmin_free_mb = 0\n"
        )
        env = {**os.environ, "EDGECAP_MODELS_DIR": str(ROOT / "models"), "EDGECAP_PASSWORD": "bench-password",
               "PYTHONPATH": f"{ROOT / 'tests' / 'picamera2_standin'}{os.pathsep}{ROOT}"}
        env.pop("EDGECAP_CONFIG", None)
        t = time.perf_counter()
        r = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "device", "--config", str(cfg),
                            "--data-dir", str(Path(d) / "data"), "--log-level", "warning", "run"],
                           env=env, capture_output=True, text=True, check=False)
        secs = time.perf_counter() - t
    peak_kb = next((int(line.split(":")[1]) for line in r.stderr.splitlines()
                    if "Maximum resident set size" in line), None)
    if r.returncode != 0 or peak_kb is None:
        raise RuntimeError(f"edgecap run failed: {r.stderr[-2000:]}")
    return {"captures": captures, "peak_rss_mb": round(peak_kb / 1024, 1), "seconds": round(secs, 1),
            "command": "/usr/bin/time -v edgecap run (picamera2 stand-in, web on, max_captures)"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.device", description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--threads", type=int, default=2, help="TFLite threads (default 2)")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--images", type=int, default=1000, help="Flickr8k test images for the ingest run")
    ap.add_argument("--workers", type=int, default=2, help="ingest decode threads")
    ap.add_argument("--sets", nargs="*", help="captioner sets (default: every captioner-* in models/)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--rss", type=int, metavar="N", help="only measure peak RSS of `edgecap run` after N "
                    "captures (merged into the saved JSON)")
    args = ap.parse_args(argv)

    if args.rss:
        res = run_rss(args.rss, "captioner-int8")
        print(f"edgecap run: peak RSS {res['peak_rss_mb']} MB after {res['captures']} captures "
              f"({res['seconds']} s)")
        saved = json.loads(args.out.read_text()) if args.out.is_file() else {}
        saved["run_rss"] = res
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(saved, indent=2) + "\n")
        return 0

    from device.modelset import available_sets

    sets = args.sets or available_sets(args.models_dir, kind="captioner")
    if not sets:
        print(f"no captioner sets in {args.models_dir}", file=sys.stderr)
        return 1
    result: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "load_avg_at_start": os.getloadavg()},
        "threads": args.threads, "models": {},
    }
    print(f"{'set':<22}{'encoder ms':>11}{'step ms b1':>11}{'step ms b3':>11}{'tags ms':>9}{'greedy ms':>11}"
          f"{'beam3 ms':>10}")
    for name in sets:
        set_dir = args.models_dir / name
        manifest = json.loads((set_dir / "manifest.json").read_text())
        row = {k: round(v, 3) for k, v in model_timings(set_dir, args.threads, args.repeats).items()}
        row["quantization"] = manifest.get("quantization")
        row["sizes_mb"] = round(sum((manifest.get("sizes") or {}).values()) / 1e6, 2)
        result["models"][name] = row
        tags = f"{row['tags_ms']:>9.3f}" if "tags_ms" in row else f"{'-':>9}"
        print(f"{name:<22}{row['encoder_ms']:>11.2f}{row['step_ms_beam1']:>11.3f}{row['step_ms_beam3']:>11.3f}"
              f"{tags}{row['caption_ms_greedy']:>11.2f}{row['caption_ms_beam3']:>10.2f}")

    if (FLICKR / "Flickr_8k.testImages.txt").is_file():
        files = test_images(args.images)
        default = "captioner-int8" if "captioner-int8" in sets else sets[0]
        result["ingest"] = ingest_in_process(files, default, 1, args.workers)  # `edgecap ingest` default
        result["ingest_command"] = ingest_command(files, default)
        i, c = result["ingest"], result["ingest_command"]
        print(f"\ningest ({default}, {i['images']} Flickr8k test images, beam {i['beam_width']}, "
              f"embedder {i['embedder']}):")
        print(f"  ingest loop      {i['images_per_s']:>7.1f} images/s ({i['seconds']} s; "
              f"{i['cpu_ms_per_image']} ms CPU per image -> at most "
              f"{i['cpu_bound_images_per_s_2_cores']} images/s on 2 idle cores)")
        print(f"  edgecap ingest   {c['images_per_s']:>7.1f} images/s ({c['seconds']} s, incl. start-up)")
    else:
        print(f"(no Flickr8k at {FLICKR}: ingest not measured)", file=sys.stderr)
    result["machine"]["load_avg_at_end"] = os.getloadavg()
    if args.out.is_file():  # keep a separately measured --rss result
        old = json.loads(args.out.read_text())
        if "run_rss" in old:
            result["run_rss"] = old["run_rss"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nsaved {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
