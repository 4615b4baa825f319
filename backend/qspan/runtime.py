"""Process-wide settings for qspan's own process (set once, at the CLI's start)."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager

# CPython collects its youngest generation every 700 allocations and the whole heap every
# ~70,000 (when it has grown by a quarter). The correlator and the live path allocate an
# object or more per event and keep 10^5-10^6 long-lived ones (the span store, the thread
# timelines, a recording's events), so the whole heap was traversed again and again: on a
# 45 s full-rate live recording (1.15 M events) the live path handled 147k events/s with
# the default, 225k with these thresholds and 237k with no collection at all (one run each).
# What qspan makes holds few reference cycles; the young generation is still collected.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    gc.set_threshold(*GC_THRESHOLDS)


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: for a bounded batch job that allocates a lot.

    What the correlator drops is freed by reference counting (it makes no reference
    cycles: tests/unit/test_compiled.py), so pausing the collector for a whole recording's
    correlation loses no memory; the collector, walking the growing heap of spans, cost
    that job ~15 % of its speed (300k -> 355k events/s pure, a 3.2 M-event recording).
    Whatever cycles there are go at the next collection.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class CollectorPauses:
    """How long CPython's cyclic collector stopped this process, per generation (gc.callbacks).

    The live server's freshness is bounded by its longest stall; a full collection walks
    every object it holds, so this is the first thing to look at when frames come late.
    """

    def __init__(self) -> None:
        self._started = 0.0
        self.count = [0, 0, 0]
        self.total_s = [0.0, 0.0, 0.0]
        self.max_s = [0.0, 0.0, 0.0]
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        g, took = info["generation"], time.perf_counter() - self._started
        self.count[g] += 1
        self.total_s[g] += took
        self.max_s[g] = max(self.max_s[g], took)

    def close(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def summary(self) -> dict:
        return {f"gen{g}": {"collections": self.count[g], "total_s": round(self.total_s[g], 3),
                            "max_ms": round(self.max_s[g] * 1000, 1)} for g in range(3)}


_pauses: CollectorPauses | None = None


def collector_pauses() -> CollectorPauses:
    """This process's collector pauses, counted from the first call on."""
    global _pauses
    if _pauses is None:
        _pauses = CollectorPauses()
    return _pauses
