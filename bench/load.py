"""Concurrent HTTP load shared by the benchmarks: N client threads for D seconds, latency percentiles."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def percentiles(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {}
    arr = np.asarray(ms)
    return {f"p{p}": round(float(np.percentile(arr, p)), 2) for p in (50, 95, 99)} | {
        "mean": round(float(arr.mean()), 2), "max": round(float(arr.max()), 2), "n": len(ms)}


def run_clients(clients: int, duration: float, make_client: Callable[[], Callable[[int], int]],
                stride: int = 17) -> dict[str, Any]:
    """`clients` threads, each with its own `request = make_client()` (its own keep-alive connection),
    call request(i) for i = thread * stride, +1, ... until `duration` s have passed; request returns
    the HTTP status (0 for a failed connection), anything but 200 counts as an error."""
    ms: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + duration

    def worker(start: int) -> None:
        request = make_client()
        local, bad, i = [], 0, start
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            status = request(i)
            local.append((time.perf_counter() - t0) * 1000)
            bad += status != 200
            i += 1
        with lock:
            ms.extend(local)
            errors[0] += bad

    threads = [threading.Thread(target=worker, args=(n * stride,)) for n in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "duration_s": round(wall, 1), "requests": len(ms), "errors": errors[0],
            "rps": round(len(ms) / wall, 1), "latency_ms": percentiles(ms)}
