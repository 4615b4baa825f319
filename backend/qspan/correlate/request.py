"""A guest request in flight: its record, and the rules that cut its time into phases.

The correlator decides which request an event concerns and when its coroutine
yields, is signalled, resumed or ends; what that means for the request's phases
is decided here, from the request's own record alone. Phases are closed one
after the other at a cursor, so they are contiguous and add up to the span's
duration.
"""

from __future__ import annotations

from dataclasses import dataclass

from qspan.model.events import OP_NAMES
from qspan.model.spans import Child, Handoff, NodeVisit, Phase, PoolHop, Span


@dataclass(slots=True, init=False)  # init: see qspan/model/spans.py
class _Wait:
    yield_ns: int
    pool: PoolHop | None
    hop: bool  # a profile hop (drv.hop) preceded the yield
    hop_done_ns: int | None
    ready_ns: int | None
    signal: str
    from_tid: int

    def __init__(self, yield_ns: int, pool: PoolHop | None, hop: bool, hop_done_ns: int | None) -> None:
        self.yield_ns = yield_ns
        self.pool = pool
        self.hop = hop
        self.hop_done_ns = hop_done_ns
        self.ready_ns = None
        self.signal = "unknown"
        self.from_tid = 0


@dataclass(slots=True, init=False)
class _Req:
    id: int
    op: int
    blk: int
    offset: int
    bytes: int
    tid: int
    submit_ns: int
    start_ns: int  # the guest's kick when seen, else 0 (then submit_ns)
    co: int
    cursor_ns: int  # end of the last closed phase
    run_name: str
    wait: _Wait | None
    early: tuple[int, str, int] | None  # a wake-up signal seen before the coroutine yielded
    hop_pending: bool  # drv.hop seen, the coroutine has not yielded yet
    hop_done_ns: int | None  # drv.hop_done seen before the coroutine yielded
    last_hop_done_ns: int | None
    ack_ns: int | None
    acct: tuple[int, int] | None  # QEMU's accounting interval (req.acct): its start and end
    phases: list[Phase]
    handoffs: list[Handoff]
    nodes: list[NodeVisit]
    pool: list[PoolHop]
    children: list[Child]
    complete: bool
    waited: bool  # its coroutine has yielded at least once
    job: int  # the block job (Job pointer) whose request this is; 0: a guest request

    def __init__(self, id: int, op: int, blk: int, offset: int, bytes: int, tid: int, submit_ns: int) -> None:
        self.id = id
        self.op = op
        self.blk = blk
        self.offset = offset
        self.bytes = bytes
        self.tid = tid
        self.submit_ns = submit_ns
        self.start_ns = 0
        self.co = 0
        self.cursor_ns = submit_ns
        self.run_name = "submit"
        self.wait = None
        self.early = None
        self.hop_pending = False
        self.hop_done_ns = None
        self.last_hop_done_ns = None
        self.ack_ns = None
        self.acct = None
        self.phases = []
        self.handoffs = []
        self.nodes = []
        self.pool = []
        self.children = []
        self.complete = True
        self.waited = False
        self.job = 0

    def phase(self, name: str, end_ns: int) -> None:
        """Close the next phase at end_ns (clamped: phases never overlap or go back)."""
        end_ns = max(end_ns, self.cursor_ns)
        self.phases.append(Phase(name, self.cursor_ns, end_ns - self.cursor_ns))
        self.cursor_ns = end_ns

    def kicked(self, kick_ns: int) -> None:
        """The guest's kick waited for this thread to pick the request up: on the critical path."""
        self.start_ns = self.cursor_ns = kick_ns
        self.phase("kick", self.submit_ns)

    def run_as(self, name: str, ts: int) -> None:
        """A profile's driver says what the coroutine does from ts on (drv.enter, drv.ack)."""
        if self.wait is None:
            self.phase(self.run_name, ts)
            self.run_name = name

    def hop_handed(self, ts: int) -> None:
        # The hop's phase starts when the work is handed over (drv.hop), not at the yield:
        # the driver's remaining work until it yields runs in parallel with the hop.
        if self.wait is None:
            self.phase(self.run_name, ts)
            self.hop_pending = True
            self.hop_done_ns = None

    def hop_finished(self, ts: int) -> None:
        """The hop's own thread is done with it (drv.hop_done)."""
        self.last_hop_done_ns = ts
        if self.wait is not None and self.wait.hop:
            self.wait.hop_done_ns = ts
        elif self.hop_pending:
            self.hop_done_ns = ts  # done before the coroutine even yielded

    def signalled(self, ts: int, kind: str, tid: int, by_itself: bool) -> None:
        """A co.schedule or co.wake naming the request's coroutine, from thread tid."""
        w = self.wait
        if w is None:
            if self.early is None and not by_itself:
                self.early = (ts, kind, tid)  # ready as soon as it yields
        elif w.ready_ns is None and (tid != self.tid or w.pool is None):
            # A pool wait is ready at its worker's syscall return (see resumed): the wake that
            # follows on the home thread, from the pool's completion, is part of the handoff.
            w.ready_ns, w.signal, w.from_tid = ts, kind, tid

    def pool_started(self, hop: PoolHop) -> None:
        """A worker started the syscall of work one of the request's coroutines handed to the pool."""
        self.pool.append(hop)
        w = self.wait
        # The worker usually starts after the yield: the wait it ends is then already open.
        if w is not None and w.pool is None and w.ready_ns is None and hop.co == self.co:
            w.pool = hop

    def yielded(self, ts: int) -> None:
        """The request's coroutine yields at ts: a wait begins."""
        self.waited = True
        if not self.hop_pending:  # after drv.hop the hop's phase is already open
            self.phase(self.run_name, ts)
        self.run_name = "run"
        last = self.pool[-1] if self.pool else None
        hop = last if last is not None and last.resumed_ns is None and last.co == self.co else None
        w = self.wait = _Wait(ts, hop, self.hop_pending, self.hop_done_ns)
        self.hop_pending, self.hop_done_ns = False, None
        if self.early is not None:
            # Woken before it yielded (a fast completion): ready as soon as it yields.
            _ts, w.signal, w.from_tid = self.early
            w.ready_ns = ts
            self.early = None

    def resumed(self, ts: int, hop_role: str) -> _Wait:
        """The coroutine is entered again at ts: the wait becomes phases, ending in the handoff
        if it became ready before (then the correlator attributes the handoff; see ready_ns)."""
        w = self.wait
        assert w is not None
        self.wait = None
        hop = w.pool
        if w.hop:
            # A profile's hop (e.g. the replica): its own phase until its thread is done,
            # then the callback until it signals the coroutine, then the handoff.
            hop_end = w.hop_done_ns if w.hop_done_ns is not None else (w.ready_ns if w.ready_ns is not None else ts)
            self.phase(hop_role, hop_end)
            if w.hop_done_ns is not None:
                self.phase("callback", w.ready_ns if w.ready_ns is not None else ts)
        elif hop is not None:
            hop.resumed_ns = ts
            if hop.io_start_ns is not None and hop.io_done_ns is not None:
                # The worker may finish before the coroutine even yields: clamp to the yield.
                self.phase("queue", hop.io_start_ns)
                self.phase("device", hop.io_done_ns)
                w.ready_ns = max(hop.io_done_ns, w.yield_ns)
                w.signal, w.from_tid = "sys.io_done", hop.worker_tid or 0
            else:
                self.phase("pool", w.ready_ns if w.ready_ns is not None else ts)
        elif w.ready_ns is not None:
            self.phase("remote" if w.from_tid != self.tid else "wait", w.ready_ns)
        else:
            self.phase("wait", ts)
        if w.ready_ns is not None:
            self.phase("handoff", ts)
        return w

    def ended(self, ts: int) -> Span:
        """The request's coroutine terminates at ts: the last phase closes, the span is made."""
        # The guest sees completion at the ack (virtqueue_push, then its interrupt), which comes
        # before the coroutine returns; what follows the ack is not on the guest's path.
        end = self.ack_ns if self.ack_ns is not None and self.ack_ns >= self.cursor_ns else ts
        self.phase(self.run_name if self.run_name != "run" else "complete", end)
        start = self.start_ns or self.submit_ns
        return Span(
            id=self.id, op=OP_NAMES.get(self.op, str(self.op)), offset=self.offset, bytes=self.bytes, tid=self.tid,
            co=self.co, start_ns=start, submit_ns=self.submit_ns, end_ns=end, dur_ns=end - start, ack_ns=self.ack_ns,
            co_end_ns=ts, phases=self.phases, hop_done_ns=self.last_hop_done_ns, handoffs=self.handoffs,
            nodes=self.nodes, pool=self.pool, children=self.children, complete=self.complete,
            acct_start_ns=self.acct[0] if self.acct else None, acct_end_ns=self.acct[1] if self.acct else None,
        )
