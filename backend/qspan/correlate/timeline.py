"""Per-thread time accounting: what a watched thread was doing, from moment to moment.

A watched thread's recent past is a run of contiguous segments: a coroutine ran
(co), the event loop ran outside coroutines (loop), the thread was off-CPU
sleeping (asleep) or waiting for a CPU (runnable). The correlator tells each
thread's ThreadTimeline when its state is about to change and asks it two
questions; nothing else in the correlator sees the segments, so replacing the
accounting means replacing this module:

* `mark(ts, co, cpu=None)`: the thread's state changes at ts (a coroutine
  switch, or the scheduler's, then cpu is its new CPU state); co is the
  coroutine that ran until then (0: the event loop). `woken(ts)`: a wakeup.
* `instead(a, b, node_name)`: what ran between a and b while a request waited
  for this thread (a handoff), by category and the coroutines that took most.
* `around(a, b)`: the segments overlapping a span, for the dashboard.

Segments older than TIMELINE_HORIZON_NS are dropped as new ones close.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from qspan.model.spans import INSTEAD_CATEGORIES, InsteadItem

# Timeline segments older than this are dropped; a handoff longer than this is
# attributed only over its last TIMELINE_HORIZON_NS.
TIMELINE_HORIZON_NS = 2_000_000_000
INSTEAD_TOP = 5

# co -> (role, request id, node): "request" for a request's own coroutine, the spawn
# role or "nested" for its children, "job:ID" for a block job's coroutines (its requests'
# among them), "" when bound to no request or job; node is the bs of the last node the
# coroutine entered, 0 if none.
Who = Callable[[int], tuple[str, int | None, int]]


@dataclass(slots=True, init=False)  # init: see qspan/model/spans.py (the compiled build)
class _Segment:
    start_ns: int
    end_ns: int
    kind: str  # co, loop, asleep, runnable
    co: int
    role: str  # request, spawned role, or "" (unbound)
    request: int | None
    node: int  # bs of the last node the coroutine entered, 0 if none

    def __init__(self, start_ns: int, end_ns: int, kind: str, co: int, role: str, request: int | None,
                 node: int) -> None:
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.kind = kind
        self.co = co
        self.role = role
        self.request = request
        self.node = node


@dataclass(slots=True, init=False)
class Timeline:
    """A watched thread's timeline around one span.

    Kept as the correlator's own (never mutated) segments and made into dicts
    only when someone asks: the live server keeps hundreds, and shows a few.
    (Not a frozen dataclass, whose __init__ sets fields through object.__setattr__:
    one is made per span on the live path.)
    """

    tid: int
    segments: tuple[_Segment, ...]

    def __init__(self, tid: int, segments: tuple[_Segment, ...]) -> None:
        self.tid = tid
        self.segments = segments

    def dicts(self) -> list[dict]:
        return [{"tid": self.tid, "start_ns": seg.start_ns, "dur_ns": seg.end_ns - seg.start_ns, "kind": seg.kind,
                 "co": seg.co, "request": seg.request, "role": seg.role, "node": seg.node} for seg in self.segments]


class ThreadTimeline:
    """One watched thread's recent segments and its CPU state."""

    __slots__ = ("tid", "who", "cpu", "seg_start", "segments", "since")

    def __init__(self, tid: int, who: Who):
        self.tid = tid
        # Asked only when a coroutine's segment closes: what that coroutine was working for then.
        self.who = who
        self.cpu = "on"  # on, asleep, runnable
        self.seg_start: int | None = None  # None until the thread's first state change is seen
        self.segments: deque[_Segment] = deque()
        # When the segments begin: a thread watched from a request's submission on (the "submit"
        # filter) has none before; a wait that began earlier is partly unknown, not explained.
        self.since: int | None = None

    def mark(self, ts: int, co: int, cpu: str | None = None) -> None:
        """The thread's state changes at ts: close the current segment.

        co is the coroutine that ran until ts (0: the event loop); cpu is the thread's
        CPU state from ts on when the scheduler changes it (on, asleep, runnable).
        The hot path: called for every coroutine switch and scheduler event of the thread.
        """
        start = self.seg_start
        if start is not None and ts > start:
            segs = self.segments
            if self.cpu == "on":
                if co:
                    role, request, node = self.who(co)
                    segs.append(_Segment(start, ts, "co", co, role, request, node))
                else:
                    segs.append(_Segment(start, ts, "loop", 0, "", None, 0))
            else:
                segs.append(_Segment(start, ts, self.cpu, 0, "", None, 0))
            if segs[0].end_ns < ts - TIMELINE_HORIZON_NS:
                horizon = ts - TIMELINE_HORIZON_NS
                while segs and segs[0].end_ns < horizon:
                    segs.popleft()
        elif start is None:
            self.since = ts
        self.seg_start = ts
        if cpu is not None:
            self.cpu = cpu

    def woken(self, ts: int) -> None:
        """A wakeup makes a sleeping thread runnable; it runs once it is switched in."""
        if self.cpu == "asleep":
            self.mark(ts, 0, "runnable")  # off-CPU: no coroutine's segment closes

    def instead(self, a: int, b: int, node_name: Callable[[int], str]) -> tuple[dict[str, int], list[InsteadItem]]:
        """What the thread did between a and b, while a request waited for it."""
        cats = dict.fromkeys(INSTEAD_CATEGORIES, 0)
        since = self.since
        if since is None or since > a:
            cats["unwatched"] = (b if since is None or since > b else since) - a
        by_co: dict[int, InsteadItem] = {}
        for seg in reversed(self.segments):
            end = seg.end_ns
            if end <= a:
                break
            start = seg.start_ns
            dur = (end if end < b else b) - (start if start > a else a)
            if dur <= 0:
                continue
            kind = seg.kind
            if kind == "co":
                role = seg.role
                cat = ("block_job" if role[:4] == "job:" else "background" if seg.request is None
                       else "other_requests" if role == "request" else "spawned")
                item = by_co.get(seg.co)
                if item is None:
                    node = node_name(seg.node) if seg.node else None
                    item = by_co[seg.co] = InsteadItem(seg.co, seg.request, seg.role, node, 0)
                item.dur_ns += dur
            else:
                cat = "event_loop" if kind == "loop" else kind
            cats[cat] += dur
        top = sorted(by_co.values(), key=lambda i: (-i.dur_ns, i.co))[:INSTEAD_TOP]
        return cats, top

    def around(self, a: int, b: int) -> Timeline:
        """The segments overlapping [a, b), oldest first."""
        out: list[_Segment] = []
        for seg in reversed(self.segments):
            if seg.end_ns <= a:
                break
            if seg.start_ns < b:
                out.append(seg)
        out.reverse()
        return Timeline(self.tid, tuple(out))
