"""Loss sweeping: forgetting coroutines whose last events were lost, so state stays bounded.

After lost events, coroutines whose yield or termination went missing would
stay "alive" (and their requests in flight) for ever. Every SWEEP_NS of trace
time, for SWEEPS_AFTER_LOSS sweeps after a loss, what no event has named for
one to two sweep periods is forgotten; a request known to be waiting (yielded,
not resumed) is kept for WAIT_KEEP_NS since its yield, so a slow flush is not
taken for a leak. Without losses nothing is swept.
"""

from __future__ import annotations

from collections.abc import Iterable

from qspan.correlate.request import _Req
from qspan.correlate.threads import _Thread
from qspan.model.spans import Child

SWEEP_NS = 5_000_000_000
SWEEPS_AFTER_LOSS = 3  # a coroutine last named just before a loss is gone by the third sweep
WAIT_KEEP_NS = 60_000_000_000


class LossSweep:
    """Which coroutines events named lately, and when the next sweep is due."""

    __slots__ = ("touched", "touched_before", "sweeps_left", "next_ns")

    def __init__(self) -> None:
        self.touched: set[int] = set()  # coroutines named since the last sweep
        self.touched_before: set[int] = set()  # ... and in the sweep period before it
        self.sweeps_left = 0  # sweeps still to run since the last loss
        self.next_ns = 0  # the first event's timestamp starts the first period

    def after_loss(self) -> None:
        self.sweeps_left = SWEEPS_AFTER_LOSS

    def run(self, ts: int, co_req: dict[int, _Req], alive: set[int], co_node: dict[int, int],
            by_co: tuple[dict[int, int], ...],
            children: dict[int, Child], threads: Iterable[_Thread], running: dict[int, _Thread]) -> int:
        """The sweep due at ts: forget, in place, what was not named lately; the requests abandoned."""
        abandoned = 0
        if self.sweeps_left and self.next_ns:
            self.sweeps_left -= 1
            keep = self.touched | self.touched_before
            keep.update(co for co, r in co_req.items() if r.wait is not None and ts - r.wait.yield_ns < WAIT_KEEP_NS)
            for co in [co for co in co_req if co not in keep]:
                req = co_req.pop(co)
                if req.co == co:  # a child's entry goes with it, but only the request's own counts
                    abandoned += 1
            alive &= keep
            for co in [co for co in co_node if co not in keep]:
                del co_node[co]
            for d in by_co:  # the correlator's other coroutine -> value maps (co_job, co_parent)
                for co in [co for co in d if co not in keep]:
                    del d[co]
            for co in [co for co in children if co not in keep]:
                del children[co]
            for t in threads:
                if any(co not in keep for co in t.stack):
                    t.stack = [co for co in t.stack if co in keep]
            for co in [co for co in running if co not in keep]:
                del running[co]  # off its stack now: running nowhere
        self.touched_before, self.touched = self.touched, set()
        self.next_ns = ts + SWEEP_NS
        return abandoned
