"""Process-wide settings for qspan's own process (set once, at the CLI's start)."""

from __future__ import annotations

import gc
import threading
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


_pause_lock = threading.Lock()
_pausers = 0  # threads inside collector_paused()
_resume = False  # whether the collector was enabled when the first of them came in


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: for work that allocates a lot and makes no cycles.

    What the correlator drops is freed by reference counting (it makes no reference
    cycles: tests/unit/test_compiled.py), so pausing the collector loses no memory:
    whatever cycles others make go at the next collection after the pause. Offline, the
    collector walking the growing heap of spans cost ~15 % of a recording's correlation
    (300k -> 355k events/s pure, a 3.2 M-event recording). Live, a collection in the middle
    of a big read walked every record and event of it: 100-300 ms, a bigger backlog at the
    next read, a bigger walk (bench/live.py, docs/performance.md).

    Thread-safe: the collector is paused while any thread is inside, and comes back on
    (if it was on) when the last one leaves.
    """
    global _pausers, _resume
    with _pause_lock:
        if _pausers == 0:
            _resume = gc.isenabled()
            gc.disable()
        _pausers += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pausers -= 1
            if _pausers == 0 and _resume:
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
