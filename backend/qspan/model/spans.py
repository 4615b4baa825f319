"""The span model: what the correlator produces and the spans JSON carries.

Units are in the field names: `_ns` are CLOCK_MONOTONIC nanoseconds (the
tracer's clock), `_us` microseconds. docs/spans-schema.md documents every
field; tests/unit/test_docs.py fails when a field here is not documented there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SCHEMA = "qspan.spans/1"

# Where the waiting thread's time went during a handoff (Handoff.instead keys).
INSTEAD_CATEGORIES = (
    "other_requests",  # the coroutines of other guest requests ran on the thread
    "spawned",  # background coroutines spawned by requests (this one or others: e.g. B's writes) ran
    "background",  # coroutines not tied to any traced request ran
    "event_loop",  # the thread ran its event loop / bottom halves, outside coroutines
    "asleep",  # the thread was off-CPU, sleeping (in poll or blocked)
    "runnable",  # the thread was runnable but waited for a CPU
)


@dataclass
class Phase:
    name: str
    start_ns: int
    dur_ns: int


@dataclass
class InsteadItem:
    """One coroutine that ran on the waiting thread while a request waited."""

    co: int
    request: int | None  # request id, None for background coroutines
    role: str  # "request" (a request's own coroutine), the spawn role (e.g. "B"), or "" when unbound
    node: str | None
    dur_ns: int


@dataclass
class Handoff:
    """A wait for a thread to resume the request's coroutine once its work was ready."""

    co: int
    signal: str  # what made it ready: sys.io_done, co.schedule, co.wake, notify, unknown
    from_tid: int  # thread that signalled readiness
    to_tid: int  # thread that resumed the coroutine
    ready_ns: int
    resumed_ns: int
    delay_ns: int
    cross_thread: bool
    instead_ns: dict[str, int] = field(default_factory=dict)  # INSTEAD_CATEGORIES -> ns
    instead_top: list[InsteadItem] = field(default_factory=list)


@dataclass
class NodeVisit:
    node: str  # node name, or bs pointer as hex when unnamed
    driver: str
    bs: int  # BlockDriverState pointer
    offset: int
    bytes: int
    ts_ns: int
    co: int


@dataclass
class Child:
    """A coroutine a request started and did not await: off its critical path."""

    co: int
    role: str  # the profile's spawn role (e.g. "B"), or "nested" when linked by being entered from the request
    offset: int | None
    bytes: int | None
    start_ns: int
    end_ns: int | None  # spawn_done or termination; null when not seen


@dataclass
class PoolHop:
    co: int  # the coroutine that submitted it
    submit_ns: int
    worker_tid: int | None
    io_start_ns: int | None
    io_done_ns: int | None
    resumed_ns: int | None


@dataclass
class Span:
    id: int
    op: str  # read, write, flush
    offset: int
    bytes: int
    tid: int  # thread that submitted and completed it (the iothread)
    co: int  # the request's coroutine
    start_ns: int  # the guest's kick when seen, else submit_ns
    submit_ns: int  # req.submit
    end_ns: int
    dur_ns: int
    ack_ns: int | None
    co_end_ns: int  # the request's coroutine terminated (after the ack: cleanup off the guest's path)
    phases: list[Phase]
    hop_done_ns: int | None  # a profile's hop (e.g. the replica) finished on its own thread; null if none
    handoffs: list[Handoff]
    nodes: list[NodeVisit]
    pool: list[PoolHop]
    children: list[Child]
    complete: bool  # False when events were lost inside the span
    # what qspan's own probes cost its critical path (correlate/selfcost.py; None: no calibration)
    qspan_ns: int | None = None
    qspan_hits: dict | None = None  # {"uprobe": n, "tracepoint": n}


@dataclass
class Result:
    """All spans of a finished event stream, in start order, and the correlator's counters."""

    spans: list[Span]
    stats: dict


def _handoff_dict(h: Handoff) -> dict:
    d = h.__dict__.copy()
    d["instead_ns"] = dict(h.instead_ns)
    d["instead_top"] = [i.__dict__.copy() for i in h.instead_top]
    return d


def span_dict(s: Span) -> dict:
    """dataclasses.asdict(s), ~20x faster: the live path converts every span (asdict was 2/3 of its time)."""
    d = s.__dict__.copy()
    d["phases"] = [p.__dict__.copy() for p in s.phases]
    d["handoffs"] = [_handoff_dict(h) for h in s.handoffs]
    d["nodes"] = [n.__dict__.copy() for n in s.nodes]
    d["pool"] = [p.__dict__.copy() for p in s.pool]
    d["children"] = [c.__dict__.copy() for c in s.children]
    return d

