"""A live session's spans rolled up per second and per minute, per scope and op group (pure, bounded).

The dashboard looks at any window (the last 10 s, 1 min, 10 min, all, or a brushed range)
of any scope (the whole VM, one guest disk, one block node), long after the span ring
(store.py: the newest 5,000 spans, five seconds at full rate) has let the spans go. So every
span is counted in a Rollup (rollup.py) of its second and each scope it belongs to: the VM,
its disk, each node it visited. A second's row also has its exact percentiles.

Rows are per second for the last SECONDS_KEPT seconds and per minute for the last
MINUTES_KEPT minutes; totals since the start are kept per scope and group. The slowest
SLOWEST_PER_SECOND spans of each second, disk and op group are kept for as long as the
seconds (then SLOWEST_PER_MINUTE of each minute), so a window's slowest SLOWEST_PER_SECOND
are always found, for the VM or a disk, one op or all, whatever the ring still holds.

A second is closed when a span of a later second comes (less a second's grace: spans leave
the correlator when their coroutine ends, after their ack) or when the tracer says time has
passed (`advance`); a span that comes after its second closed still counts everywhere, and
that second's row then gives its percentiles from the histogram, not as exact."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable

from qspan.live.rollup import UNKNOWN_DISK, Rollup, Row, bucket_low_us, bucket_mid_us, bucket_of, disk_of
from qspan.model.spans import Span
from qspan.output.report import percentile

__all__ = ["ALL", "UNKNOWN_DISK", "Rollup", "Row", "Windows", "bucket_low_us", "bucket_mid_us", "bucket_of", "disk_of"]

SECONDS_KEPT = 600
MINUTES_KEPT = 360
SLOWEST_PER_SECOND = 3
SLOWEST_PER_MINUTE = 5
ALL = "all"


def _by_dur(s: Span) -> tuple[int, int]:
    return (s.dur_ns, -s.id)


class Windows:
    """Rows per (scope, group) per second and per minute, totals, and the slowest spans of each
    second and minute per disk and group."""

    def __init__(self, devices: dict[str, str] | None = None, seconds_kept: int = SECONDS_KEPT,
                 minutes_kept: int = MINUTES_KEPT):
        self.devices = devices or {}
        self.seconds_kept = seconds_kept
        self.minutes_kept = minutes_kept
        self.totals: dict[tuple[str, str], Rollup] = {}
        self.seconds: dict[tuple[str, str], deque[Row]] = {}
        self.minutes: dict[tuple[str, str], deque[Row]] = {}
        # second -> (op group, nodes visited) -> (sums, durations)
        self._open: dict[int, dict[tuple[str, tuple[str, ...]], tuple[Rollup, list[int]]]] = {}
        self._open_slow: dict[tuple[int, str, str], list] = {}  # (second, disk, group) -> min-heap (dur, -id, span)
        self.slow_seconds: dict[tuple[int, str, str], list[Span]] = {}  # (second, disk, group) -> its slowest
        self.slow_minutes: dict[tuple[int, str, str], list[Span]] = {}  # (minute start, disk, group) -> its slowest
        self.closed_upto = -1  # the newest second closed with requests in it
        self.now_s = -1  # the newest second the tracer said is over (advance): idle windows still slide
        self.version = 0  # moves whenever what the charts show changed
        self.scopes: dict[str, int] = {}  # scope -> requests in closed seconds (the selector's choices)
        self.added = 0  # spans added
        self._disks: dict[tuple[str, ...], str] = {}  # the nodes a span visited -> its disk
        self.first_s: int | None = None  # the first span's second

    @property
    def newest_s(self) -> int:
        """The newest second a window ends at."""
        return max(self.closed_upto, self.now_s)

    def add(self, s: Span) -> None:
        # The live path's cost: a span is added to one open sum, that of its second and "leaf"
        # (op group and the nodes it visited: the same for most of a disk's requests); each
        # leaf is fanned out to its scopes once a second, when the second closes. Adding each
        # span to each scope's row and totals cost 4x as much (12 us a span against 3).
        self.added += 1
        names = tuple([v.node for v in s.nodes])
        group = s.op if s.job is None else "job:" + s.job
        disk = self._disks.get(names)
        if disk is None:
            disk = self._disks[names] = disk_of(s, self.devices)
        sec = s.end_ns // 1_000_000_000
        if self.first_s is None or sec < self.first_s:
            self.first_s = sec
        opened = self._open.get(sec)
        if opened is None:
            opened = self._open[sec] = {}
        o = opened.get((group, names))
        if o is None:
            o = opened[(group, names)] = (Rollup(), [])
        dur = s.dur_ns
        o[0].add_span(s, bucket_of(dur))
        o[1].append(dur)
        heap = self._open_slow.get((sec, disk, group))
        if heap is None:
            heap = self._open_slow[(sec, disk, group)] = []
        if len(heap) < SLOWEST_PER_SECOND:
            heapq.heappush(heap, (dur, -s.id, s))
        elif dur > heap[0][0]:
            heapq.heapreplace(heap, (dur, -s.id, s))

    def _scopes_of_leaf(self, names: tuple[str, ...]) -> list[str]:
        out = [ALL, "disk:" + self._disks[names]]
        for n in names:
            if "node:" + n not in out:
                out.append("node:" + n)
        return out

    def advance(self, upto_sec: int) -> None:
        """Every second up to upto_sec is over (the tracer's word): close them, and let windows slide."""
        self.close(upto_sec)
        if upto_sec > self.now_s:
            self.now_s = upto_sec
            self.version += 1
            self._trim()

    def close(self, upto_sec: int) -> None:
        """Close every second up to upto_sec: its leaves go to their scopes' rows (with exact
        percentiles), the minutes and the totals; its slowest to the kept ones."""
        due = sorted(k for k in self._open if k <= upto_sec)
        for sec in due:
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
            spans = [x[2] for x in self._open_slow.pop(k)]
            kept = self.slow_seconds.get(k)  # a late span's second was closed already
            self.slow_seconds[k] = spans if kept is None else heapq.nlargest(SLOWEST_PER_SECOND, kept + spans, key=_by_dur)
            mk = (k[0] - k[0] % 60, k[1], k[2])
            self.slow_minutes[mk] = heapq.nlargest(SLOWEST_PER_MINUTE, self.slow_minutes.get(mk, []) + spans, key=_by_dur)
        if due:
            self.version += 1
            self._trim()

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
            at = next((i for i in range(len(rows) - 1, -1, -1) if rows[i].t_s <= sec), -1)
            if at >= 0 and rows[at].t_s == sec:
                rows[at].rollup.merge(rollup)
                rows[at].exact = None  # its sorted durations are gone: percentiles from the histogram
            elif sec > self.closed_upto - self.seconds_kept:
                rows.insert(at + 1, Row(sec, rollup))
            return
        durs.sort()
        exact = {"p50_us": percentile(durs, 50) / 1000, "p90_us": percentile(durs, 90) / 1000,
                 "p99_us": percentile(durs, 99) / 1000}
        rows.append(Row(sec, rollup, exact))

    def _to_minute(self, key: tuple[str, str], sec: int, rollup: Rollup) -> None:
        minute = sec - sec % 60
        rows = self.minutes.get(key)
        if rows is None:
            rows = self.minutes[key] = deque()
        at = next((i for i in range(len(rows) - 1, -1, -1) if rows[i].t_s <= minute), -1)
        if at >= 0 and rows[at].t_s == minute:
            rows[at].rollup.merge(rollup)
            return
        m = Rollup()
        m.merge(rollup)
        rows.insert(at + 1, Row(minute, m))

    def _trim(self) -> None:
        """Forget rows and slowest spans past the horizons, of every key (one that saw no request
        for a while too: its old rows would hold memory, and make old windows look per second)."""
        newest = self.newest_s
        sec_h, min_h = newest - self.seconds_kept, newest - 60 * self.minutes_kept
        for table, horizon in ((self.seconds, sec_h), (self.minutes, min_h)):
            for key in list(table):
                rows = table[key]
                while rows and rows[0].t_s <= horizon:
                    rows.popleft()
                if not rows:
                    del table[key]
        for kept, horizon in ((self.slow_seconds, sec_h), (self.slow_minutes, min_h)):
            for k in [k for k in kept if k[0] <= horizon]:
                del kept[k]

    def open_rollup(self, scope: str, group: str) -> Rollup:
        """The seconds not closed yet, of one scope and group."""
        out = Rollup()
        for leaves in self._open.values():
            for (g, names), (rollup, _durs) in leaves.items():
                if g == group and scope in self._scopes_of_leaf(names):
                    out.merge(rollup)
        return out

    # --- reading -------------------------------------------------------------------------

    def groups(self, scope: str) -> list[str]:
        """The op groups seen in a scope, closed seconds or open."""
        found = {g for (sc, g) in self.totals if sc == scope}
        found |= {g for leaves in self._open.values() for (g, names) in leaves if scope in self._scopes_of_leaf(names)}
        return sorted(found)

    def per_second_from(self, t0_s: int) -> bool:
        """Whether the rows per second hold everything from t0_s on (else: read the minutes)."""
        first_kept = self.newest_s - self.seconds_kept + 1
        return t0_s >= first_kept or (self.first_s is not None and self.first_s >= first_kept)

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
        """The kept slowest spans of the seconds in [t0_s, t1_s], and of the minutes before the seconds kept."""
        for (t, _disk, _group), spans in list(self.slow_seconds.items()):
            if t0_s <= t <= t1_s:
                yield from spans
        if not self.per_second_from(t0_s):
            for (t, _disk, _group), spans in list(self.slow_minutes.items()):
                if t0_s - 59 <= t <= t1_s:
                    yield from spans

    def kept_spans(self) -> Iterable[Span]:
        """Every slowest span kept, the seconds' and the minutes' (find's search)."""
        for table in (self.slow_seconds, self.slow_minutes):
            for spans in list(table.values()):
                yield from spans
