"""The Correlator: what each event means for the requests, coroutines and threads in flight.

How a request is followed is told in the package's docstring (qspan/correlate/__init__.py).
Here coroutine, request and driver-profile events are bound to the request they
concern; thread-level events (scheduler, pool workers, guest kicks) are handled in
threads.py, mixed in. The rules that cut one request's time into phases are in
request.py, thread timelines in timeline.py, thread-pool matching in pool.py and
loss sweeping in sweep.py.
"""

from __future__ import annotations

from qspan.correlate.config import CorrelatorConfig
from qspan.correlate.coroutines import CoroutineEvents
from qspan.correlate.pool import ThreadPool
from qspan.correlate.selfcost import CostLog, hit_increment
from qspan.correlate.request import _Req
from qspan.correlate.sweep import LossSweep
from qspan.correlate.threads import GuestKicks, _Thread
from qspan.correlate.timeline import Timeline
from qspan.model.events import Event, Lost
from qspan.model.spans import Child, NodeVisit, Result, Span


class Correlator(CoroutineEvents):
    """Feed events in timestamp order with add(); take spans with finish()."""

    def __init__(self, header: dict, capture_timeline: bool = False):
        # capture_timeline: keep, per span, its thread's timeline around it (the dashboard's view)
        self.capture_timeline = capture_timeline
        self.timelines: dict[int, Timeline] = {}
        self.config = CorrelatorConfig.from_header(header)
        self.watched = set(self.config.watched)  # asked for every scheduler event; grows (ThreadEvents._watch)
        self.roles = self.config.roles
        # what each calibrated event adds to its thread's running cost (selfcost.py); empty: no calibration
        self._hit_increment = {ev: hit_increment(ns, ev in self.config.tracepoints)
                               for ev, ns in self.config.event_cost_ns.items()}
        self._forget_flow()
        self.node_names: dict[int, tuple[str, str]] = {}
        self.job_names: dict[int, str] = {}  # Job pointer -> its QMP id (job.name)
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
            "co.switch": self._co_switch, "co.schedule": self._co_signal, "co.wake": self._co_signal,
            "req.submit": self._req_submit, "req.ack": self._req_ack, "req.acct": self._req_acct,
            "node.io": self._node_io, "node.name": self._node_name,
            "notify": self._notify, "kick.read": self._kick_read, "loop.poll": self._loop_poll,
            "sys.io": self._sys_io, "sys.io_done": self._sys_io_done,
            "sched.switch": self._sched_switch, "sched.wakeup": self._sched_wakeup,
            "drv.enter": self._drv_enter, "drv.hop": self._drv_hop, "drv.hop_done": self._drv_hop_done,
            "drv.ack": self._drv_ack, "drv.spawn": self._drv_spawn, "drv.spawn_done": self._drv_spawn_done,
            "job.start": self._job_start, "job.step": self._job_step, "job.name": self._job_name,
            "trace.window": self._window,
        }
        # handled while a sampling window is closed: the window itself, and names (printed once)
        self._always = {self.handlers["trace.window"], self.handlers["node.name"], self.handlers["job.name"]}
        # event -> (handler, what its probe hit adds to its thread's cost log, 0 if uncalibrated): one lookup
        self._dispatch = {ev: (h, self._hit_increment.get(ev, 0)) for ev, h in self.handlers.items()}

    def _forget_flow(self) -> None:
        """What the correlator knows of requests, coroutines and threads in flight (reset by sampling)."""
        self.kicks = GuestKicks(self.config.vcpus)
        self.children: dict[int, Child] = {}  # live child coroutine -> its record
        self.threads: dict[int, _Thread] = {}
        self.alive: set[int] = set()  # coroutines entered and not yet terminated
        self.running: dict[int, _Thread] = {}  # coroutine -> the thread whose stack it is on
        self.co_req: dict[int, _Req] = {}
        self.co_node: dict[int, int] = {}  # coroutine -> bs of the last node it entered
        self.co_job: dict[int, int] = {}  # coroutine -> the block job (Job pointer) it works for
        self.co_parent: dict[int, int] = {}  # coroutine -> the one that first entered it (not the event loop)
        self.job_starting: dict[int, int] = {}  # thread -> the job it is starting (job.start), until its coroutine
        self.pool = ThreadPool(self.config.not_workers)
        self.cost_logs: dict[int, CostLog] = {}  # thread -> its probe hits' running cost (selfcost.py)
        self.loss_sweep = LossSweep()

    # -- plumbing -------------------------------------------------------------

    def add(self, ev: Event | Lost) -> None:
        if isinstance(ev, Lost):
            self.stats["lost_events"] += ev.count
            self.loss_sweep.after_loss()
            # Anything in flight may have missed an event: say so on its span.
            for req in {id(r): r for r in self.co_req.values()}.values():
                req.complete = False
            for t in self.threads.values():
                if t.pending_submit:
                    t.pending_submit.complete = False
            return
        # The hot path (every event): locals, and CostLog.charge written out (bench/ingest.py).
        self._events += 1
        ts = self.last_ts = ev.ts_ns
        if ts >= self.loss_sweep.next_ns:
            self.stats["abandoned"] += self.loss_sweep.run(ts, self.co_req, self.alive, self.co_node, (self.co_job, self.co_parent), self.children,
                                                           self.threads.values(), self.running)
            self.pool.expire(ts)  # node visits no worker took are old
        entry = self._dispatch.get(ev.kind)
        if entry is None:
            return
        handler, increment = entry
        if self.sampling_off and handler not in self._always:
            return
        if increment:
            log = self.cost_logs.get(ev.tid)
            if log is None:
                log = self.cost_logs[ev.tid] = CostLog()
            sums = log.sums
            sums.append((sums[-1] if sums else log.base) + increment)
            log.ts.append(ts)
            if len(sums) > log.limit:
                log.trim(ts)
        handler(ev)

    def _window(self, ev: Event) -> None:
        """A sampling window opens or closes: what follows starts afresh, as at attach."""
        if ev.args[0] == 0:
            # a request is in flight until its own coroutine ends (children may outlive it)
            in_flight = sum(1 for co, r in self.co_req.items() if r.co == co)
            self.stats["sampled_out"] += in_flight + sum(1 for t in self.threads.values() if t.pending_submit)
        self._forget_flow()
        self.sampling_off = ev.args[0] == 0

    def _who(self, co: int) -> tuple[str, int | None, int]:
        """What coroutine co works for, for its thread's timeline: role, request id, node."""
        req = self.co_req.get(co)
        if req is None:
            job = self.job_of(co)
            return ("job:" + self.job_name(job) if job else ""), None, self.co_node.get(co, 0)
        if req.job:
            return "job:" + self.job_name(req.job), req.id, self.co_node.get(co, 0)
        role = "request" if req.co == co else self.children[co].role if co in self.children else "nested"
        return role, req.id, self.co_node.get(co, 0)

    def job_name(self, job: int) -> str:
        return self.job_names.get(job) or f"job@0x{job:x}"

    def _name(self, bs: int) -> tuple[str, str]:
        return self.node_names.get(bs, (f"0x{bs:x}", ""))

    # -- requests -------------------------------------------------------------

    def _req_submit(self, ev: Event) -> None:
        blk, offset, nbytes, op = ev.args
        t = self.thread(ev.tid)
        if t.pending_submit is not None:
            self.stats["unbound_submits"] += 1
        req = _Req(self.next_id, op, blk, offset, nbytes, ev.tid, ev.ts_ns)
        kick = self.kicks.take(ev.tid, ev.ts_ns)
        if kick is not None:
            req.kicked(kick)
        self.next_id += 1
        t.pending_submit = req

    def _node_io(self, ev: Event) -> None:
        bs, offset, nbytes, op = ev.args
        t = self._inside(ev)
        req = self.co_req.get(t.current)
        name, driver = self._name(bs)
        co = t.current
        self.co_node[co] = bs
        if req is None and self.job_of(co) is not None:
            req = self._job_request(t, co, op, bs, offset, nbytes, ev.ts_ns)
        if req is not None:
            req.nodes.append(NodeVisit(name, driver, bs, offset, nbytes, ev.ts_ns, co))
            self.pool.visit(req, co, offset, op, ev.ts_ns)

    def _node_name(self, ev: Event) -> None:
        self.node_names[ev.args[0]] = (str(ev.args[1]), str(ev.args[2]))

    def _job_name(self, ev: Event) -> None:
        self.job_names[ev.args[0]] = str(ev.args[1])

    def _req_ack(self, ev: Event) -> None:
        t = self.thread(ev.tid)
        req = self.co_req.get(t.current)
        if req is not None and not req.waited:
            # A request whose coroutine never yielded is acked from a bottom half once
            # blk_aio_prwv has returned, outside coroutines: what is on the stack has ended.
            # (The ack is no one's, as when the end was probed.)
            self._ended_above(t, 0, ev.ts_ns)
            return
        t.last_ns = ev.ts_ns
        if req is not None and req.ack_ns is None:
            req.ack_ns = ev.ts_ns

    def _req_acct(self, ev: Event) -> None:
        # block_acct_done runs in the request's completion, on its coroutine (virtio-blk after
        # the push, scsi-disk before it); the cookie's op and size must be the request's.
        req = self.co_req.get(self.thread(ev.tid).current)
        if req is not None and req.acct is None and ev.args[2] == req.op and ev.args[1] == req.bytes:
            req.acct = (ev.args[0], ev.ts_ns)

    # -- driver events (profiles) ----------------------------------------------

    def _root_req(self, ev: Event) -> _Req | None:
        co = self._inside(ev).current
        req = self.co_req.get(co)
        return req if req is not None and req.co == co else None

    def _drv_enter(self, ev: Event) -> None:
        req = self._root_req(ev)
        if req is not None:
            req.run_as(self.roles["driver"], ev.ts_ns)

    def _drv_ack(self, ev: Event) -> None:
        req = self._root_req(ev)
        if req is not None:
            req.run_as("ack", ev.ts_ns)

    def _drv_hop(self, ev: Event) -> None:
        req = self._root_req(ev)
        if req is not None:
            req.hop_handed(ev.ts_ns)

    def _drv_hop_done(self, ev: Event) -> None:
        co = ev.args[3]  # named by the hop's thread: the coroutine is not running
        self.loss_sweep.touched.add(co)
        req = self.co_req.get(co)
        if req is not None and req.co == co:
            req.hop_finished(ev.ts_ns)

    def _drv_spawn(self, ev: Event) -> None:
        req = self.co_req.get(self._inside(ev).current)
        if req is not None:
            self._link_child(req, ev.args[2], self.roles["spawn"], ev.args[0], ev.args[1], ev.ts_ns)

    def _drv_spawn_done(self, ev: Event) -> None:
        child = self.children.get(self._inside(ev).current)
        if child is not None:
            child.end_ns = ev.ts_ns

    # -- results --------------------------------------------------------------

    def _name_nodes(self, spans: list[Span]) -> None:
        # node.name is printed by the probe after node.io of the same call: nodes are named late.
        for s in spans:
            for n in s.nodes:
                n.node, n.driver = self._name(n.bs)

    def take_spans(self) -> tuple[list[Span], dict[int, Timeline]]:
        """Spans finished since the last call (live use: the correlator keeps none)."""
        spans, self.spans = self.spans, []
        timelines, self.timelines = self.timelines, {}
        self._name_nodes(spans)
        self.pool.expire(self.last_ts)
        return spans, timelines

    def counters(self, spans_taken: int = 0) -> dict:
        """A spans document's `stats`; `spans_taken`: spans already handed out by take_spans (live)."""
        unfinished = {id(r): r for r in self.co_req.values() if r.co}
        pending = [t.pending_submit for t in self.threads.values() if t.pending_submit]
        return dict(self.stats, events=self._events, spans=len(self.spans) + spans_taken,
                    unfinished=len(unfinished) + len(pending))

    def finish(self) -> Result:
        # The stream ends: a request acked whose coroutine still runs ended with the trace
        # (its end would show at the thread's next event, where the end is not probed).
        for t in self.threads.values():
            acked = [i for i, co in enumerate(t.stack)
                     if (r := self.co_req.get(co)) is not None and r.co == co and r.ack_ns is not None]
            if acked:
                self._ended_above(t, t.stack[acked[0] - 1] if acked[0] else 0, self.last_ts)
        stats = self.counters()
        self._name_nodes(self.spans)
        spans = sorted(self.spans, key=lambda s: (s.start_ns, s.id))
        return Result(spans, stats)
