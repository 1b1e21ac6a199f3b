"""Numbers for /metrics in Prometheus' text format (version 0.0.4).

Each part of the daemon keeps its own counters and registers a function that turns them into samples;
/metrics calls those functions when it is scraped, so no number is kept twice or goes stale.
"""
from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

CAPTION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class Sample:
    family: str  # the metric's name (for a histogram, without _bucket/_sum/_count)
    kind: str  # counter | gauge | histogram
    help: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()
    suffix: str = ""  # "_bucket", "_sum" or "_count" for histogram lines


def counter(name: str, help: str, value: float, **labels: str) -> Sample:
    return Sample(name, "counter", help, value, tuple(labels.items()))


def gauge(name: str, help: str, value: float, **labels: str) -> Sample:
    return Sample(name, "gauge", help, value, tuple(labels.items()))


class Histogram:
    """Cumulative buckets, a sum and a count; observed by one thread, read by the scraper."""

    def __init__(self, buckets: Iterable[float] = CAPTION_BUCKETS_S) -> None:
        self.bounds = sorted(buckets)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.bounds, value)] += 1
            self._sum += value

    @property
    def count(self) -> int:
        return sum(self._counts)

    def samples(self, name: str, help: str) -> list[Sample]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        out, running = [], 0
        for bound, n in zip([*self.bounds, math.inf], counts):
            running += n
            out.append(Sample(name, "histogram", help, running, (("le", _number(bound)),), "_bucket"))
        out.append(Sample(name, "histogram", help, total, (), "_sum"))
        out.append(Sample(name, "histogram", help, running, (), "_count"))
        return out


class Registry:
    """The collectors /metrics asks for samples, in registration order."""

    def __init__(self) -> None:
        self._collectors: list[Callable[[], Iterable[Sample]]] = []

    def register(self, collector: Callable[[], Iterable[Sample]]) -> None:
        self._collectors.append(collector)

    def collect(self) -> list[Sample]:
        return [s for c in list(self._collectors) for s in c()]


def _number(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if math.isnan(x):
        return "NaN"
    return str(int(x)) if float(x).is_integer() and abs(x) < 2**53 else repr(float(x))


def _label_value(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(samples: Iterable[Sample]) -> str:
    """The text exposition format: HELP and TYPE once per family, its lines together."""
    families: dict[str, list[Sample]] = {}
    for s in samples:
        families.setdefault(s.family, []).append(s)
    lines: list[str] = []
    for name, group in families.items():
        help_text = group[0].help.replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {group[0].kind}")
        for s in group:
            labels = ",".join(f'{k}="{_label_value(v)}"' for k, v in s.labels)
            lines.append(f"{name}{s.suffix}{'{' + labels + '}' if labels else ''} {_number(s.value)}")
    return "\n".join(lines) + "\n"
