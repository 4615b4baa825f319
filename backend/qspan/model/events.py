"""Typed records that flow from the tracer into the correlator.

An `Event` is one line of the tracer's output: which semantic event (a name
from tracers/events.txt), when (`ts_ns`, CLOCK_MONOTONIC as bpftrace's
`nsecs`), on which thread (`tid`), and up to four arguments whose meaning is
given per event in events.txt and docs/events.md. `Lost` reports events that
the kernel dropped before the tracer could read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# co.switch actions (QEMU's CoroutineAction)
CO_YIELD = 1
CO_TERMINATE = 2
CO_ENTER = 3

# request / syscall operation codes (req.submit, node.io, sys.io)
OP_READ = 1
OP_WRITE = 2
OP_FLUSH = 3
OP_COPY = 4  # node.io only: copy_file_range between two nodes (bdrv_co_copy_range_from/_to)
OP_NAMES = {OP_READ: "read", OP_WRITE: "write", OP_FLUSH: "flush", OP_COPY: "copy"}


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__,
# 510 ns an event against 135 here (Python 3.11), and the live path and every recording
# read build one Event per event. Nothing changes an Event once made, so it stays hashable.
# And its own __init__: see qspan/model/spans.py (the compiled build).
@dataclass(slots=True, unsafe_hash=True, init=False)
class Event:
    kind: str
    ts_ns: int
    tid: int
    # ints, but for a few string arguments (node.name's): Any, so handlers use them untested
    args: tuple[Any, ...]

    def __init__(self, kind: str, ts_ns: int, tid: int, args: tuple[Any, ...] = ()) -> None:
        self.kind = kind
        self.ts_ns = ts_ns
        self.tid = tid
        self.args = args

    def arg(self, i: int) -> int:
        return self.args[i] if i < len(self.args) else 0


@dataclass(frozen=True, slots=True)
class Lost:
    """The tracer reported `count` events lost; `after_ts_ns` is the last event seen before."""

    count: int
    after_ts_ns: int


def events_of_entries(entries: list[tuple[Any, ...]], codes: dict[int, str],
                      counts: dict[str, int]) -> tuple[list[Event], int]:
    """A ring read's or a dump's decoded entries (TS, CPU, SEQ, TID, CODE, ARG0..ARG3) as events,
    each kind counted in `counts`; and how many had a code the header does not know.

    Here, not in the live feed: compiled with the model (qspan/compiled.py), it takes 165 ns
    an entry where the feed's interpreted loop took 284 (collector off, one run).
    """
    events: list[Event] = []
    unknown = 0
    for e in entries:
        kind = codes.get(e[4])
        if kind is None:
            unknown += 1
            continue
        counts[kind] = counts.get(kind, 0) + 1
        events.append(Event(kind, e[0], e[3], e[5:]))
    return events, unknown
