"""The live session's spans: the most recent ones, per-second percentiles, running breakdowns (pure, bounded)."""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import deque
from operator import attrgetter

from qspan.correlate import Timeline
from qspan.model.spans import INSTEAD_CATEGORIES, Span, span_dict, span_group
from qspan.output.report import percentile

HIST_EDGES_US = [2 ** i for i in range(0, 18)]  # 1 us .. 131 ms, log2 buckets
_dur = attrgetter("dur_ns")


class SpanStore:
    """The most recent spans, per-second latency percentiles, and running breakdowns. Bounded.

    Spans are kept as the correlator made them and become dicts (span_dict) only when
    someone reads them: converting every span as it came was half of the store's time
    at full rate (4.3 of 9 us a span), and the dashboard reads a few dozen a second.
    """

    def __init__(self, max_spans: int = 5_000, max_seconds: int = 600, max_timelines: int = 300):
        # Memory is bounded by these: the full stream is in the session's recording.
        self._spans: deque[Span] = deque(maxlen=max_spans)
        self.max_timelines = max_timelines
        self.timelines: dict[int, Timeline] = {}  # span id -> its thread timeline, most recent only
        self._timeline_dur: dict[int, int] = {}  # span id -> its duration, for the spans in timelines
        self.seconds: deque[dict] = deque(maxlen=max_seconds * 3)  # one row per op per second
        self._open: dict[tuple[int, str], list[int]] = {}  # (second, op) -> durations in ns
        self.totals: dict[str, dict] = {}

    @property
    def spans(self) -> list[dict]:
        """Every span kept, oldest first, as dicts (a copy: for tests and whole-store reads)."""
        return [span_dict(s) for s in self._spans]

    @property
    def newest_end_ns(self) -> int | None:
        return self._spans[-1].end_ns if self._spans else None

    def add(self, spans: list[Span], timelines: dict[int, Timeline]) -> None:
        ring = self._spans
        for s in spans:
            if len(ring) == ring.maxlen:
                gone = ring[0].id
                self.timelines.pop(gone, None)
                self._timeline_dur.pop(gone, None)
            ring.append(s)
            if s.id in timelines:
                self.timelines[s.id] = timelines[s.id]
                self._timeline_dur[s.id] = s.dur_ns
                self._trim_timelines()
            sec = s.end_ns // 1_000_000_000
            self._open.setdefault((sec, span_group(s.op, s.job)), []).append(s.dur_ns)
            self._account(s)
        if spans:
            self._close_seconds(spans[-1].end_ns // 1_000_000_000 - 1)

    def _trim_timelines(self) -> None:
        if len(self.timelines) <= self.max_timelines + 100:  # trim in batches
            return
        # Keep the slowest requests' timelines (what the dashboard drills into) and the newest.
        # The 20 slowest of the spans that have one: any of the store's 20 slowest that has a
        # timeline is among them, and finding them takes the few hundred timelines, not the
        # 5,000 spans (sorting those was 17% of the live path at full rate, py-spy).
        keep = set(heapq.nlargest(20, self._timeline_dur, key=self._timeline_dur.__getitem__))
        for sid in list(self.timelines):
            if len(self.timelines) <= self.max_timelines:
                break
            if sid not in keep:
                del self.timelines[sid]
                del self._timeline_dur[sid]

    def _account(self, s: Span) -> None:
        group = span_group(s.op, s.job)
        t = self.totals.get(group)
        if t is None:
            t = self.totals[group] = {"requests": 0, "dur_ns": 0, "phases_ns": {},
                                     "instead_ns": dict.fromkeys(INSTEAD_CATEGORIES, 0),
                                     "histogram": [0] * (len(HIST_EDGES_US) + 1), "costed": 0, "qspan_ns": 0}
        t["requests"] += 1
        t["dur_ns"] += s.dur_ns
        if s.qspan_ns is not None:
            t["costed"] += 1
            t["qspan_ns"] += s.qspan_ns
        phases = t["phases_ns"]
        for p in s.phases:
            phases[p.name] = phases.get(p.name, 0) + p.dur_ns
        instead = t["instead_ns"]
        for h in s.handoffs:
            for k, v in h.instead_ns.items():
                instead[k] = instead.get(k, 0) + v
        t["histogram"][bisect_right(HIST_EDGES_US, s.dur_ns / 1000)] += 1  # bucket i: edges[i-1] <= us < edges[i]

    def _close_seconds(self, upto_sec: int) -> None:
        for key in sorted(k for k in self._open if k[0] <= upto_sec):
            durs = sorted(self._open.pop(key))
            self.seconds.append({
                "t_s": key[0], "op": key[1], "requests": len(durs),
                "p50_us": percentile(durs, 50) / 1000, "p90_us": percentile(durs, 90) / 1000,
                "p99_us": percentile(durs, 99) / 1000, "max_us": durs[-1] / 1000,
            })

    @property
    def requests(self) -> int:
        """Spans added since the start (the ring keeps only the newest)."""
        return sum(t["requests"] for t in self.totals.values())

    def flush(self) -> None:
        self._close_seconds(1 << 62)

    def slowest(self, n: int = 10, since_ns: int = 0) -> list[dict]:
        """The n longest spans ending at since_ns or later, longest first (ties: older first)."""
        cands = self._spans if since_ns <= 0 else [s for s in self._spans if s.end_ns >= since_ns]
        return [span_dict(s) for s in heapq.nlargest(n, cands, key=_dur)]

    def query(self, since_ns: int = 0, until_ns: int | None = None, op: str | None = None,
              min_dur_us: float = 0, limit: int = 1000) -> list[dict]:
        out = []
        min_dur_ns = min_dur_us * 1000
        for s in self._spans:
            if s.end_ns < since_ns or (until_ns is not None and s.start_ns > until_ns):
                continue
            if (op and span_group(s.op, s.job) != op) or s.dur_ns < min_dur_ns:
                continue
            out.append(s)
        return [span_dict(s) for s in out[-limit:]]

    @property
    def full(self) -> bool:
        """The ring holds as many spans as it keeps: older ones are gone."""
        return len(self._spans) == self._spans.maxlen

    @property
    def spans_kept(self) -> int:
        return len(self._spans)

    @property
    def oldest_end_ns(self) -> int:
        return self._spans[0].end_ns if self._spans else 0

    def rate(self, window_s: int) -> float:
        """Requests a second over the last window_s closed seconds (the per-second rows outlive the ring)."""
        rows = list(self.seconds)
        if not rows or window_s <= 0:
            return 0.0
        last = rows[-1]["t_s"]
        return round(sum(r["requests"] for r in rows if r["t_s"] > last - window_s) / window_s, 1)

    def ended_since(self, since_ns: int) -> list[Span]:
        """The kept spans that ended at since_ns or later, as the correlator made them (no dicts)."""
        return [s for s in self._spans if s.end_ns >= since_ns]

    def get(self, span_id: int) -> dict | None:
        return next((span_dict(s) for s in self._spans if s.id == span_id), None)

    def breakdown(self) -> dict:
        out = {}
        for op, t in self.totals.items():
            n = t["requests"] or 1
            out[op] = {
                "requests": t["requests"],
                "mean_us": t["dur_ns"] / n / 1000,
                "phase_mean_us": {k: v / n / 1000 for k, v in t["phases_ns"].items()},
                "instead_mean_us": {k: v / n / 1000 for k, v in t["instead_ns"].items()},
                "histogram": {"edges_us": HIST_EDGES_US, "counts": t["histogram"]},
                # qspan's own probes on the critical path, as calibrated (tracers/costs.txt); null without
                "qspan_mean_us": t["qspan_ns"] / t["costed"] / 1000 if t["costed"] else None,
            }
        return out
