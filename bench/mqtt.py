"""Captioning throughput with MQTT (and alert rules) on versus off.

    python -m bench.mqtt [--block 10] [--cycles 30] [--threads 2]

Each frame goes through the daemon's own Pipeline (caption with beam 3, embed, store: JPEG, thumbnail,
SQLite) from the bundled sample photos resized to 1280x720, like a camera's frames. "mqtt" adds the
event queue and the publisher to a real Mosquitto broker (started here, like the tests do; Debian's
`mosquitto`), with Home Assistant discovery, each capture's JSON and thumbnail; "mqtt+alerts" also
checks three alert rules (two queries scored by search, one phrase) per capture.

The modes take turns in short blocks of frames (order rotating each cycle), so that other load on
the machine hits them alike. The publishing threads work while the block's frames are captioned;
after each block, untimed, they finish what is left, so no mode's work spills into the next block.
Throughput is all frames over all timed seconds per mode; the per-cycle ratios to "off" give the
spread. The process's CPU seconds per capture (all threads, publishing included) are reported too:
on a shared machine they are the steadier measure of what MQTT costs. A subscriber checks that every
capture arrived. Saves bench/results/mqtt.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from device.config import load_config
from device.event_outputs import start_events
from device.metrics import Registry
from device.pipeline import open_device
from device.sources import Frame
from tests.mqttbroker import PASSWORD, USER, Broker, Subscriber, mosquitto_binary, wait_until

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "mqtt.json"
MODES = ("off", "mqtt", "mqtt+alerts")
RULES = [
    {"name": "person at the door", "query": "a person at the door", "min_score": 0.1},
    {"name": "dog", "query": "a dog on the grass", "min_score": 0.1},
    {"name": "red", "phrase": "red"},
]


def frames() -> list[Image.Image]:
    return [Image.open(p).convert("RGB").resize((1280, 720))
            for p in sorted((ROOT / "device" / "samples").glob("*.jpg"))]


def setup(mode: str, work: Path, broker_port: int, threads: int) -> dict[str, Any]:
    overrides: dict[str, Any] = {"data_dir": str(work / mode.replace("+", "-")), "model": {"num_threads": threads}}
    if mode != "off":
        overrides["mqtt"] = {"enabled": True, "host": "127.0.0.1", "port": broker_port, "username": USER,
                             "password": PASSWORD, "device_id": mode.replace("+", "-")}
    if mode == "mqtt+alerts":
        overrides["alerts"] = RULES
    cfg = load_config(env={}, overrides=overrides)
    device = open_device(cfg)
    store = device.store
    events = start_events(cfg, store, device.embedder, Registry())
    if events is not None and events.mqtt is not None:
        assert wait_until(lambda: events.mqtt.connected, 10), "cannot connect to the broker"
    pipeline = device.pipeline
    pipeline.on_saved = events.hub.submit if events else None
    return {"cfg": cfg, "store": store, "events": events, "pipeline": pipeline, "seconds": [], "cpu_seconds": [], "stored": 0}


def timed_block(state: dict[str, Any], images: list[Image.Image], n: int, t0: float) -> None:
    """Process n frames: wall seconds until the last is stored; then (untimed) wait until the outputs
    have handled them. CPU seconds of the whole process (all threads) cover both."""
    cpu0, start = time.process_time(), time.perf_counter()
    for i in range(n):
        state["pipeline"].process(Frame(images[(state["stored"] + i) % len(images)], "bench", None,
                                        t0 + state["stored"] + i))
    elapsed = time.perf_counter() - start
    state["stored"] += n
    events = state["events"]
    if events is not None:
        wait_until(lambda: events.hub.idle() and events.mqtt.queued() == 0, 30, every=0.005)
    state["seconds"].append(elapsed)
    state["cpu_seconds"].append(time.process_time() - cpu0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--block", type=int, default=10, help="frames per mode per turn")
    ap.add_argument("--cycles", type=int, default=30, help="turns per mode")
    ap.add_argument("--threads", type=int, default=2, help="TFLite threads, as [model] num_threads")
    args = ap.parse_args(argv)
    if mosquitto_binary() is None:
        print("bench.mqtt: needs Mosquitto (apt-get install mosquitto)", file=sys.stderr)
        return 1
    load_start = os.getloadavg()
    images = frames()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Broker(work / "broker").start()
        sub = Subscriber(broker.port, ["edgecap/+/capture", "edgecap/+/alert"])
        states = {m: setup(m, work, broker.port, args.threads) for m in MODES}
        try:
            for m in MODES:  # warm-up: interpreters, caches, the broker connection
                timed_block(states[m], images, 5, 1.7e9)
                states[m]["seconds"].clear()
                states[m]["cpu_seconds"].clear()
            for c in range(args.cycles):
                order = MODES[c % len(MODES):] + MODES[:c % len(MODES)]
                for m in order:
                    timed_block(states[m], images, args.block, 1.7e9)
                if (c + 1) % 10 == 0:
                    print(f"cycle {c + 1}/{args.cycles}", file=sys.stderr)
            delivered: dict[str, Any] = {}
            for m in MODES[1:]:
                ev, total = states[m]["events"], states[m]["stored"]
                topic = f"edgecap/{m.replace('+', '-')}/capture"
                wait_until(lambda: ev.hub.idle() and ev.mqtt.queued() == 0
                           and len({json.loads(p)["id"] for p in sub.on(topic)}) >= total, 60)
                delivered[m] = {
                    "captures_stored": total,
                    "captures_received": len({json.loads(p)["id"] for p in sub.on(topic)}),
                    "alerts_received": len(sub.on(f"edgecap/{m.replace('+', '-')}/alert")),
                    "messages_acked": ev.mqtt.published, "dropped": ev.mqtt.dropped + ev.hub.dropped,
                }
        finally:
            for m in MODES:
                if states.get(m) and states[m]["events"] is not None:
                    states[m]["events"].stop()
                if states.get(m):
                    states[m]["store"].close()
            sub.close()
            broker.stop()
    rate = {m: args.block * len(states[m]["seconds"]) / sum(states[m]["seconds"]) for m in MODES}
    cpu = {m: sum(states[m]["cpu_seconds"]) / (args.block * len(states[m]["cpu_seconds"])) for m in MODES}
    ratios = {m: [off / on for off, on in zip(states["off"]["seconds"], states[m]["seconds"])] for m in MODES[1:]}
    result = {
        "command": "python -m bench.mqtt " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_at_start": load_start, "load_avg_at_end": os.getloadavg()},
        "block": args.block, "cycles": args.cycles, "threads": args.threads, "frame_size": [1280, 720],
        "captures_per_s": {m: round(rate[m], 3) for m in MODES},
        "relative_to_off": {m: round(rate[m] / rate["off"], 4) for m in MODES[1:]},
        "per_cycle_ratio_to_off": {m: {"median": round(statistics.median(r), 4),
                                       "p25": round(statistics.quantiles(r, n=4)[0], 4),
                                       "p75": round(statistics.quantiles(r, n=4)[2], 4)}
                                   for m, r in ratios.items()},
        # CPU time of the whole process per capture: other load on the machine barely moves it
        "cpu_ms_per_capture": {m: round(cpu[m] * 1000, 2) for m in MODES},
        "cpu_relative_to_off": {m: round(cpu[m] / cpu["off"], 4) for m in MODES[1:]},
        "block_seconds": {m: [round(x, 4) for x in states[m]["seconds"]] for m in MODES},
        "delivery": delivered,
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'mode':14s} {'captures/s':>11s} {'vs off':>8s} {'per-cycle median (p25-p75)':>28s} "
          f"{'CPU ms/capture':>15s} {'vs off':>8s}")
    for m in MODES:
        spread = ""
        if m != "off":
            q = result["per_cycle_ratio_to_off"][m]
            spread = f"{q['median']:.1%} ({q['p25']:.1%}-{q['p75']:.1%})"
        print(f"{m:14s} {rate[m]:11.2f} {rate[m] / rate['off']:8.1%} {spread:>28s} "
              f"{cpu[m] * 1000:15.1f} {cpu[m] / cpu['off']:8.1%}")
    for m, d in delivered.items():
        print(f"{m}: {d['captures_received']}/{d['captures_stored']} captures received by a subscriber, "
              f"{d['alerts_received']} alerts, {d['dropped']} dropped")
    print(f"saved {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
