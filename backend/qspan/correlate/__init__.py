"""The correlator: typed events in, per-request spans out. Pure and deterministic.

No clock, file, socket or subprocess in here: the same input gives the same
spans, whether it comes from a live tracer, a recording or a test.

How a guest request is followed (QEMU's own model):

* `req.submit` (blk_aio_pwritev, ...) on a thread opens a request; the next
  coroutine *entered for the first time* on that thread is the request's
  coroutine (blk_aio_prwv creates and enters it straight away).
* A coroutine first entered while a request's coroutine is running is a child
  of that request (e.g. a driver spawning a background write to its backing
  node): it is linked to the request but is not on its critical path.
* The request's coroutine alternates between running and waiting. A wait
  starts at its yield and ends when it is entered again. Inside a wait the
  *ready* point is the first signal that the awaited work is done: the worker
  syscall's return for a thread-pool hop (matched by file offset), or a
  cross-thread `co.schedule`/`co.wake` naming the coroutine. From ready to
  resumed the request waits for its home thread only: a *handoff*, whose time
  is attributed from that thread's timeline (which coroutines ran, event loop,
  asleep, runnable off-CPU).
* The request ends at its ack (virtqueue_push: the guest is told), or when
  its coroutine terminates if no ack was seen.

Phases are contiguous and add up to the span's duration by construction:
submit, then per wait (queue, device | remote | wait), handoff, then run ...,
and complete for the last running stretch.

Where it is: correlator.py binds each event to the request or coroutine it
concerns, and threads.py does so for thread-level events (scheduler, pool
workers, guest kicks); request.py cuts one request's time into phases;
timeline.py keeps the watched threads' timelines that handoffs are attributed
from; pool.py matches thread-pool work to worker syscalls; sweep.py forgets
what lost events left behind; config.py reads the recording header once.
"""

from __future__ import annotations

from collections.abc import Iterable

from qspan import compiled

compiled.prefer("correlate", __path__)  # the mypyc build of these modules, if current (qspan/compiled.py)

from qspan.correlate.config import CorrelatorConfig
from qspan.correlate.correlator import Correlator
from qspan.correlate.sweep import SWEEP_NS, SWEEPS_AFTER_LOSS, WAIT_KEEP_NS
from qspan.correlate.timeline import INSTEAD_TOP, TIMELINE_HORIZON_NS, Timeline
from qspan.model.events import Event, Lost
from qspan.model.spans import Result

__all__ = [
    "Correlator", "CorrelatorConfig", "Timeline", "correlate", "in_time_order",
    "INSTEAD_TOP", "SWEEP_NS", "SWEEPS_AFTER_LOSS", "TIMELINE_HORIZON_NS", "WAIT_KEEP_NS",
]


def in_time_order(events: Iterable[Event | Lost]) -> list[Event | Lost]:
    """bpftrace reads per-CPU buffers, so lines from different CPUs interleave: sort by timestamp."""
    return sorted(events, key=lambda e: e.ts_ns if isinstance(e, Event) else e.after_ts_ns)


def correlate(events: Iterable[Event | Lost], header: dict) -> Result:
    """All spans of a finished event stream."""
    c = Correlator(header)
    for ev in in_time_order(events):
        c.add(ev)
    return c.finish()
