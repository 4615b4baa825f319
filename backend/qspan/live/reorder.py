"""Putting tracer records back into time order before they reach the correlator (pure)."""

from __future__ import annotations

import heapq
import itertools

from qspan.model.events import Event, Lost

# bpftrace prints per-CPU buffers: lines from different CPUs arrive out of
# timestamp order by up to a buffer's worth. Hold events this long (in trace
# time) before correlating them.
REORDER_LAG_NS = 50_000_000
# With the maps transport every dump says up to when it is complete; an event
# stamped just before a dump's flip can still land in the next one (it read the
# clock before the flip and the side after it), so hold this much back.
WATERMARK_MARGIN_NS = 2_000_000


class ReorderBuffer:
    def __init__(self, lag_ns: int = REORDER_LAG_NS):
        self.lag_ns = lag_ns
        self._heap: list[tuple[int, int, Event | Lost]] = []
        self._seq = itertools.count()
        self.max_ts = 0
        self.watermark_ns = 0  # the tracer says: nothing stamped before this is still to come

    def push(self, rec: Event | Lost) -> None:
        ts = rec.ts_ns if isinstance(rec, Event) else rec.after_ts_ns
        self.max_ts = max(self.max_ts, ts)
        heapq.heappush(self._heap, (ts, next(self._seq), rec))

    def ready(self) -> list[Event | Lost]:
        """Events old enough that no earlier one can still arrive, in timestamp order."""
        out = []
        limit = max(self.max_ts - self.lag_ns, self.watermark_ns - WATERMARK_MARGIN_NS)
        while self._heap and self._heap[0][0] <= limit:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def drain(self) -> list[Event | Lost]:
        out = [heapq.heappop(self._heap)[2] for _ in range(len(self._heap))]
        return out
