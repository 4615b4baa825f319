"""Thread-pool matching: which worker's syscall did the work a request handed to QEMU's pool.

A request's coroutine submits work (`pool.submit`) and yields; some worker
thread later does the pread/pwrite/fsync (`sys.io`, then `sys.io_done`). The
probes give no id that links the two, so a worker's syscall is matched to the
oldest pending submission of the same operation at the same file offset (the
offset of the node the coroutine last entered; any fsync matches any flush).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from qspan.model.spans import PoolHop

if TYPE_CHECKING:
    from qspan.correlate.request import _Req

OP_FLUSH = 3  # an fsync carries no offset: it matches the oldest pending flush
# Pool work whose syscall is never seen (e.g. linux-aio, which the pool does not do)
# would be matched against for ever: it is given up after this long.
PENDING_KEEP_NS = 2_000_000_000


@dataclass(slots=True)
class _PendingPool:
    hop: PoolHop
    offset: int | None
    op: int


class ThreadPool:
    """Submissions waiting for a worker, and the syscall each worker is in."""

    def __init__(self, not_workers: frozenset[int]):
        # Threads that are not pool workers (the main loop, a driver's own threads)
        # may do pread/pwrite too: their syscalls are never matched.
        self.not_workers = not_workers
        self.pending: list[_PendingPool] = []
        self.in_progress: dict[int, PoolHop] = {}  # worker tid -> the hop whose syscall it is in

    def submit(self, req: _Req, co: int, ts: int) -> None:
        """Coroutine co of req handed work to the pool at ts."""
        hop = PoolHop(co, ts, None, None, None, None)
        req.pool.append(hop)
        visits = [n for n in req.nodes if n.co == co]
        offset = visits[-1].offset if visits else None
        self.pending.append(_PendingPool(hop, offset, req.op))

    def io_start(self, tid: int, ts: int, pos: int, op: int) -> bool:
        """Thread tid starts a syscall; False when it is a worker's and no submission matches it."""
        if tid in self.not_workers:
            return True
        for i, p in enumerate(self.pending):
            if p.op == op and (op == OP_FLUSH or p.offset == pos):
                break
        else:
            return False
        hop = self.pending.pop(i).hop
        hop.worker_tid = tid
        hop.io_start_ns = ts
        self.in_progress[tid] = hop
        return True

    def io_done(self, tid: int, ts: int) -> None:
        hop = self.in_progress.pop(tid, None)
        if hop is not None:
            hop.io_done_ns = ts

    def expire(self, now_ns: int) -> None:
        """Stop looking for the workers of submissions older than PENDING_KEEP_NS."""
        if self.pending and now_ns - self.pending[0].hop.submit_ns > PENDING_KEEP_NS:
            self.pending = [p for p in self.pending if now_ns - p.hop.submit_ns <= PENDING_KEEP_NS]
