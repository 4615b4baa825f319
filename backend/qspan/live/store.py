"""The live session's spans: the most recent ones, their timelines, and per-window rollups (pure, bounded)."""

from __future__ import annotations

import heapq
import itertools
from collections import deque

from qspan.correlate import Timeline
from qspan.live.views import in_scope
from qspan.live.windows import ALL, SLOWEST_PER_MINUTE, SLOWEST_PER_SECOND, Windows, disk_of
from qspan.model.spans import Span, span_dict, span_group


class SpanStore:
    """The most recent spans and their timelines, and every span rolled up per second (windows.py). Bounded.

    Spans are kept as the correlator made them and become dicts (span_dict) only when
    someone reads them: converting every span as it came was half of the store's time
    at full rate (4.3 of 9 us a span), and the dashboard reads a few dozen a second.
    """

    def __init__(self, max_spans: int = 5_000, max_timelines: int = 5_000, devices: dict[str, str] | None = None,
                 max_pinned: int = 1_000):
        # Memory is bounded by these: the full stream is in the session's recording. A timeline
        # for every span in the ring: ~1.1 KB each at full rate on two disks (tracemalloc over
        # a recording of the two-disk lab), ~5.5 MB in all; with only the newest 300 kept (a
        # tenth of a second at full rate), a request found and clicked had lost its own.
        self._spans: deque[Span] = deque(maxlen=max_spans)
        self.max_timelines = max_timelines
        self.timelines: dict[int, Timeline] = {}  # span id -> its thread timeline, most recent only
        self._timeline_dur: dict[int, int] = {}  # span id -> its duration, for the spans in timelines
        self.windows = Windows(devices)
        # spans someone opened (a permalink's): kept with their timelines for the session's lifetime
        self.pinned: dict[int, tuple[Span, Timeline | None]] = {}
        self.max_pinned = max_pinned
    @property
    def spans(self) -> list[dict]:
        """Every span kept, oldest first, as dicts (a copy: for tests and whole-store reads)."""
        return [span_dict(s) for s in self._spans]

    @property
    def ring(self) -> deque[Span]:
        """The newest spans, as the correlator made them (read under the session's lock)."""
        return self._spans

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
            self.windows.add(s)
        if spans:
            # spans leave the correlator when their coroutine ends, after their ack (end_ns):
            # a second is closed once a span two seconds later came
            self.windows.close(max(s.end_ns for s in spans) // 1_000_000_000 - 2)

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

    @property
    def requests(self) -> int:
        """Spans added since the start (the ring keeps only the newest)."""
        return self.windows.added

    def flush(self) -> None:
        self.windows.close(1 << 62)

    @property
    def seconds(self) -> list[dict]:
        """The VM's per-second rows, per op group, oldest first (the last windows.SECONDS_KEPT seconds)."""
        w = self.windows
        rows = [{"t_s": r.t_s, "op": g, "requests": r.rollup.requests, **(r.exact or {}), "max_us": r.rollup.max_ns / 1000}
                for (scope, g), kept in w.seconds.items() if scope == ALL for r in kept]
        return sorted(rows, key=lambda r: (r["t_s"], r["op"]))

    def query(self, since_ns: int = 0, until_ns: int | None = None, op: str | None = None,
              min_dur_us: float = 0, limit: int = 1000) -> list[dict]:
        """The ring's spans by time, op group and latency, oldest first (compare's read)."""
        return self.search(since_ns, until_ns, op, min_dur_us, limit, ring_only=True)["spans"]

    def search(self, since_ns: int = 0, until_ns: int | None = None, op: str | None = None, min_dur_us: float = 0,
               limit: int = 1000, scope: str = ALL, offset_min: int = 0, offset_max: int | None = None,
               ring_only: bool = False, with_disk: bool = False) -> dict:
        """Requests that match, oldest first (the newest `limit`): every kept one, the ring's and
        the pinned ones and, before the ring, each second's slowest (ring_only: the ring's, a
        stretch with every request in it: what exports hold); and what the search covered."""
        min_dur_ns = min_dur_us * 1000
        devices = self.windows.devices
        seen: dict[int, Span] = {}
        kept_slow = self.windows.kept_spans()
        pinned = (p[0] for p in self.pinned.values())
        for s in self._spans if ring_only else itertools.chain(kept_slow, pinned, self._spans):
            if s.end_ns < since_ns or (until_ns is not None and s.start_ns > until_ns) or s.dur_ns < min_dur_ns:
                continue
            if op and span_group(s.op, s.job) != op:
                continue
            if s.offset + max(s.bytes, 1) <= offset_min or (offset_max is not None and s.offset >= offset_max):
                continue
            if scope != ALL and not in_scope(s, scope, devices):
                continue
            seen[s.id] = s
        found = sorted(seen.values(), key=lambda s: (s.end_ns, s.id))
        out = []
        for s in found[-limit:]:
            d = span_dict(s)
            if with_disk:
                d["disk"] = disk_of(s, devices)  # not a span field: what the dashboard shows
            out.append(d)
        return {"spans": out, "matched": len(found),
                "ring_from_ns": self.oldest_end_ns, "ring_spans": len(self._spans), "pinned": len(self.pinned),
                "slowest_kept_per_second": SLOWEST_PER_SECOND, "slowest_kept_per_minute": SLOWEST_PER_MINUTE}

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
        w = self.windows
        if w.newest_s < 0 or window_s <= 0:
            return 0.0
        first = w.newest_s - window_s + 1
        n = 0
        for (scope, _g), kept in w.seconds.items():
            if scope != ALL:
                continue
            for r in reversed(kept):  # newest first: stop at the window's start, not the 10 minutes kept
                if r.t_s < first:
                    break
                n += r.rollup.requests
        return round(n / window_s, 1)

    def ended_since(self, since_ns: int) -> list[Span]:
        """The kept spans that ended at since_ns or later, as the correlator made them (no dicts)."""
        return [s for s in self._spans if s.end_ns >= since_ns]

    def find(self, span_id: int) -> tuple[Span, Timeline | None] | None:
        """A span by id, with its timeline if kept: pinned, in the ring, or among the windows' slowest."""
        if span_id in self.pinned:
            return self.pinned[span_id]
        s = next((s for s in self._spans if s.id == span_id), None)
        if s is None:
            s = next((s for s in self.windows.kept_spans() if s.id == span_id), None)
        return None if s is None else (s, self.timelines.get(span_id))

    def get(self, span_id: int) -> dict | None:
        found = self.find(span_id)
        return span_dict(found[0]) if found else None

    def pin(self, span_id: int) -> bool:
        """Keep a span and its timeline for the session's lifetime (a permalink's); False if not kept."""
        found = self.find(span_id)
        if found is None:
            return False
        self.pinned.pop(span_id, None)
        self.pinned[span_id] = found
        while len(self.pinned) > self.max_pinned:  # the oldest pin goes first
            del self.pinned[next(iter(self.pinned))]
        return True

    def breakdown(self) -> dict:
        """The VM's sums since the start, per op group, as means per request."""
        w = self.windows
        return {g: w.window_rollup(ALL, g, None, None).summary() for g in w.groups(ALL)}

    def advance(self, now_ns: int) -> None:
        """Time passed (the tracer's clock): close the seconds no span can end in any more, so an
        idle guest's last second is drawn (spans close seconds too, as they come)."""
        self.windows.advance(now_ns // 1_000_000_000 - 2)
