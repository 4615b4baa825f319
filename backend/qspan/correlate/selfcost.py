"""What qspan itself cost each span: its probes' hits on the span's critical path (pure).

Every event was a probe hit on the thread it names, and each hit took that thread
some time (tracers/costs.txt, calibrated by bench/probe_cost.py, carried in the
recording's header). Each thread keeps a running sum of those costs in time
order (CostLog); a span's own cost is what its critical path paid:

* on its home thread (the iothread), everything hit there while the span ran
  there or waited for it: the kick until the submission, its own run phases,
  and its handoffs (the other work the thread did meanwhile was slowed by its
  probes too);
* on a pool worker, the syscall tracepoints of the hop the span waited for;
* on the vCPU, the kick's own tracepoint.

Waits for other threads (queue, remote, wait, the hop of a profile, its
callback) run in parallel with the home thread and are not charged. The
result is a lower bound of the same kind as the calibration: a hit in situ
costs more than in bench/probe_cost.py's tight loop (bench/overhead.py prints
how far the corrected latencies are from the untraced guest's).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import ClassVar

from qspan.model.spans import Span

TAIL_SEARCH = 64  # sum_between looks at the newest this many hits first
# Older hits are dropped as new ones come (a span longer than this is charged for its last part only)
COST_HORIZON_NS = 2_000_000_000
# Phases whose time runs on another thread than the span's own (see the module's docstring)
OFF_HOME_PHASES = frozenset({"queue", "device", "remote", "wait", "pool", "callback"})


# A hit's cost and count in one int, so a thread's running sum is one list: ns << 64, then the
# uprobe hits << 32 and the tracepoint hits (sums of these never borrow from each other)
NS_SHIFT, UPROBE_SHIFT = 64, 32
COUNT_MASK = (1 << 32) - 1


def hit_increment(ns: int, tracepoint: bool) -> int:
    """What one hit adds to its thread's running sum."""
    return (ns << NS_SHIFT) | (1 if tracepoint else 1 << UPROBE_SHIFT)


class CostLog:
    """One thread's probe hits: their running sum (cost and counts, packed), in time order.

    The correlator charges every calibrated event to its thread's log; `trim` keeps the
    lists short."""

    __slots__ = ("ts", "sums", "base", "limit")
    MAX_KEPT: ClassVar[int] = 16_384  # past this many hits, those older than COST_HORIZON_NS go

    def __init__(self) -> None:
        self.ts: list[int] = []
        self.sums: list[int] = []  # the running sum after each hit
        self.base = 0  # the sum before the first hit kept
        self.limit = self.MAX_KEPT  # trim() when there are more hits than this

    def charge(self, ts: int, increment: int) -> None:
        """One hit at ts (`increment`: hit_increment of its cost and kind)."""
        sums = self.sums
        sums.append((sums[-1] if sums else self.base) + increment)
        self.ts.append(ts)
        if len(sums) > self.limit:
            self.trim(ts)

    def trim(self, now_ns: int) -> None:
        """Forget the hits older than COST_HORIZON_NS (all kept, at a high rate, until there are twice as many)."""
        k = bisect_left(self.ts, now_ns - COST_HORIZON_NS)
        if k:
            self.base = self.sums[k - 1]
            del self.ts[:k], self.sums[:k]
        self.limit = max(self.MAX_KEPT, 2 * len(self.sums))

    def sum_between(self, a: int, b: int) -> int:
        """The packed sum of the hits stamped a <= ts <= b."""
        ts = self.ts
        # Spans end where the log does: search its tail first (bisect over all of a
        # 16k-hit log was 7 % of the compiled correlator's time, perf).
        tail = len(ts) - TAIL_SEARCH
        lo = tail if tail > 0 and ts[tail] < a else 0
        i = bisect_left(ts, a, lo) - 1
        j = bisect_right(ts, b, i + 1 if b >= a else 0) - 1
        return (self.sums[j] if j >= 0 else self.base) - (self.sums[i] if i >= 0 else self.base)

    def window(self, a: int, b: int) -> tuple[int, int, int]:
        """(ns, uprobe hits, tracepoint hits) of the hits stamped a <= ts <= b."""
        return unpack(self.sum_between(a, b))


def unpack(packed: int) -> tuple[int, int, int]:
    """(ns, uprobe hits, tracepoint hits) of a packed sum."""
    return packed >> NS_SHIFT, (packed >> UPROBE_SHIFT) & COUNT_MASK, packed & COUNT_MASK


def span_cost(span: Span, logs: dict[int, CostLog], hop_role: str, kick: int) -> tuple[int, dict]:
    """(ns, {"uprobe": n, "tracepoint": n}) of qspan's probes on `span`'s critical path.

    `logs`: thread -> its CostLog; `kick`: what the vCPU's notify adds (hit_increment; 0: not
    calibrated)."""
    total = 0  # packed, as the logs' sums
    home = logs.get(span.tid)
    if home is not None:
        # the home thread's stretches: consecutive phases merged, so an event on a boundary counts once
        start: int | None = None
        end = 0
        for p in span.phases:
            # (a zero-length one does not split the stretch: its hit would count on both sides)
            if p.dur_ns and (p.name in OFF_HOME_PHASES or p.name == hop_role):
                if start is not None:
                    total += home.sum_between(start, end)
                start = None
                continue
            if start is None:
                start = p.start_ns
            end = p.start_ns + p.dur_ns
        if start is not None:
            total += home.sum_between(start, end)
    for hop in span.pool:
        # the hops the request's own coroutine waited for: their syscall's two tracepoints
        worker = logs.get(hop.worker_tid) if hop.worker_tid else None
        if worker is not None and hop.co == span.co and hop.resumed_ns is not None \
                and hop.io_start_ns is not None and hop.io_done_ns is not None:
            total += worker.sum_between(hop.io_start_ns, hop.io_done_ns)
    if span.phases and span.phases[0].name == "kick":
        total += kick
    ns, uprobes, tracepoints = unpack(total)
    return ns, {"uprobe": uprobes, "tracepoint": tracepoints}
