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
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from qspan.model.events import CO_ENTER, CO_TERMINATE, CO_YIELD, OP_NAMES, Event, Lost
from qspan.catalogue import DEFAULT_ROLES
from qspan.model.spans import Child, Handoff, InsteadItem, NodeVisit, Phase, PoolHop, Result, Span

# Timeline segments older than this are dropped; a handoff longer than this is
# attributed only over its last TIMELINE_HORIZON_NS.
TIMELINE_HORIZON_NS = 2_000_000_000
# After lost events, coroutines whose yield or termination went missing would
# stay "alive" (and their requests in flight) for ever. Every SWEEP_NS of trace
# time, for three sweeps after a loss, what no event has named for one to two
# sweep periods is forgotten; a request known to be waiting (yielded, not
# resumed) is kept for WAIT_KEEP_NS since its yield, so a slow flush is not
# taken for a leak. Without losses nothing is swept.
SWEEP_NS = 5_000_000_000
SWEEPS_AFTER_LOSS = 3  # a coroutine last named just before a loss is gone by the third sweep
WAIT_KEEP_NS = 60_000_000_000
INSTEAD_TOP = 5


@dataclass(slots=True)
class _Segment:
    start_ns: int
    end_ns: int
    kind: str  # co, loop, asleep, runnable
    co: int
    role: str  # request, spawned role, or "" (unbound)
    request: int | None
    node: int  # bs of the last node the coroutine entered, 0 if none


@dataclass(frozen=True, slots=True)
class Timeline:
    """A watched thread's timeline around one span.

    Kept as the correlator's own (never mutated) segments and made into dicts
    only when someone asks: the live server keeps hundreds, and shows a few.
    """

    tid: int
    segments: tuple[_Segment, ...]

    def dicts(self) -> list[dict]:
        return [{"tid": self.tid, "start_ns": seg.start_ns, "dur_ns": seg.end_ns - seg.start_ns, "kind": seg.kind,
                 "co": seg.co, "request": seg.request, "role": seg.role} for seg in self.segments]


@dataclass(slots=True)
class _Wait:
    yield_ns: int
    pool: PoolHop | None = None
    hop: bool = False  # a profile hop (drv.hop) preceded the yield
    hop_done_ns: int | None = None
    ready_ns: int | None = None
    signal: str = "unknown"
    from_tid: int = 0


@dataclass(slots=True)
class _Req:
    id: int
    op: int
    blk: int
    offset: int
    bytes: int
    tid: int
    submit_ns: int
    start_ns: int = 0  # the guest's kick when seen, else submit_ns
    co: int = 0
    cursor_ns: int = 0  # end of the last closed phase
    run_name: str = "submit"
    wait: _Wait | None = None
    early: tuple[int, str, int] | None = None  # a wake-up signal seen before the coroutine yielded
    hop_pending: bool = False  # drv.hop seen, the coroutine has not yielded yet
    hop_done_ns: int | None = None  # drv.hop_done seen before the coroutine yielded
    last_hop_done_ns: int | None = None
    ack_ns: int | None = None
    phases: list[Phase] = field(default_factory=list)
    handoffs: list[Handoff] = field(default_factory=list)
    nodes: list[NodeVisit] = field(default_factory=list)
    pool: list[PoolHop] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)
    complete: bool = True

    def phase(self, name: str, end_ns: int) -> None:
        """Close the next phase at end_ns (clamped: phases never overlap or go back)."""
        end_ns = max(end_ns, self.cursor_ns)
        self.phases.append(Phase(name, self.cursor_ns, end_ns - self.cursor_ns))
        self.cursor_ns = end_ns


@dataclass(slots=True)
class _PendingPool:
    req: _Req
    hop: PoolHop
    offset: int | None
    op: int


class _Thread:
    """What one thread is doing: its coroutine stack and, if watched, its timeline."""

    def __init__(self, tid: int, watched: bool):
        self.tid = tid
        self.watched = watched
        self.stack: list[int] = []
        self.cpu = "on"  # on, asleep, runnable
        self.seg_start: int | None = None
        self.segments: deque[_Segment] = deque()
        self.pending_submit: _Req | None = None
        self.kick: int | None = None  # a guest kick this thread read and no request has taken yet
        self.last_submit_ns = 0
        self.io: PoolHop | None = None  # worker: the hop whose syscall is in progress
        self.io_req: _Req | None = None

    @property
    def current(self) -> int:
        return self.stack[-1] if self.stack else 0


class Correlator:
    """Feed events in timestamp order with add(); take spans with finish()."""

    def __init__(self, header: dict, capture_timeline: bool = False):
        # capture_timeline: keep, per finished span, the segments of its thread's timeline
        # that overlap it (the dashboard's per-thread view around a request).
        self.capture_timeline = capture_timeline
        self.timelines: dict[int, Timeline] = {}
        threads = header.get("target", {}).get("threads", [])
        # The threads whose scheduler events were traced (older recordings: every event loop).
        watched = header.get("target", {}).get("watched_tids")
        self.watched = set(watched) if watched else {t["tid"] for t in threads if t.get("role") in ("main", "iothread")}
        # Named threads that are not pool workers (a driver's own threads, e.g. O's replica
        # thread) may do pread/pwrite too: their syscalls are not thread-pool work.
        self.not_workers = {
            t["tid"] for t in threads
            if t.get("role") == "main"
            or (t.get("role") != "worker" and t["tid"] not in self.watched and not t.get("comm", "").startswith("qemu-system"))
        }
        self.vcpus = {t["tid"] for t in threads if t.get("role") == "vcpu"}
        self.roles = dict(DEFAULT_ROLES, **header.get("profile", {}).get("roles", {}))
        self._forget_flow()
        self.node_names: dict[int, tuple[str, str]] = {}
        self.next_id = 1
        self.spans: list[Span] = []
        # sampled_out: requests in flight when a sampling window closed (dropped, not spans)
        # abandoned: requests forgotten by a sweep after losses (never finished, no span)
        self.stats = {"events": 0, "lost_events": 0, "unbound_submits": 0, "unmatched_io": 0, "incomplete": 0,
                      "sampled_out": 0, "abandoned": 0}
        self.last_ts = 0
        self._events = 0  # counted apart from stats: a dict update per event costs more
        self.sampling_off = False  # a trace.window closed and the next has not opened
        self.handlers = {
            "co.switch": self._co_switch,
            "co.schedule": self._co_signal,
            "co.wake": self._co_signal,
            "req.submit": self._req_submit,
            "node.io": self._node_io,
            "node.name": self._node_name,
            "pool.submit": self._pool_submit,
            "req.ack": self._req_ack,
            "notify": self._notify,
            "kick.read": self._kick_read,
            "loop.poll": self._loop_poll,
            "sys.io": self._sys_io,
            "sys.io_done": self._sys_io_done,
            "sched.switch": self._sched_switch,
            "sched.wakeup": self._sched_wakeup,
            "drv.enter": self._drv_enter,
            "drv.hop": self._drv_hop,
            "drv.hop_done": self._drv_hop_done,
            "drv.ack": self._drv_ack,
            "drv.spawn": self._drv_spawn,
            "drv.spawn_done": self._drv_spawn_done,
            "trace.window": self._window,
        }

    def _forget_flow(self) -> None:
        """What the correlator knows of requests, coroutines and threads in flight (reset by sampling)."""
        self.kicks: dict[int, int] = {}  # notifier -> earliest vCPU kick not yet read
        self.children: dict[int, Child] = {}  # live child coroutine -> its record
        self.threads: dict[int, _Thread] = {}
        self.alive: set[int] = set()  # coroutines entered and not yet terminated
        self.co_req: dict[int, _Req] = {}
        self.co_node: dict[int, int] = {}  # coroutine -> bs of the last node it entered
        self.pending_pool: list[_PendingPool] = []
        self._touched: set[int] = set()  # coroutines named since the last sweep
        self._touched_before: set[int] = set()  # ... and in the sweep period before it
        self._sweeps_left = 0  # sweeps still to run since the last loss
        self._next_sweep_ns = 0

    # -- plumbing -------------------------------------------------------------

    def thread(self, tid: int) -> _Thread:
        t = self.threads.get(tid)
        if t is None:
            t = self.threads[tid] = _Thread(tid, tid in self.watched)
        return t

    def add(self, ev: Event | Lost) -> None:
        if type(ev) is Lost:
            self.stats["lost_events"] += ev.count
            self._sweeps_left = SWEEPS_AFTER_LOSS
            # Anything in flight may have missed an event: say so on its span.
            for req in {id(r): r for r in self.co_req.values()}.values():
                req.complete = False
            for t in self.threads.values():
                if t.pending_submit:
                    t.pending_submit.complete = False
            return
        self._events += 1
        ts = self.last_ts = ev.ts_ns
        if ts >= self._next_sweep_ns:
            self._sweep(ts)
        handler = self.handlers.get(ev.kind)
        if handler is not None and (not self.sampling_off or handler == self._window or handler == self._node_name):
            handler(ev)

    def _sweep(self, ts: int) -> None:
        if self._sweeps_left and self._next_sweep_ns:
            self._sweeps_left -= 1
            keep = self._touched | self._touched_before
            keep.update(co for co, r in self.co_req.items() if r.wait is not None and ts - r.wait.yield_ns < WAIT_KEEP_NS)
            for co in [co for co in self.co_req if co not in keep]:
                req = self.co_req.pop(co)
                if req.co == co:
                    self.stats["abandoned"] += 1
            self.alive &= keep
            for co in [co for co in self.co_node if co not in keep]:
                del self.co_node[co]
            for co in [co for co in self.children if co not in keep]:
                del self.children[co]
            for t in self.threads.values():
                if any(co not in keep for co in t.stack):
                    t.stack = [co for co in t.stack if co in keep]
        self._touched_before, self._touched = self._touched, set()
        self._next_sweep_ns = ts + SWEEP_NS

    def _window(self, ev: Event) -> None:
        """A sampling window opens or closes: what follows starts afresh, as at attach."""
        if ev.args[0] == 0:
            # a request is in flight until its own coroutine ends (children may outlive it)
            in_flight = sum(1 for co, r in self.co_req.items() if r.co == co)
            self.stats["sampled_out"] += in_flight + sum(1 for t in self.threads.values() if t.pending_submit)
        self._forget_flow()
        self.sampling_off = ev.args[0] == 0

    def _mark(self, t: _Thread, ts: int) -> None:
        """Close the watched thread's current timeline segment at ts (its state is about to change)."""
        if not t.watched:
            return
        start = t.seg_start
        if start is not None and ts > start:
            segs = t.segments
            if t.cpu == "on":
                co = t.stack[-1] if t.stack else 0
                if co:
                    req = self.co_req.get(co)
                    if req is None:
                        segs.append(_Segment(start, ts, "co", co, "", None, self.co_node.get(co, 0)))
                    else:
                        role = "request" if req.co == co else self.children[co].role if co in self.children else "nested"
                        segs.append(_Segment(start, ts, "co", co, role, req.id, self.co_node.get(co, 0)))
                else:
                    segs.append(_Segment(start, ts, "loop", 0, "", None, 0))
            else:
                segs.append(_Segment(start, ts, t.cpu, 0, "", None, 0))
            if segs[0].end_ns < ts - TIMELINE_HORIZON_NS:
                horizon = ts - TIMELINE_HORIZON_NS
                while segs and segs[0].end_ns < horizon:
                    segs.popleft()
        t.seg_start = ts

    def _name(self, bs: int) -> tuple[str, str]:
        return self.node_names.get(bs, (f"0x{bs:x}", ""))

    # -- coroutines -----------------------------------------------------------

    def _co_switch(self, ev: Event) -> None:
        from_co, to_co, action = ev.args[0], ev.args[1], ev.args[2]
        self._touched.add(from_co)
        self._touched.add(to_co)
        t = self.thread(ev.tid)
        self._mark(t, ev.ts_ns)
        if action == CO_ENTER:
            parent = t.current
            if to_co not in self.alive:
                self.alive.add(to_co)
                if to_co not in self.co_req:  # not already linked by drv.spawn
                    self._bind_new(t, to_co, parent, ev.ts_ns)
            t.stack.append(to_co)
            req = self.co_req.get(to_co)
            if req is not None and req.co == to_co and req.wait is not None:
                self._resume(req, t, ev.ts_ns)
        elif action in (CO_YIELD, CO_TERMINATE):
            if t.stack and t.stack[-1] == from_co:
                t.stack.pop()
            elif from_co in t.stack:  # events were lost: resynchronise on what we know
                del t.stack[t.stack.index(from_co):]
            req = self.co_req.get(from_co)
            if req is not None and req.co == from_co:
                if action == CO_YIELD:
                    if not req.hop_pending:  # after drv.hop the hop's phase is already open
                        req.phase(req.run_name, ev.ts_ns)
                    req.run_name = "run"
                    hop = req.pool[-1] if req.pool and req.pool[-1].resumed_ns is None and req.pool[-1].co == from_co else None
                    w = req.wait = _Wait(ev.ts_ns, pool=hop, hop=req.hop_pending, hop_done_ns=req.hop_done_ns)
                    req.hop_pending, req.hop_done_ns = False, None
                    if req.early is not None:
                        # Woken before it yielded (a fast completion): ready as soon as it yields.
                        _ts, w.signal, w.from_tid = req.early
                        w.ready_ns = ev.ts_ns
                        req.early = None
                else:
                    self._finish(req, ev.ts_ns)
            if action == CO_TERMINATE:
                child = self.children.pop(from_co, None)
                if child is not None and child.end_ns is None:
                    child.end_ns = ev.ts_ns
                self.alive.discard(from_co)
                self.co_req.pop(from_co, None)
                self.co_node.pop(from_co, None)

    def _bind_new(self, t: _Thread, co: int, parent: int, ts: int) -> None:
        req = t.pending_submit
        if req is not None:
            t.pending_submit = None
            req.co = co
            self.co_req[co] = req
            return
        parent_req = self.co_req.get(parent) if parent else None
        if parent_req is not None:
            self._link_child(parent_req, co, "nested", None, None, ts)

    def _link_child(self, req: _Req, co: int, role: str, offset: int | None, nbytes: int | None, ts: int) -> None:
        child = Child(co, role, offset, nbytes, ts, None)
        self.co_req[co] = req
        self.children[co] = child
        req.children.append(child)

    def _co_signal(self, ev: Event) -> None:
        co = ev.args[1] if ev.kind == "co.schedule" else ev.args[0]
        self._touched.add(co)
        req = self.co_req.get(co)
        if req is None or req.co != co:
            return
        if req.wait is None:
            if req.early is None and self.thread(ev.tid).current != co:
                req.early = (ev.ts_ns, ev.kind, ev.tid)
            return
        if req.wait.ready_ns is not None:
            return
        if ev.tid != req.tid or req.wait.pool is None:
            req.wait.ready_ns = ev.ts_ns
            req.wait.signal = ev.kind
            req.wait.from_tid = ev.tid

    def _resume(self, req: _Req, t: _Thread, ts: int) -> None:
        w = req.wait
        assert w is not None
        req.wait = None
        hop = w.pool
        if w.hop:
            # A profile's hop (e.g. the replica): its own phase until its thread is done,
            # then the callback until it signals the coroutine, then the handoff.
            hop_end = w.hop_done_ns if w.hop_done_ns is not None else (w.ready_ns if w.ready_ns is not None else ts)
            req.phase(self.roles["hop"], hop_end)
            if w.hop_done_ns is not None:
                req.phase("callback", w.ready_ns if w.ready_ns is not None else ts)
        elif hop is not None:
            hop.resumed_ns = ts
            if hop.io_start_ns is not None and hop.io_done_ns is not None:
                # The worker may finish before the coroutine even yields: clamp to the yield.
                req.phase("queue", hop.io_start_ns)
                req.phase("device", hop.io_done_ns)
                w.ready_ns = max(hop.io_done_ns, w.yield_ns)
                w.signal, w.from_tid = "sys.io_done", hop.worker_tid or 0
            else:
                req.phase("pool", w.ready_ns if w.ready_ns is not None else ts)
        elif w.ready_ns is not None:
            req.phase("remote" if w.from_tid != req.tid else "wait", w.ready_ns)
        else:
            req.phase("wait", ts)
        if w.ready_ns is not None:
            ready = min(max(w.ready_ns, w.yield_ns), ts)
            req.phase("handoff", ts)
            instead, top = self._instead(t, req, ready, ts)
            req.handoffs.append(
                Handoff(req.co, w.signal, w.from_tid, t.tid, ready, ts, ts - ready, w.from_tid != t.tid, instead, top)
            )

    def _instead(self, t: _Thread, req: _Req, a: int, b: int) -> tuple[dict[str, int], list[InsteadItem]]:
        """What thread t did between a and b, while req waited for it."""
        cats = {"other_requests": 0, "spawned": 0, "background": 0, "event_loop": 0, "asleep": 0, "runnable": 0}
        by_co: dict[int, InsteadItem] = {}
        if not t.watched:
            return {}, []
        for seg in reversed(t.segments):
            if seg.end_ns <= a:
                break
            dur = min(seg.end_ns, b) - max(seg.start_ns, a)
            if dur <= 0:
                continue
            if seg.kind == "co":
                cat = "background" if seg.request is None else "other_requests" if seg.role == "request" else "spawned"
                item = by_co.get(seg.co)
                if item is None:
                    node = self._name(seg.node)[0] if seg.node else None
                    item = by_co[seg.co] = InsteadItem(seg.co, seg.request, seg.role, node, 0)
                item.dur_ns += dur
            else:
                cat = {"loop": "event_loop"}.get(seg.kind, seg.kind)
            cats[cat] += dur
        top = sorted(by_co.values(), key=lambda i: (-i.dur_ns, i.co))[:INSTEAD_TOP]
        return cats, top

    # -- requests -------------------------------------------------------------

    def _req_submit(self, ev: Event) -> None:
        blk, offset, nbytes, op = ev.args
        t = self.thread(ev.tid)
        if t.pending_submit is not None:
            self.stats["unbound_submits"] += 1
        req = _Req(self.next_id, op, blk, offset, nbytes, ev.tid, ev.ts_ns, cursor_ns=ev.ts_ns)
        if t.kick is not None:
            # The guest's kick waited for this thread to pick the request up: on the critical path.
            req.start_ns = req.cursor_ns = t.kick
            req.phase("kick", ev.ts_ns)
            t.kick = None
        self.next_id += 1
        t.pending_submit = req
        t.last_submit_ns = ev.ts_ns

    def _notify(self, ev: Event) -> None:
        # A vCPU setting an EventNotifier may be a guest kick (TCG's ioeventfd path); it is one
        # when an event loop then reads that notifier as a virtqueue's host notifier.
        if ev.tid in self.vcpus:
            self.kicks.setdefault(ev.args[0], ev.ts_ns)

    def _loop_poll(self, ev: Event) -> None:
        # Back to polling: the handler run that read a kick is over. A kick no request took
        # (a spurious one) must not be charged to whatever request comes next, maybe much later.
        self.thread(ev.tid).kick = None

    def _kick_read(self, ev: Event) -> None:
        # Only the first request submitted after the read gets the kick phase: requests that came
        # without a kick of their own (batched, or picked up by polling) are under- rather than
        # over-reported.
        kick = self.kicks.pop(ev.args[0], None)
        t = self.thread(ev.tid)
        # A kick older than the thread's last submission was already served (by polling).
        if kick is not None and kick >= t.last_submit_ns:
            t.kick = kick

    def _finish(self, req: _Req, ts: int) -> None:
        # The guest sees completion at the ack (virtqueue_push, then its interrupt), which comes
        # before the coroutine returns; what follows the ack is not on the guest's path.
        end = req.ack_ns if req.ack_ns is not None and req.ack_ns >= req.cursor_ns else ts
        req.phase(req.run_name if req.run_name != "run" else "complete", end)
        if not req.complete:
            self.stats["incomplete"] += 1
        if self.capture_timeline:
            self.timelines[req.id] = self._timeline(req.tid, req.start_ns or req.submit_ns, ts)
        self.spans.append(
            Span(
                id=req.id, op=OP_NAMES.get(req.op, str(req.op)), offset=req.offset, bytes=req.bytes, tid=req.tid,
                co=req.co, start_ns=req.start_ns or req.submit_ns, submit_ns=req.submit_ns, end_ns=end,
                dur_ns=end - (req.start_ns or req.submit_ns), ack_ns=req.ack_ns,
                co_end_ns=ts, phases=req.phases, hop_done_ns=req.last_hop_done_ns, handoffs=req.handoffs, nodes=req.nodes, pool=req.pool,
                children=req.children, complete=req.complete,
            )
        )

    def _timeline(self, tid: int, a: int, b: int) -> "Timeline":
        t = self.threads.get(tid)
        out: list[_Segment] = []
        if t is not None:
            for seg in reversed(t.segments):
                if seg.end_ns <= a:
                    break
                if seg.start_ns < b:
                    out.append(seg)
            out.reverse()
        return Timeline(tid, tuple(out))

    def take_spans(self) -> tuple[list[Span], dict[int, "Timeline"]]:
        """Spans finished since the last call (live use: the correlator keeps none)."""
        spans, self.spans = self.spans, []
        timelines, self.timelines = self.timelines, {}
        for s in spans:
            for n in s.nodes:
                n.node, n.driver = self._name(n.bs)
        if self.pending_pool and self.last_ts - self.pending_pool[0].hop.submit_ns > TIMELINE_HORIZON_NS:
            # pool work whose syscall was never seen (e.g. linux-aio): stop looking for it
            self.pending_pool = [p for p in self.pending_pool if self.last_ts - p.hop.submit_ns <= TIMELINE_HORIZON_NS]
        return spans, timelines

    def _node_io(self, ev: Event) -> None:
        bs, offset, nbytes, _op = ev.args
        t = self.thread(ev.tid)
        req = self.co_req.get(t.current)
        name, driver = self._name(bs)
        self.co_node[t.current] = bs
        if req is not None:
            req.nodes.append(NodeVisit(name, driver, bs, offset, nbytes, ev.ts_ns, t.current))

    def _node_name(self, ev: Event) -> None:
        self.node_names[ev.args[0]] = (str(ev.args[1]), str(ev.args[2]))

    def _req_ack(self, ev: Event) -> None:
        req = self.co_req.get(self.thread(ev.tid).current)
        if req is not None and req.ack_ns is None:
            req.ack_ns = ev.ts_ns

    # -- thread pool ----------------------------------------------------------

    def _pool_submit(self, ev: Event) -> None:
        t = self.thread(ev.tid)
        req = self.co_req.get(t.current)
        if req is None:
            return
        hop = PoolHop(t.current, ev.ts_ns, None, None, None, None)
        req.pool.append(hop)
        visits = [n for n in req.nodes if n.co == t.current]
        offset = visits[-1].offset if visits else None
        self.pending_pool.append(_PendingPool(req, hop, offset, req.op))

    def _sys_io(self, ev: Event) -> None:
        if ev.tid in self.not_workers:
            return
        _fd, pos, _nbytes, op = ev.args
        match = None
        for i, p in enumerate(self.pending_pool):
            if p.op == op and (op == 3 or p.offset == pos):
                match = i
                break
        if match is None:
            self.stats["unmatched_io"] += 1
            return
        p = self.pending_pool.pop(match)
        t = self.thread(ev.tid)
        p.hop.worker_tid = ev.tid
        p.hop.io_start_ns = ev.ts_ns
        t.io, t.io_req = p.hop, p.req

    def _sys_io_done(self, ev: Event) -> None:
        t = self.thread(ev.tid)
        hop, req = t.io, t.io_req
        if hop is None or req is None:
            return
        t.io = t.io_req = None
        hop.io_done_ns = ev.ts_ns

    # -- driver events (profiles) ----------------------------------------------

    def _root_req(self, ev: Event) -> _Req | None:
        co = self.thread(ev.tid).current
        req = self.co_req.get(co)
        return req if req is not None and req.co == co else None

    def _drv_enter(self, ev: Event) -> None:
        req = self._root_req(ev)
        if req is not None and req.wait is None:
            req.phase(req.run_name, ev.ts_ns)
            req.run_name = self.roles["driver"]

    def _drv_ack(self, ev: Event) -> None:
        req = self._root_req(ev)
        if req is not None and req.wait is None:
            req.phase(req.run_name, ev.ts_ns)
            req.run_name = "ack"

    def _drv_hop(self, ev: Event) -> None:
        # The hop's phase starts when the work is handed over, not at the yield: the
        # driver's remaining work until it yields runs in parallel with the hop.
        req = self._root_req(ev)
        if req is not None and req.wait is None:
            req.phase(req.run_name, ev.ts_ns)
            req.hop_pending = True
            req.hop_done_ns = None

    def _drv_hop_done(self, ev: Event) -> None:
        self._touched.add(ev.args[3])
        req = self.co_req.get(ev.args[3])
        if req is None or req.co != ev.args[3]:
            return
        req.last_hop_done_ns = ev.ts_ns
        if req.wait is not None and req.wait.hop:
            req.wait.hop_done_ns = ev.ts_ns
        elif req.hop_pending:
            req.hop_done_ns = ev.ts_ns  # done before the coroutine even yielded

    def _drv_spawn(self, ev: Event) -> None:
        req = self.co_req.get(self.thread(ev.tid).current)
        if req is not None:
            self._link_child(req, ev.args[2], self.roles["spawn"], ev.args[0], ev.args[1], ev.ts_ns)

    def _drv_spawn_done(self, ev: Event) -> None:
        child = self.children.get(self.thread(ev.tid).current)
        if child is not None:
            child.end_ns = ev.ts_ns

    # -- scheduler ------------------------------------------------------------

    def _sched_switch(self, ev: Event) -> None:
        prev, nxt, prev_state = ev.args[0], ev.args[1], ev.args[2]
        if prev in self.watched:
            t = self.thread(prev)
            self._mark(t, ev.ts_ns)
            # TASK_RUNNING (0) or only the preemption marker bit: still runnable
            t.cpu = "asleep" if prev_state & 0x7F else "runnable"
        if nxt in self.watched:
            t = self.thread(nxt)
            self._mark(t, ev.ts_ns)
            t.cpu = "on"

    def _sched_wakeup(self, ev: Event) -> None:
        t = self.thread(ev.args[0])
        if t.watched and t.cpu == "asleep":
            self._mark(t, ev.ts_ns)
            t.cpu = "runnable"

    def finish(self) -> Result:
        unfinished = {id(r): r for r in self.co_req.values() if r.co}
        pending = [t.pending_submit for t in self.threads.values() if t.pending_submit]
        stats = dict(self.stats, events=self._events, spans=len(self.spans), unfinished=len(unfinished) + len(pending))
        # node.name is printed by the probe after node.io of the same call: name nodes at the end.
        for s in self.spans:
            for n in s.nodes:
                n.node, n.driver = self._name(n.bs)
        spans = sorted(self.spans, key=lambda s: (s.start_ns, s.id))
        return Result(spans, stats)


def in_time_order(events: Iterable[Event | Lost]) -> list[Event | Lost]:
    """bpftrace reads per-CPU buffers, so lines from different CPUs interleave: sort by timestamp."""
    return sorted(events, key=lambda e: e.ts_ns if isinstance(e, Event) else e.after_ts_ns)


def correlate(events: Iterable[Event | Lost], header: dict) -> Result:
    """All spans of a finished event stream."""
    c = Correlator(header)
    for ev in in_time_order(events):
        c.add(ev)
    return c.finish()
