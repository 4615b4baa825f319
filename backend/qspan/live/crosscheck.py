"""The live cross-check against QEMU's own latency histograms: `qspan crosscheck` for an attached session.

Started on a session traced with QEMU's accounting (`qemu_accounting`), it sets QEMU's
histograms (clearing them), then keeps, as the feed correlates them, QEMU's end reads
(AcctEnds) and every span whose accounting ended since. A report reads QEMU's bins and
compares (output/crosscheck.py). The feed calls `events` and `spans` under the session's
lock; the server calls `report` under it too.
"""

from __future__ import annotations

import time

from qspan.errors import CrossCheckError
from qspan.model.spans import span_dict
from qspan.output import crosscheck
from qspan.target import Target
from qspan.target.histograms import QemuHistograms

MAX_SPANS = 200_000  # ~3 min at the lab's full rate; the check says when it stopped keeping


class LiveCrossCheck:
    def __init__(self, target: Target, boundaries_ns: list[int]):
        self.boundaries_ns = boundaries_ns
        self.histograms = QemuHistograms(target, boundaries_ns)
        self.ends = crosscheck.AcctEnds()
        self.kept: list[dict] = []
        self.dropped = 0
        self.started_at = time.time()
        self.processed_ns = 0  # the newest event the feed has correlated

    def start(self) -> str | None:
        """Set QEMU's histograms; an error message when QMP refused (the check is then over)."""
        self.histograms.start()
        return self.histograms.error

    def events(self, recs: list) -> None:
        for rec in recs:
            if getattr(rec, "kind", None) == "req.acct":
                self.ends.add(rec)
        if recs:
            self.processed_ns = max(self.processed_ns, recs[-1].ts_ns)

    def spans(self, spans: list) -> None:
        start = self.histograms.start_ns
        for s in spans:
            if s.acct_end_ns is None or start is None or s.acct_end_ns <= start:
                continue
            if len(self.kept) >= MAX_SPANS:
                self.dropped += 1
                continue
            self.kept.append(span_dict(s))

    def report(self) -> dict:
        """QEMU's bins as of the last read_qemu(), against the spans kept."""
        h = self.histograms
        if h.error:
            return {"error": h.error}
        if h.read_at is None or h.start_ns is None:
            return {"error": "QEMU's histograms have not been read yet"}
        rep = crosscheck.compare(h.bins, h.node_device, self.boundaries_ns, self.kept, (h.start_ns, h.read_at[0]),
                                 self.ends.ends)
        rep["running_s"] = (h.read_at[0] - h.start_ns) / 1e9
        rep["spans_not_kept"] = self.dropped
        return rep

    def read_qemu(self) -> None:
        """Read QEMU's bins now (QMP: outside the session's lock)."""
        self.histograms.read()


def start(session, boundaries_ns: list[int]) -> None:
    """Set QEMU's latency histograms and compare them with `session`'s spans from now on (CrossCheckError)."""
    if not session.accounting:
        raise CrossCheckError(f"session {session.id} was attached without qemu_accounting: its spans do not "
                              "carry QEMU's interval (attach again with it)")
    if session.state != "attached" or session.target is None or session.feed is None:
        raise CrossCheckError(f"session {session.id} is {session.state}, not attached")
    if not session.accounting_traced:
        raise CrossCheckError(f"QEMU PID {session.pid} does not export block_acct_done: its accounting cannot be traced")
    if not session.target.monitor:
        raise CrossCheckError(f"QEMU PID {session.pid} has no QMP socket and was not started by libvirt: "
                              "qspan cannot turn on its latency histograms")
    check = LiveCrossCheck(session.target, boundaries_ns)
    error = check.start()  # QMP: outside the session's lock
    if error:
        raise CrossCheckError(error)
    with session.locked():
        session.feed.crosscheck = check


def report(session, settle_s: float = 3.0) -> dict:
    """QEMU's bins read now, against the spans whose accounting ended since the check started.

    Waits (up to `settle_s`) for the feed to correlate past the moment QEMU was read: the
    reorder buffer holds events back a little, and a span that ended just before the read
    would be missing from qspan's side."""
    check = session.feed.crosscheck if session.feed else None
    if check is None:
        raise CrossCheckError(f"no cross-check runs in session {session.id} (POST one first)")
    check.read_qemu()
    if check.histograms.read_at is not None:
        until = check.histograms.read_at[1] + 20_000_000
        deadline = time.monotonic() + settle_s
        while check.processed_ns < until and time.monotonic() < deadline and session.state == "attached":
            time.sleep(0.05)
    with session.locked():
        return check.report()
