"""Sums over a set of requests, and the latency buckets they count in (pure): what windows.py keeps per second.

A Rollup holds what every panel of the dashboard is drawn from: requests, latency sum and max,
time per phase, handoff time per what-ran-instead category, qspan's own estimated cost, and a
latency histogram of BUCKETS_PER_OCTAVE buckets an octave (the heatmap's rows; percentiles of
merged rollups come from it, to within half a bucket: +-9 %).
"""

from __future__ import annotations

import math

from qspan.model.spans import INSTEAD_CATEGORIES, Span

BUCKETS_PER_OCTAVE = 4
# bucket 0: under 1 us; bucket b >= 1: [2^((b-1)/4), 2^(b/4)) us; the last: everything from 2^20 us (~1 s)
MAX_BUCKET = 20 * BUCKETS_PER_OCTAVE + 1
UNKNOWN_DISK = "unknown"


def bucket_of(dur_ns: int) -> int:
    if dur_ns < 1000:
        return 0
    return min(MAX_BUCKET, 1 + int(BUCKETS_PER_OCTAVE * math.log2(dur_ns / 1000)))


def bucket_low_us(b: int) -> float:
    """The lower edge of bucket b in us (0 for bucket 0)."""
    return 0.0 if b <= 0 else 2 ** ((b - 1) / BUCKETS_PER_OCTAVE)


def bucket_mid_us(b: int) -> float:
    """What a percentile that falls in bucket b is reported as: its geometric middle."""
    return 0.5 if b <= 0 else 2 ** ((b - 0.5) / BUCKETS_PER_OCTAVE)


def disk_of(span: Span, devices: dict[str, str]) -> str:
    """The guest disk a span went to: the first of its nodes that is a disk's root (a job's
    filter node may come first), else its first node, else unknown."""
    for v in span.nodes:
        if v.node in devices:
            return devices[v.node]
    return span.nodes[0].node if span.nodes else UNKNOWN_DISK


def count_parts(s: Span, phases: dict[str, int], instead: dict[str, int]) -> None:
    """Add a span's time per phase, and its handoffs' time per what-ran-instead category."""
    for p in s.phases:
        phases[p.name] = phases.get(p.name, 0) + p.dur_ns
    for h in s.handoffs:
        for cat, ns in h.instead_ns.items():
            if ns:
                instead[cat] = instead.get(cat, 0) + ns


class Rollup:
    """Sums over a set of requests: what every panel of the dashboard is drawn from."""

    __slots__ = ("requests", "dur_ns", "max_ns", "phases_ns", "instead_ns", "buckets", "costed", "qspan_ns")

    def __init__(self) -> None:
        self.requests = 0
        self.dur_ns = 0
        self.max_ns = 0
        self.phases_ns: dict[str, int] = {}
        self.instead_ns: dict[str, int] = {}
        self.buckets: dict[int, int] = {}
        self.costed = 0  # requests with qspan's own cost estimated (qspan_ns not None)
        self.qspan_ns = 0

    def add_span(self, s: Span, bucket: int) -> None:
        """Count one span in (its latency bucket given)."""
        dur = s.dur_ns
        self.requests += 1
        self.dur_ns += dur
        if dur > self.max_ns:
            self.max_ns = dur
        self.buckets[bucket] = self.buckets.get(bucket, 0) + 1
        count_parts(s, self.phases_ns, self.instead_ns)
        if s.qspan_ns is not None:
            self.costed += 1
            self.qspan_ns += s.qspan_ns

    def merge(self, other: Rollup) -> None:
        self.requests += other.requests
        self.dur_ns += other.dur_ns
        self.max_ns = max(self.max_ns, other.max_ns)
        for d, o in ((self.phases_ns, other.phases_ns), (self.instead_ns, other.instead_ns), (self.buckets, other.buckets)):
            for k, v in o.items():
                d[k] = d.get(k, 0) + v
        self.costed += other.costed
        self.qspan_ns += other.qspan_ns

    def percentile_us(self, p: float) -> float:
        """From the histogram: the middle of the bucket the p-th percentile falls in (never above the max)."""
        if not self.requests:
            return 0.0
        rank = min(self.requests - 1, int(round(p / 100 * (self.requests - 1))))
        seen = 0
        for b in sorted(self.buckets):
            seen += self.buckets[b]
            if seen > rank:
                return min(bucket_mid_us(b), self.max_ns / 1000)
        return self.max_ns / 1000

    def summary(self) -> dict:
        """Means per request (us): what the breakdown panels draw."""
        n = self.requests or 1
        return {
            "requests": self.requests,
            "mean_us": self.dur_ns / n / 1000,
            "max_us": self.max_ns / 1000,
            "phase_mean_us": {k: v / n / 1000 for k, v in self.phases_ns.items()},
            "instead_mean_us": {c: self.instead_ns.get(c, 0) / n / 1000 for c in INSTEAD_CATEGORIES},
            "buckets": dict(sorted(self.buckets.items())),
            # qspan's own probes on the critical path, as calibrated (tracers/costs.txt); null without
            "qspan_mean_us": self.qspan_ns / self.costed / 1000 if self.costed else None,
        }


class Row:
    """One scope and group's requests of one second (or minute)."""

    __slots__ = ("t_s", "rollup", "exact")

    def __init__(self, t_s: int, rollup: Rollup, exact: dict | None = None):
        self.t_s = t_s
        self.rollup = rollup
        self.exact = exact  # a closed second's exact percentiles (p50_us, p90_us, p99_us); None for a minute
