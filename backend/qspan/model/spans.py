"""The span model: what the correlator produces and the spans JSON carries.

Units are in the field names: `_ns` are CLOCK_MONOTONIC nanoseconds (the
tracer's clock), `_us` microseconds. docs/spans-schema.md documents every
field; tests/unit/test_docs.py fails when a field here is not documented there.

The records made per span have their own __init__ (init=False to the dataclass):
where qspan's correlator is compiled (qspan/compiled.py) mypyc compiles a
written __init__ but not the one dataclasses generates, and that one, setting
each field through a descriptor, cost the compiled correlator half its speed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

SCHEMA = "qspan.spans/1"

# Where the waiting thread's time went during a handoff (Handoff.instead keys).
INSTEAD_CATEGORIES = (
    "other_requests",  # the coroutines of other guest requests ran on the thread
    "spawned",  # background coroutines spawned by requests (this one or others: e.g. B's writes) ran
    "block_job",  # coroutines of a block job (mirror, stream, backup, commit) ran: its requests and its loop
    "background",  # coroutines not tied to any traced request or job ran
    "event_loop",  # the thread ran its event loop / bottom halves, outside coroutines
    "asleep",  # the thread was off-CPU, sleeping (in poll or blocked)
    "runnable",  # the thread was runnable but waited for a CPU
    # qspan does not trace that thread's scheduling, so what it did is not known: the main loop
    # beside iothreads (left out for cost), or an iothread created after attach
    "unwatched",
)


@dataclass(init=False)
class Phase:
    name: str
    start_ns: int
    dur_ns: int

    def __init__(self, name: str, start_ns: int, dur_ns: int) -> None:
        self.name = name
        self.start_ns = start_ns
        self.dur_ns = dur_ns


@dataclass(init=False)
class InsteadItem:
    """One coroutine that ran on the waiting thread while a request waited."""

    co: int
    request: int | None  # request id, None for background coroutines
    # "request" (a request's own coroutine), the spawn role (e.g. "B"), "job:ID" for a block job's, "" when unbound
    role: str
    node: str | None
    dur_ns: int

    def __init__(self, co: int, request: int | None, role: str, node: str | None, dur_ns: int) -> None:
        self.co = co
        self.request = request
        self.role = role
        self.node = node
        self.dur_ns = dur_ns


@dataclass(init=False)
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
    instead_ns: dict[str, int]  # INSTEAD_CATEGORIES -> ns
    instead_top: list[InsteadItem]

    def __init__(self, co: int, signal: str, from_tid: int, to_tid: int, ready_ns: int, resumed_ns: int,
                 delay_ns: int, cross_thread: bool, instead_ns: dict[str, int], instead_top: list[InsteadItem]) -> None:
        self.co = co
        self.signal = signal
        self.from_tid = from_tid
        self.to_tid = to_tid
        self.ready_ns = ready_ns
        self.resumed_ns = resumed_ns
        self.delay_ns = delay_ns
        self.cross_thread = cross_thread
        self.instead_ns = instead_ns
        self.instead_top = instead_top


@dataclass(init=False)
class NodeVisit:
    node: str  # node name, or bs pointer as hex when unnamed
    driver: str
    bs: int  # BlockDriverState pointer
    offset: int
    bytes: int
    ts_ns: int
    co: int

    def __init__(self, node: str, driver: str, bs: int, offset: int, bytes: int, ts_ns: int, co: int) -> None:
        self.node = node
        self.driver = driver
        self.bs = bs
        self.offset = offset
        self.bytes = bytes
        self.ts_ns = ts_ns
        self.co = co


@dataclass(init=False)
class Child:
    """A coroutine a request started and did not await: off its critical path."""

    co: int
    role: str  # the profile's spawn role (e.g. "B"), or "nested" when linked by being entered from the request
    offset: int | None
    bytes: int | None
    start_ns: int
    end_ns: int | None  # spawn_done or termination; null when not seen

    def __init__(self, co: int, role: str, offset: int | None, bytes: int | None, start_ns: int,
                 end_ns: int | None) -> None:
        self.co = co
        self.role = role
        self.offset = offset
        self.bytes = bytes
        self.start_ns = start_ns
        self.end_ns = end_ns


@dataclass(init=False)
class PoolHop:
    co: int  # the coroutine that submitted it
    submit_ns: int
    worker_tid: int | None
    io_start_ns: int | None
    io_done_ns: int | None
    resumed_ns: int | None

    def __init__(self, co: int, submit_ns: int, worker_tid: int | None, io_start_ns: int | None,
                 io_done_ns: int | None, resumed_ns: int | None) -> None:
        self.co = co
        self.submit_ns = submit_ns
        self.worker_tid = worker_tid
        self.io_start_ns = io_start_ns
        self.io_done_ns = io_done_ns
        self.resumed_ns = resumed_ns


@dataclass(init=False)
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
    # QEMU's own accounting of the request (block_acct_start's clock reading, block_acct_done):
    # what query-blockstats and its latency histograms count; None unless traced (req.acct)
    acct_start_ns: int | None = None
    acct_end_ns: int | None = None
    # None: a guest request; else the block job (its QMP id) whose request this is: its I/O
    # from a job coroutine's first node to the job's next step (start_ns == submit_ns, no ack)
    job: str | None = None

    def __init__(self, id: int, op: str, offset: int, bytes: int, tid: int, co: int, start_ns: int,
                 submit_ns: int, end_ns: int, dur_ns: int, ack_ns: int | None, co_end_ns: int,
                 phases: list[Phase], hop_done_ns: int | None, handoffs: list[Handoff], nodes: list[NodeVisit],
                 pool: list[PoolHop], children: list[Child], complete: bool, qspan_ns: int | None = None,
                 qspan_hits: dict | None = None, acct_start_ns: int | None = None,
                 acct_end_ns: int | None = None, job: str | None = None) -> None:
        self.id = id
        self.op = op
        self.offset = offset
        self.bytes = bytes
        self.tid = tid
        self.co = co
        self.start_ns = start_ns
        self.submit_ns = submit_ns
        self.end_ns = end_ns
        self.dur_ns = dur_ns
        self.ack_ns = ack_ns
        self.co_end_ns = co_end_ns
        self.phases = phases
        self.hop_done_ns = hop_done_ns
        self.handoffs = handoffs
        self.nodes = nodes
        self.pool = pool
        self.children = children
        self.complete = complete
        self.qspan_ns = qspan_ns
        self.qspan_hits = qspan_hits
        self.acct_start_ns = acct_start_ns
        self.acct_end_ns = acct_end_ns
        self.job = job


def span_group(op: str, job: str | None) -> str:
    """What breakdowns group a span under: its op for a guest request, "job:ID" for a block job's."""
    return op if job is None else "job:" + job


@dataclass
class Result:
    """All spans of a finished event stream, in start order, and the correlator's counters."""

    spans: list[Span]
    stats: dict


def _as_dict(cls: type) -> Callable[[object], dict]:
    """A record's fields as a dict."""
    if cls.__dictoffset__:  # a plain class (pure Python): a copy of its __dict__ is the fastest
        return lambda obj: obj.__dict__.copy()
    names = tuple(f.name for f in fields(cls))  # a compiled record has no __dict__
    return lambda obj: {k: getattr(obj, k) for k in names}


_phase, _instead, _handoff, _node, _child, _hop, _span = [
    _as_dict(c) for c in (Phase, InsteadItem, Handoff, NodeVisit, Child, PoolHop, Span)]


def _handoff_dict(h: Handoff) -> dict:
    d = _handoff(h)
    d["instead_ns"] = dict(h.instead_ns)
    d["instead_top"] = [_instead(i) for i in h.instead_top]
    return d


def span_dict(s: Span) -> dict:
    """dataclasses.asdict(s), several times faster: the live path converts every span (asdict was 2/3 of its time)."""
    d = _span(s)
    d["phases"] = [_phase(p) for p in s.phases]
    d["handoffs"] = [_handoff_dict(h) for h in s.handoffs]
    d["nodes"] = [_node(n) for n in s.nodes]
    d["pool"] = [_hop(p) for p in s.pool]
    d["children"] = [_child(c) for c in s.children]
    return d
