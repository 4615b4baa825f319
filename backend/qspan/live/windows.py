"""A live session's spans rolled up per second and per minute, per scope and op group (pure, bounded).

The dashboard looks at any window (the last 10 s, 1 min, 10 min, all, or a brushed range)
of any scope (the whole VM, one guest disk, one block node), long after the span ring
(store.py: the newest 5,000 spans, five seconds at full rate) has let the spans go. So every
span is counted in a Rollup (rollup.py) of its second and each scope it belongs to: the VM,
its disk, each node it visited. A second's row also has its exact percentiles.

Rows are per second for the last SECONDS_KEPT seconds and per minute for the last
MINUTES_KEPT minutes; totals since the start are kept per scope and group. The slowest
SLOWEST_KEPT spans of each second (then minute) and disk are kept too, so the slowest list
of any window is exact for the VM and each disk, whatever the ring still holds."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable

from qspan.live.rollup import UNKNOWN_DISK, Rollup, Row, bucket_low_us, bucket_mid_us, bucket_of, disk_of
from qspan.model.spans import Span
from qspan.output.report import percentile

__all__ = ["ALL", "UNKNOWN_DISK", "Rollup", "Row", "Windows", "bucket_low_us", "bucket_mid_us", "bucket_of", "disk_of"]

SECONDS_KEPT = 600
MINUTES_KEPT = 1440
SLOWEST_KEPT = 10
ALL = "all"


class Windows:
    """Rows per (scope, group) per second and per minute, totals, and each second's slowest spans per disk."""

    def __init__(self, devices: dict[str, str] | None = None, seconds_kept: int = SECONDS_KEPT,
                 minutes_kept: int = MINUTES_KEPT, slowest_kept: int = SLOWEST_KEPT):
        self.devices = devices or {}
        self.seconds_kept = seconds_kept
        self.minutes_kept = minutes_kept
        self.slowest_kept = slowest_kept
        self.totals: dict[tuple[str, str], Rollup] = {}
        self.seconds: dict[tuple[str, str], deque[Row]] = {}
        self.minutes: dict[tuple[str, str], deque[Row]] = {}
        # second -> (op group, nodes visited) -> (sums, durations)
        self._open: dict[int, dict[tuple[str, tuple[str, ...]], tuple[Rollup, list[int]]]] = {}
        self._open_slow: dict[tuple[int, str], list] = {}  # (second, disk) -> min-heap of (dur, id, span)
        self.slow_seconds: deque[tuple[int, str, list[Span]]] = deque()  # (second, disk, its slowest)
        self.slow_minutes: deque[tuple[int, str, list[Span]]] = deque()  # (minute start, disk, its slowest)
        self.closed_upto = -1  # the newest second closed
        self.scopes: dict[str, int] = {}  # scope -> requests in closed seconds (the selector's choices)
        self.added = 0  # spans added
        self._disks: dict[tuple[str, ...], str] = {}  # the nodes a span visited -> its disk
        self.first_s: int | None = None  # the first span's second

    def add(self, s: Span) -> None:
        # The live path's cost: a span is added to one open sum, that of its second and "leaf"
        # (op group and the nodes it visited: the same for most of a disk's requests); each
        # leaf is fanned out to its scopes once a second, when the second closes. Adding each
        # span to each scope's row and totals cost 4x as much (12 us a span against 3).
        self.added += 1
        names = tuple([v.node for v in s.nodes])
        group = s.op if s.job is None else "job:" + s.job
        leaf = (group, names)
        disk = self._disks.get(names)
        if disk is None:
            disk = self._disks[names] = disk_of(s, self.devices)
        sec = s.end_ns // 1_000_000_000
        if self.first_s is None or sec < self.first_s:
            self.first_s = sec
        opened = self._open.get(sec)
        if opened is None:
            opened = self._open[sec] = {}
        o = opened.get(leaf)
        if o is None:
            o = opened[leaf] = (Rollup(), [])
        dur = s.dur_ns
        o[0].add(dur, bucket_of(dur), [(p.name, p.dur_ns) for p in s.phases],
                 [kv for h in s.handoffs for kv in h.instead_ns.items() if kv[1]], s.qspan_ns)
        o[1].append(dur)
        heap = self._open_slow.get((sec, disk))
        if heap is None:
            heap = self._open_slow[(sec, disk)] = []
        if len(heap) < self.slowest_kept:
            heapq.heappush(heap, (dur, -s.id, s))
        elif dur > heap[0][0]:
            heapq.heapreplace(heap, (dur, -s.id, s))

    def _scopes_of_leaf(self, names: tuple[str, ...]) -> list[str]:
        out = [ALL, "disk:" + self._disks[names]]
        for n in names:
            if "node:" + n not in out:
                out.append("node:" + n)
        return out

    def close(self, upto_sec: int) -> None:
        """Close every second up to upto_sec: its leaves go to their scopes' rows (with exact
        percentiles), the minutes and the totals."""
        for sec in sorted(k for k in self._open if k <= upto_sec):
            per_key: dict[tuple[str, str], tuple[Rollup, list[int]]] = {}
            for (group, names), (rollup, durs) in self._open.pop(sec).items():
                for scope in self._scopes_of_leaf(names):
                    k = per_key.get((scope, group))
                    if k is None:
                        k = per_key[(scope, group)] = (Rollup(), [])
                    k[0].merge(rollup)
                    k[1].extend(durs)
            for key, (rollup, durs) in per_key.items():
                self._close_key(key, sec, rollup, durs)
            self.closed_upto = max(self.closed_upto, sec)
        for k in sorted(k for k in self._open_slow if k[0] <= upto_sec):
            heap = self._open_slow.pop(k)
            spans = [x[2] for x in heap]
            self.slow_seconds.append((k[0], k[1], spans))
            minute = k[0] - k[0] % 60
            last = next((m for m in reversed(self.slow_minutes) if m[0] == minute and m[1] == k[1]), None)
            if last is None:
                self.slow_minutes.append((minute, k[1], list(spans)))
            else:
                last[2][:] = heapq.nlargest(self.slowest_kept, last[2] + spans, key=lambda x: (x.dur_ns, -x.id))
        newest = self.closed_upto
        while self.slow_seconds and self.slow_seconds[0][0] <= newest - self.seconds_kept:
            self.slow_seconds.popleft()
        while self.slow_minutes and self.slow_minutes[0][0] <= newest - 60 * self.minutes_kept:
            self.slow_minutes.popleft()

    def _close_key(self, key: tuple[str, str], sec: int, rollup: Rollup, durs: list[int]) -> None:
        total = self.totals.get(key)
        if total is None:
            total = self.totals[key] = Rollup()
        total.merge(rollup)
        self.scopes[key[0]] = self.scopes.get(key[0], 0) + rollup.requests
        self._to_minute(key, sec, rollup)
        rows = self.seconds.get(key)
        if rows is None:
            rows = self.seconds[key] = deque()
        if rows and rows[-1].t_s >= sec:  # spans that came after their second closed
            late = next((r for r in reversed(rows) if r.t_s == sec), None)
            if late is not None:
                late.rollup.merge(rollup)
            return
        durs.sort()
        exact = {"p50_us": percentile(durs, 50) / 1000, "p90_us": percentile(durs, 90) / 1000,
                 "p99_us": percentile(durs, 99) / 1000}
        rows.append(Row(sec, rollup, exact))
        while rows and rows[0].t_s <= sec - self.seconds_kept:
            rows.popleft()

    def open_rollup(self, scope: str, group: str) -> Rollup:
        """The seconds not closed yet, of one scope and group."""
        out = Rollup()
        for leaves in self._open.values():
            for (g, names), (rollup, _durs) in leaves.items():
                if g == group and scope in self._scopes_of_leaf(names):
                    out.merge(rollup)
        return out

    def _to_minute(self, key: tuple[str, str], sec: int, rollup: Rollup) -> None:
        minute = sec - sec % 60
        rows = self.minutes.get(key)
        if rows is None:
            rows = self.minutes[key] = deque()
        if rows and rows[-1].t_s == minute:
            rows[-1].rollup.merge(rollup)
            return
        m = Rollup()
        m.merge(rollup)
        rows.append(Row(minute, m))
        while rows and rows[0].t_s <= minute - 60 * self.minutes_kept:
            rows.popleft()

    # --- reading -------------------------------------------------------------------------

    def groups(self, scope: str) -> list[str]:
        """The op groups seen in a scope, closed seconds or open."""
        found = {g for (sc, g) in self.totals if sc == scope}
        found |= {g for leaves in self._open.values() for (g, names) in leaves if scope in self._scopes_of_leaf(names)}
        return sorted(found)

    def oldest_second(self) -> int | None:
        """The oldest second still kept per second (any key)."""
        firsts = [rows[0].t_s for rows in self.seconds.values() if rows]
        return min(firsts) if firsts else None

    def per_second_from(self, t0_s: int) -> bool:
        """Whether the rows per second still hold everything from t0_s on (else: read the minutes)."""
        oldest = self.oldest_second()
        return oldest is None or t0_s >= oldest or (self.first_s is not None and oldest <= self.first_s)

    def rows(self, scope: str, group: str, t0_s: int, t1_s: int) -> tuple[list[Row], int]:
        """The rows of [t0_s, t1_s] and their resolution in seconds: per second when they are
        all still kept so, else per minute."""
        key = (scope, group)
        if self.per_second_from(t0_s):
            return [r for r in self.seconds.get(key, ()) if t0_s <= r.t_s <= t1_s], 1
        return [r for r in self.minutes.get(key, ()) if t0_s - 59 <= r.t_s <= t1_s], 60

    def window_rollup(self, scope: str, group: str, t0_s: int | None, t1_s: int | None) -> Rollup:
        """One scope and group's sums over a window (None, None: since the start)."""
        if t0_s is None and t1_s is None:
            out = self.open_rollup(scope, group)
            out.merge(self.totals.get((scope, group)) or Rollup())
            return out
        out = Rollup()
        rows, _ = self.rows(scope, group, t0_s if t0_s is not None else -1, t1_s if t1_s is not None else 1 << 62)
        for r in rows:
            out.merge(r.rollup)
        return out

    def slowest_kept_spans(self, t0_s: int, t1_s: int) -> Iterable[Span]:
        """The kept slowest spans of the seconds (else minutes) in [t0_s, t1_s]."""
        source = self.slow_seconds if self.per_second_from(t0_s) else self.slow_minutes
        for t, _disk, spans in source:
            if t0_s - (59 if source is self.slow_minutes else 0) <= t <= t1_s:
                yield from spans
