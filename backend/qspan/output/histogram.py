"""Aggregate mode's output: bpftrace's printed lhist() blocks into counts and percentiles (pure)."""

from __future__ import annotations

import re

MARK = "QSPAN-AGG"  # printed after each interval's histograms (program/aggregate.py)
OPS = {1: "read", 2: "write"}
BUCKET_US, MAX_US = 10, 10_000

_HEAD = re.compile(r"^@qspan_lat\[(\d+)\]:")
_BUCKET = re.compile(r"^\[(\d+[KMG]?), (\d+[KMG]?|\.\.\.)\)\s+(\d+) \|")
_SUFFIX = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _number(text: str) -> int:
    """bpftrace prints bucket bounds that are multiples of 1024 as 5K, 1M, ..."""
    return int(text[:-1]) * _SUFFIX[text[-1]] if text[-1] in _SUFFIX else int(text)


class HistogramReader:
    """bpftrace's printed lhist() blocks -> {op: {bucket_lo_us: count}}, one dict per interval (pure)."""

    def __init__(self):
        self._op: str | None = None
        self._cur: dict[str, dict[int, int]] = {}

    def line(self, line: str) -> dict[str, dict[int, int]] | None:
        """Feed one line; returns the interval's histograms at each QSPAN-AGG mark."""
        if line.startswith(MARK):
            done, self._cur, self._op = self._cur, {}, None
            return done
        m = _HEAD.match(line)
        if m:
            self._op = OPS.get(int(m.group(1)), f"op{m.group(1)}")
            self._cur.setdefault(self._op, {})
            return None
        m = _BUCKET.match(line.strip())
        if m and self._op is not None:
            lo = _number(m.group(1))
            self._cur[self._op][lo] = self._cur[self._op].get(lo, 0) + int(m.group(3))
        return None


def merge(into: dict[str, dict[int, int]], more: dict[str, dict[int, int]]) -> None:
    for op, buckets in more.items():
        dst = into.setdefault(op, {})
        for lo, n in buckets.items():
            dst[lo] = dst.get(lo, 0) + n


def summary(buckets: dict[int, int]) -> dict:
    """Count and p50/p90/p99 (bucket midpoints, 10 us resolution; >= 10 ms reported as 10000)."""
    n = sum(buckets.values())
    out: dict = {"requests": n}
    if not n:
        return out
    items = sorted(buckets.items())
    for q in (50, 90, 99):
        need = q / 100 * n
        acc = 0
        for lo, c in items:
            acc += c
            if acc >= need:
                out[f"p{q}_us"] = lo + BUCKET_US / 2 if lo < MAX_US else float(MAX_US)
                break
    return out
