"""Process-wide settings for qspan's own process (set once, at the CLI's start)."""

from __future__ import annotations

import gc
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

    What the correlator drops is freed by reference counting (it makes no cycles per
    event), so pausing the collector for a whole recording's correlation loses no memory
    for long; and the collector, walking the growing heap of spans, was a quarter of that
    job's time (bench/ingest.py). Whatever cycles there are go at the next collection.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
