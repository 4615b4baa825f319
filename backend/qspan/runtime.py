"""Process-wide settings for qspan's own process (set once, at the CLI's start)."""

from __future__ import annotations

import gc

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
