"""Thread-pool matching: which worker's syscall did the work a request handed to QEMU's pool.

A request's coroutine enters a block node (`node.io`), the node's driver hands
the work to the pool and the coroutine yields; some worker thread later does
the pread/pwrite/fsync (`sys.io`, then `sys.io_done`). Nothing is probed at the
handover itself (thread_pool_submit_aio was one uprobe hit on the iothread per
request, for a timestamp no phase needs): a coroutine's latest node visit is a
candidate, and a worker's syscall is matched to the oldest candidate of the same
operation at the same file offset (any fsync matches any flush). The probes give
no id that links the two; the offset of the node the coroutine last entered is
what the syscall carries (a format node's child, the file node, gets the host
offset).
"""

from __future__ import annotations

from dataclasses import dataclass

from qspan.correlate.request import _Req
from qspan.model.spans import PoolHop

OP_FLUSH = 3  # an fsync carries no offset: it matches the oldest pending flush
# A node visit whose work never reaches a worker (linux-aio, io_uring, a cache hit) would be
# matched against for ever: it is given up after this long (and when its coroutine ends).
PENDING_KEEP_NS = 2_000_000_000


@dataclass(slots=True, init=False)
class _Candidate:
    req: _Req
    co: int
    offset: int
    op: int
    visit_ns: int

    def __init__(self, req: _Req, co: int, offset: int, op: int, visit_ns: int) -> None:
        self.req = req
        self.co = co
        self.offset = offset
        self.op = op
        self.visit_ns = visit_ns


class ThreadPool:
    """Node visits a worker's syscall may be the work of, and the syscall each worker is in."""

    def __init__(self, not_workers: frozenset[int]):
        # Threads that are not pool workers (the main loop, a driver's own threads)
        # may do pread/pwrite too: their syscalls are never matched.
        self.not_workers = not_workers
        # coroutine -> its latest node visit no syscall has matched; in visit order (oldest first)
        self.candidates: dict[int, _Candidate] = {}
        self.in_progress: dict[int, PoolHop] = {}  # worker tid -> the hop whose syscall it is in

    def visit(self, req: _Req, co: int, offset: int, op: int, ts: int) -> None:
        """Coroutine co of req entered a node at ts: a worker's syscall at offset may be its work."""
        cands = self.candidates
        cands.pop(co, None)  # re-inserted: the dict's order stays the visits' order
        cands[co] = _Candidate(req, co, offset, op, ts)

    def adopt(self, ended: int, caller: int) -> None:
        """Coroutine `ended` ended unseen and its latest node visit was `caller`'s (see Correlator._ended_above)."""
        c = self.candidates.pop(ended, None)
        if c is not None:
            c.co = caller
            self.candidates.pop(caller, None)
            self.candidates[caller] = c

    def forget(self, co: int) -> None:
        """Coroutine co ended: its last visit's work is done or was never the pool's."""
        self.candidates.pop(co, None)

    def io_start(self, tid: int, ts: int, pos: int, op: int) -> bool:
        """Thread tid starts a syscall; False when it is a worker's and no node visit matches it."""
        if tid in self.not_workers:
            return True
        for c in self.candidates.values():
            if c.op == op and (op == OP_FLUSH or c.offset == pos):
                break
        else:
            return False
        del self.candidates[c.co]
        # submit_ns: the visit of the node whose driver handed the work over (see the module's docstring)
        hop = PoolHop(c.co, c.visit_ns, tid, ts, None, None)
        c.req.pool_started(hop)
        self.in_progress[tid] = hop
        return True

    def io_done(self, tid: int, ts: int) -> None:
        hop = self.in_progress.pop(tid, None)
        if hop is not None:
            hop.io_done_ns = ts

    def expire(self, now_ns: int) -> None:
        """Stop looking for the workers of node visits older than PENDING_KEEP_NS."""
        cands = self.candidates
        if cands and now_ns - next(iter(cands.values())).visit_ns > PENDING_KEEP_NS:
            self.candidates = {co: c for co, c in cands.items() if now_ns - c.visit_ns <= PENDING_KEEP_NS}
