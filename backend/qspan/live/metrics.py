"""Cumulative per-disk, per-op request metrics of a live session, for Prometheus (pure).

The span store keeps the newest spans and per-second rows; Prometheus wants counters that only
grow. A session's RequestMetrics adds every span once, as the store does: a histogram of its
latency, its count, and the time it spent in each phase and, in handoff waits, in each of what
ran instead. server/metrics.py turns them into the exposition at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

from qspan.live.rollup import count_parts, disk_of
from qspan.model.spans import INSTEAD_CATEGORIES, Span, span_group

# Upper bounds in seconds: 5 us to 1 s, about three a decade where guest I/O lives (10 us - 10 ms),
# so histogram_quantile's interpolation lands within a bucket of that width.
BUCKETS_S = (5e-6, 10e-6, 20e-6, 30e-6, 50e-6, 75e-6, 100e-6, 150e-6, 200e-6, 300e-6, 500e-6, 750e-6,
             1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 7.5e-3, 10e-3, 20e-3, 50e-3, 100e-3, 250e-3, 1.0)
_BUCKETS_NS = tuple(round(b * 1e9) for b in BUCKETS_S)


@dataclass
class Series:
    """One (disk, op) of one session: counts per bucket (the last: above every bound), and sums."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_S) + 1))
    count: int = 0
    sum_ns: int = 0
    phases_ns: dict[str, int] = field(default_factory=dict)
    # every category from the start: a query for one (e.g. B's "spawned") finds 0, not nothing
    instead_ns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(INSTEAD_CATEGORIES, 0))


class RequestMetrics:
    def __init__(self, devices: dict[str, str] | None = None):
        self.devices = devices or {}  # a guest disk's root node-name -> its name (Target.devices)
        self.series: dict[tuple[str, str], Series] = {}

    def disk_of(self, span: Span) -> str:
        """The guest disk a span went to (windows.disk_of)."""
        return disk_of(span, self.devices)

    def add(self, spans: list[Span]) -> None:
        for span in spans:
            key = (self.disk_of(span), span_group(span.op, span.job))
            s = self.series.get(key)
            if s is None:
                s = self.series[key] = Series()
            # bucket i counts durations <= BUCKETS_S[i] (Prometheus' `le`), cumulated at exposition
            s.buckets[bisect_left(_BUCKETS_NS, span.dur_ns)] += 1
            s.count += 1
            s.sum_ns += span.dur_ns
            count_parts(span, s.phases_ns, s.instead_ns)
