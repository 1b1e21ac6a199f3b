"""SIGKILL `edgecap ingest` at random moments: the store must stay consistent and keep every promise.

After each kill: `PRAGMA integrity_check` is ok. At the end, after the start-up reconcile: every row
has its files, every file its row, no photo is stored twice, and every capture the CLI reported (one
flushed JSON line per committed capture) is present.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
SAMPLES = ROOT / "device" / "samples"
KILLS = 20

pytestmark = pytest.mark.skipif(
    not (MODELS / "captioner-int8" / "manifest.json").is_file(), reason="models/captioner-int8 not built yet"
)


def make_photos(folder: Path, start: int, n: int) -> None:
    """n more distinct small JPEGs made from the samples (crops at different offsets)."""
    folder.mkdir(exist_ok=True)
    sources = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))]
    for i in range(start, start + n):
        im = sources[i % len(sources)]
        dx = (i // len(sources)) % 20 * 3
        crop = im.crop((dx, dx, dx + min(im.width, 300) - 40, dx + min(im.height, 300) - 40))
        crop = crop.rotate(i // (20 * len(sources)) * 90, expand=True)  # distinct beyond 180 photos
        crop.save(folder / f"photo_{i:04d}.jpg", quality=85)


def start(data: Path, photos: Path, cfg: Path) -> tuple[subprocess.Popen, list[dict], threading.Thread]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGECAP_MODELS_DIR": str(MODELS)}
    env.pop("EDGECAP_CONFIG", None)
    p = subprocess.Popen(
        [sys.executable, "-m", "device", "--config", str(cfg), "--data-dir", str(data), "ingest", "--json",
         str(photos)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
    )
    reported: list[dict] = []

    def reader() -> None:
        for line in p.stdout:
            if line.endswith("\n"):  # a line cut by the kill is not a promise
                reported.append(json.loads(line))

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    return p, reported, t


def check_integrity(db: Path) -> None:
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def check_promises(db: Path, reported: list[dict]) -> None:
    """Right after a kill, before anything else runs: each reported capture is there, for its photo."""
    with sqlite3.connect(db) as c:
        stored = dict(c.execute("SELECT id, original_path FROM captures").fetchall())
    broken = [r for r in reported if stored.get(r["id"]) != r["original_path"]]
    assert not broken, f"reported as stored but missing after a kill: {broken[:3]}"


def test_sigkill_during_ingest_keeps_the_store_consistent(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    total = 150
    make_photos(photos, 0, total)
    data = tmp_path / "data"
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\nnum_threads = 1\nbeam_width = 2\n")
    rng = random.Random(1234)
    reported: list[dict] = []
    kills = 0
    runs = 0
    while kills < KILLS and runs < 3 * KILLS:
        runs += 1
        p, lines, reader = start(data, photos, cfg)
        if kills % 4 == 0:
            delay = rng.uniform(0.0, 2.0)  # sometimes during start-up, reconcile or model loading
        else:
            # mostly while captures are being written: after the first one, plus a random bit
            deadline = time.monotonic() + 60
            while not lines and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            delay = rng.uniform(0.0, 0.3)
        time.sleep(delay)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        else:  # it finished first (everything stored): give the next runs more to do
            make_photos(photos, total, 60)
            total += 60
        p.wait(timeout=30)
        reader.join(timeout=10)
        reported.extend(lines)
        if (data / "edgecap.db").exists():
            check_integrity(data / "edgecap.db")
            check_promises(data / "edgecap.db", reported)
    assert kills >= KILLS, f"only {kills} kills in {runs} runs"

    # a last run completes the ingest (it reconciles first, as every start-up does)
    p, lines, reader = start(data, photos, cfg)
    assert p.wait(timeout=300) == 0
    reader.join(timeout=10)
    reported.extend(lines)

    from device.store import Store

    with Store(data) as store:
        store.reconcile(grace_seconds=0)  # files younger than the grace period count too
    check_integrity(data / "edgecap.db")
    with sqlite3.connect(data / "edgecap.db") as c:
        rows = c.execute("SELECT id, image, thumb, original_path FROM captures").fetchall()
    check_promises(data / "edgecap.db", reported)
    originals = [r[3] for r in rows]
    assert len(originals) == len(set(originals)) == total  # each photo exactly once
    referenced = {r[1] for r in rows} | {r[2] for r in rows}
    for rel in referenced:
        assert (data / rel).is_file(), f"row without its file: {rel}"
    on_disk = {str(p.relative_to(data)) for d in ("images", "thumbs") for p in (data / d).rglob("*") if p.is_file()}
    assert on_disk == referenced, f"files without a row: {sorted(on_disk - referenced)[:5]}"
