"""The coroutines behind the requests: their switches, ends and wake-ups, and what they mean for a request.

A request's coroutine is followed through its thread's coroutine stack (the
package's docstring tells how). The Correlator's handlers of coroutine events
live here, mixed into it: switches (and the ends they imply where a
coroutine's end is not probed), wake-up signals, and the resume and finish of
a request's coroutine, which close its wait and its span.
"""

from __future__ import annotations

from collections.abc import Mapping

from qspan.correlate.config import CorrelatorConfig
from qspan.correlate.pool import ThreadPool
from qspan.correlate.request import _Req
from qspan.correlate.selfcost import CostLog, span_cost
from qspan.correlate.sweep import LossSweep
from qspan.correlate.threads import ThreadEvents, _Thread
from qspan.correlate.timeline import Timeline
from qspan.model.events import CO_ENTER, CO_TERMINATE, CO_YIELD, Event
from qspan.model.spans import INSTEAD_CATEGORIES, Child, Handoff, InsteadItem, Span


class CoroutineEvents(ThreadEvents):
    """The Correlator's handlers of coroutine events (its base class; the state is the Correlator's)."""

    # The Correlator's state that these handlers use, besides ThreadEvents' (see Correlator._forget_flow):
    config: CorrelatorConfig
    roles: Mapping[str, str]
    capture_timeline: bool
    timelines: dict[int, Timeline]
    spans: list[Span]
    alive: set[int]
    running: dict[int, _Thread]
    co_node: dict[int, int]
    children: dict[int, Child]
    co_job: dict[int, int]
    co_parent: dict[int, int]
    job_starting: dict[int, int]
    next_id: int
    loss_sweep: LossSweep
    cost_logs: dict[int, CostLog]
    _hit_increment: Mapping[str, int]

    def _name(self, bs: int) -> tuple[str, str]:
        """A node's name and driver (the Correlator's)."""
        raise NotImplementedError

    def job_name(self, job: int) -> str:
        """A block job's QMP id (the Correlator's)."""
        raise NotImplementedError

    def _co_switch(self, ev: Event) -> None:
        from_co, to_co, action = ev.args[0], ev.args[1], ev.args[2]
        touched = self.loss_sweep.touched
        touched.add(from_co)
        touched.add(to_co)
        ts = ev.ts_ns
        t = self.thread(ev.tid)
        stack = t.stack
        if stack and stack[-1] != from_co and (action == CO_ENTER or from_co in stack):
            # What ran above from_co has ended: where the switch is probed at its callers
            # (probes.txt) a coroutine's end is not probed, and an enter by the event loop
            # (from_co then on no stack) or by a coroutine lower down, or a yield from one,
            # is where it shows.
            self._ended_above(t, from_co, ts)
        if t.timeline is not None:
            t.timeline.mark(ts, stack[-1] if stack else 0)
        if action == CO_ENTER:
            if self.job_starting and ev.tid in self.job_starting:
                self.co_job[to_co] = self.job_starting.pop(ev.tid)  # job_start entered it (a main-loop job)
            elsewhere = self.running.get(to_co)
            if elsewhere is not None and to_co in elsewhere.stack:
                # Running on another thread as far as we know: it ended there unseen, and
                # QEMU's coroutine pool gave its memory to a new coroutine here.
                i = elsewhere.stack.index(to_co)
                self._ended_above(elsewhere, elsewhere.stack[i - 1] if i else 0, ts)
            if to_co not in self.alive:
                self.alive.add(to_co)
                if to_co not in self.co_req:  # not already linked by drv.spawn
                    self._bind_new(t, to_co, stack[-1] if stack else 0, ts)
            stack.append(to_co)
            self.running[to_co] = t
            req = self.co_req.get(to_co)
            if req is not None and req.co == to_co and req.wait is not None:
                self._resume(req, t, ts)
        elif stack and stack[-1] == from_co:
            stack.pop()
            self.running.pop(from_co, None)
            if action == CO_YIELD:
                req = self.co_req.get(from_co)
                if req is not None and req.co == from_co:
                    req.yielded(ts)
            else:
                self._terminated(from_co, ts)
        elif action == CO_TERMINATE:
            self._terminated(from_co, ts)  # never seen running (entered before the trace began)
        t.last_ns = ts

    def _ended_above(self, t: _Thread, co: int, ts: int) -> None:
        """Thread t runs co (0: no coroutine) at ts: the coroutines above it on its stack ended.

        When is not known: after the last event seen inside them and before ts. They are
        said to end at that last event, so a coroutine is charged only with time it was
        seen to run (the loop's work after it, up to ts, is not its own).
        """
        stack = t.stack
        keep = stack.index(co) + 1 if co and co in stack else 0
        end = min(t.last_ns, ts)
        if t.timeline is not None:
            # its segment closes there, or where the current one began (the thread was off its
            # CPU since: the segments already closed stay as they were)
            start = t.timeline.seg_start
            t.timeline.mark(max(end, start) if start is not None else end, stack[-1])
        while len(stack) > keep:
            ended = stack.pop()
            self.running.pop(ended, None)
            if keep:
                # Events after its unseen end went to it, its caller's node visit among them:
                # a coroutine that ends without yielding left no pool work of its own.
                self.pool.adopt(ended, stack[keep - 1])
            self._terminated(ended, end)

    def _terminated(self, co: int, ts: int) -> None:
        req = self.co_req.pop(co, None)
        if req is not None and req.co == co:
            self._finish(req, ts)
        child = self.children.pop(co, None)
        if child is not None and child.end_ns is None:
            child.end_ns = ts
        self.alive.discard(co)
        self.pool.forget(co)
        self.co_node.pop(co, None)
        self.co_job.pop(co, None)
        self.co_parent.pop(co, None)

    def _inside(self, ev: Event) -> _Thread:
        """The thread of an event that happens inside its running coroutine (its last sign of life)."""
        t = self.thread(ev.tid)
        t.last_ns = ev.ts_ns
        return t

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
        if parent:
            self.co_parent[co] = parent
            job = self.co_job.get(parent)
            if job is not None:
                self.co_job[co] = job  # a job's coroutine started it: mirror's chunk copies, backup's tasks

    def job_of(self, co: int) -> int | None:
        """The job coroutine co works for, if any: its own binding, or its nearest bound ancestor's
        (backup's block-copy coroutine starts before the job's loop first binds the job's coroutine,
        and its tasks after)."""
        job = self.co_job.get(co)
        c, depth = co, 0
        while job is None and depth < 8:
            c = self.co_parent.get(c, 0)
            if not c:
                return None
            job = self.co_job.get(c)
            depth += 1
        if job is not None:
            self.co_job[co] = job
        return job

    # -- block jobs -------------------------------------------------------------

    def _job_start(self, ev: Event) -> None:
        self.job_starting[ev.tid] = ev.args[0]

    def _job_step(self, ev: Event) -> None:
        """A job's coroutine is back in its loop (job.step): the chunk it was doing is done."""
        t = self._inside(ev)
        co = t.current
        if not co:
            return
        self.loss_sweep.touched.add(co)
        req = self.co_req.get(co)
        if req is not None and not req.job:
            return  # a guest request's coroutine doing the job's work (mirror's write-blocking mode)
        self.co_job[co] = ev.args[0]
        if req is not None and req.co == co:
            del self.co_req[co]
            self._finish(req, ev.ts_ns)

    def _job_request(self, t: _Thread, co: int, op: int, bs: int, offset: int, nbytes: int, ts: int) -> _Req:
        """A job's coroutine reaches a block node with no request open: its own request starts."""
        req = _Req(self.next_id, op, bs, offset, nbytes, t.tid, ts)
        self.next_id += 1
        req.job = self.co_job[co]
        req.co = co
        req.run_name = "run"
        self.co_req[co] = req
        return req

    def _link_child(self, req: _Req, co: int, role: str, offset: int | None, nbytes: int | None, ts: int) -> None:
        child = Child(co, role, offset, nbytes, ts, None)
        self.co_req[co] = req
        self.children[co] = child
        req.children.append(child)

    def _co_signal(self, ev: Event) -> None:
        co = ev.args[1] if ev.kind == "co.schedule" else ev.args[0]
        self.loss_sweep.touched.add(co)
        if self.job_starting and ev.tid in self.job_starting and ev.kind == "co.schedule":
            # job_start's next move: the job's new coroutine scheduled into its iothread (its memory
            # may be a pooled coroutine's whose end was not seen: bound whether "alive" or not)
            self.co_job[co] = self.job_starting.pop(ev.tid)
        req = self.co_req.get(co)
        if req is not None and req.co == co:
            req.signalled(ev.ts_ns, ev.kind, ev.tid, self.thread(ev.tid).current == co)

    def _resume(self, req: _Req, t: _Thread, ts: int) -> None:
        w = req.resumed(ts, self.roles["hop"])
        if w.ready_ns is not None:
            # Ready before it was resumed: it waited for thread t, which did something else instead.
            ready = min(max(w.ready_ns, w.yield_ns), ts)
            top: list[InsteadItem] = []
            if t.timeline is not None:
                instead, top = t.timeline.instead(ready, ts, lambda bs: self._name(bs)[0])
            else:
                # A thread whose scheduling is not traced: the wait is said to be unknown, not left
                # out (an iothread created after attach looked fully explained with nothing in it).
                instead = dict.fromkeys(INSTEAD_CATEGORIES, 0)
                instead["unwatched"] = ts - ready
            req.handoffs.append(
                Handoff(req.co, w.signal, w.from_tid, t.tid, ready, ts, ts - ready, w.from_tid != t.tid, instead, top)
            )

    def _finish(self, req: _Req, ts: int) -> None:
        span = req.ended(ts)
        if req.job:
            span.job = self.job_name(req.job)
        if self._hit_increment:
            span.qspan_ns, span.qspan_hits = span_cost(span, self.cost_logs, self.roles["hop"],
                                                       self._hit_increment.get("notify", 0))
        if not req.complete:
            self.stats["incomplete"] += 1
        if self.capture_timeline:
            t = self.threads.get(req.tid)
            timeline = t.timeline if t is not None else None
            self.timelines[req.id] = (timeline.around(span.start_ns, ts) if timeline is not None
                                      else Timeline(req.tid, ()))
        self.spans.append(span)
