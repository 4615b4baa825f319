"""The threads around the requests: their records, and what they do outside coroutines.

Each thread's record holds its coroutine stack, a request it submitted whose
coroutine is not entered yet, and its timeline if its scheduling is watched.
The Correlator's handlers for thread-level events live here, mixed into it:
the scheduler switching a watched thread (its timeline), pool workers'
syscalls (matched in pool.py), and vCPUs kicking the guest's queues, which
an event loop then reads (GuestKicks).
"""

from __future__ import annotations

from qspan.correlate.pool import ThreadPool
from qspan.correlate.request import _Req
from qspan.correlate.timeline import ThreadTimeline
from qspan.model.events import Event


class _Thread:
    """What one thread is doing: its coroutine stack and, if watched, its timeline."""

    __slots__ = ("tid", "timeline", "stack", "pending_submit", "last_ns")

    def __init__(self, tid: int, timeline: ThreadTimeline | None):
        self.tid = tid
        self.timeline = timeline  # None: the thread's scheduling is not traced
        self.stack: list[int] = []
        self.pending_submit: _Req | None = None  # submitted, its coroutine not entered yet
        self.last_ns = 0  # the last event seen inside the coroutine on top of the stack

    @property
    def current(self) -> int:
        return self.stack[-1] if self.stack else 0


class GuestKicks:
    """Guest kicks not yet charged to a request.

    A vCPU setting an EventNotifier may be a guest kick (TCG's ioeventfd path); it is one
    when an event loop then reads that notifier as a virtqueue's host notifier, and the
    first request that thread submits after the read waited for it since the kick.

    Which kick: the latest one on that notifier before the submission (one landing between
    the read and the submission included), not the earliest unread one. The guest makes a request visible in the ring before its kick lands, so an
    event loop already in the queue's handler may take the request first; the kick then
    arrives stale, a few microseconds after the submission it was for, and stays unread until
    some later request comes. Charged to that request it started the span up to hundreds of
    microseconds before the guest had even issued it (a recorded case: kick 2.0 us after
    the previous submission, read 142 us later, span 19 us longer than the guest's own
    latency). With virtio's event index the guest kicks again for any request it adds after
    the handler ran, so the latest kick is the one that request waited on.

    A kick read while the ring held nothing new was stale: its request was taken before it
    landed, and what the loop's polling finds next is a request the guest added after the kick,
    maybe with no kick of its own (a recorded case on QEMU 10.0: the read, a handler run that
    found nothing, 34 us of polling, a submission; charged the stale kick, the span was 37 us
    longer than the guest's own latency). kick.read says how many requests the ring held
    (ARG1, 1 + the count; 0 where qspan cannot read the ring): an empty ring's kick is dropped.
    """

    __slots__ = ("vcpus", "latest", "read_by", "last_submit_ns")

    def __init__(self, vcpus: frozenset[int]):
        self.vcpus = vcpus
        self.latest: dict[int, int] = {}  # notifier -> its latest vCPU kick no event loop has read yet
        self.read_by: dict[int, list[int]] = {}  # thread -> [notifier, kick] it read, no request has taken
        self.last_submit_ns: dict[int, int] = {}  # thread -> its last req.submit

    def notify(self, tid: int, notifier: int, ts: int) -> None:
        if tid not in self.vcpus:
            return
        self.latest[notifier] = ts
        for pending in self.read_by.values():
            if pending[0] == notifier:
                pending[1] = ts  # a kick landing between the read and the submission: that request's own

    def read(self, tid: int, notifier: int, ring: int) -> None:
        # Only the first request submitted after the read gets the kick phase: requests that came
        # without a kick of their own (batched, or picked up by polling) are under- rather than
        # over-reported. The read takes the kick: a later read finds a new one or none.
        # ring: 1 + the requests the ring held at the read, 0 if unknown; 1: a stale kick.
        kick = self.latest.pop(notifier, None)
        if kick is not None and ring != 1:
            self.read_by[tid] = [notifier, kick]

    def polled(self, tid: int) -> None:
        # Back to polling: the handler run that read a kick is over. A kick no request took
        # (a spurious one) must not be charged to whatever request comes next, maybe much later.
        self.read_by.pop(tid, None)

    def take(self, tid: int, ts: int) -> int | None:
        """Thread tid submits a request at ts: the kick it has waited for since, if any."""
        previous = self.last_submit_ns.get(tid, 0)
        self.last_submit_ns[tid] = ts
        pending = self.read_by.pop(tid, None)
        if pending is None:
            return None
        kick = pending[1]
        # A kick older than the thread's previous submission was already served (by polling,
        # or by the handler run that took that one).
        return kick if previous <= kick <= ts else None


class ThreadEvents:
    """The Correlator's handlers of thread-level events (the base of its chain of handler
    classes, ThreadEvents <- CoroutineEvents <- Correlator; the state is the Correlator's).

    One chain, not mixins: a class compiled by mypyc (qspan/compiled.py) may
    have one base only. What a later class of the chain provides is declared here as a
    method that it overrides."""

    # The Correlator's state that these handlers use (see Correlator._forget_flow):
    watched: set[int]
    threads: dict[int, _Thread]
    co_req: dict[int, _Req]
    kicks: GuestKicks
    pool: ThreadPool
    stats: dict[str, int]

    def _who(self, co: int) -> tuple[str, int | None, int]:
        """What a coroutine works for, asked by the thread's timeline (the Correlator's)."""
        raise NotImplementedError

    def _ended_above(self, t: _Thread, co: int, ts: int) -> None:
        """The coroutines above co on t's stack ended (CoroutineEvents')."""
        raise NotImplementedError

    def thread(self, tid: int) -> _Thread:
        t = self.threads.get(tid)
        if t is None:
            timeline = ThreadTimeline(tid, self._who) if tid in self.watched else None
            t = self.threads[tid] = _Thread(tid, timeline)
        return t

    # -- guest kicks ----------------------------------------------------------

    def _notify(self, ev: Event) -> None:
        self.kicks.notify(ev.tid, ev.args[0], ev.ts_ns)

    def _kick_read(self, ev: Event) -> None:
        self._in_event_loop(ev)
        self.kicks.read(ev.tid, ev.args[0], ev.args[1])

    def _loop_poll(self, ev: Event) -> None:
        if ev.tid not in self.watched:
            self._watch(ev.tid)  # only watched threads' polls pass the probe's filter
        self._in_event_loop(ev)
        self.kicks.polled(ev.tid)

    def _watch(self, tid: int) -> None:
        """tid's scheduling is traced from here on: an iothread qspan began to watch after attach
        (transport/follow.py adds it to the program's map of watched threads). Its loop.poll and
        sched.wakeup events pass only that map's filter, so the first of them says so, in stream
        order; its timeline starts there."""
        self.watched.add(tid)
        t = self.threads.get(tid)
        if t is not None and t.timeline is None:
            t.timeline = ThreadTimeline(tid, self._who)

    def _in_event_loop(self, ev: Event) -> None:
        # Only the event loop reads a host notifier or polls, never a coroutine: any coroutine
        # still on the thread's stack has ended (unprobed: see Correlator._co_switch).
        t = self.threads.get(ev.tid)
        if t is not None and t.stack:
            self._ended_above(t, 0, ev.ts_ns)

    # -- thread pool ----------------------------------------------------------

    def _sys_io(self, ev: Event) -> None:
        _fd, pos, _nbytes, op = ev.args
        if not self.pool.io_start(ev.tid, ev.ts_ns, pos, op):
            self.stats["unmatched_io"] += 1

    def _sys_io_done(self, ev: Event) -> None:
        self.pool.io_done(ev.tid, ev.ts_ns)

    # -- scheduler ------------------------------------------------------------

    def _sched_switch(self, ev: Event) -> None:
        # The hot path with co.switch: half of a stock stream's events (hence no t.current here).
        prev, nxt, prev_state = ev.args[0], ev.args[1], ev.args[2]
        watched = self.watched
        if prev in watched:
            t = self.thread(prev)
            stack = t.stack
            timeline = t.timeline
            assert timeline is not None  # thread() gives every watched thread one
            # TASK_RUNNING (0) or only the preemption marker bit: still runnable
            timeline.mark(ev.ts_ns, stack[-1] if stack else 0, "asleep" if prev_state & 0x7F else "runnable")
        if nxt in watched:
            t = self.thread(nxt)
            stack = t.stack
            timeline = t.timeline
            assert timeline is not None
            timeline.mark(ev.ts_ns, stack[-1] if stack else 0, "on")

    def _sched_wakeup(self, ev: Event) -> None:
        if ev.args[0] not in self.watched:
            self._watch(ev.args[0])  # only a watched thread's wake-ups pass the probe's filter
        t = self.thread(ev.args[0])
        if t.timeline is not None:
            t.timeline.woken(ev.ts_ns)
