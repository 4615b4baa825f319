"""Every QEMU on the host: `qspan serve --follow-all` attaches to each, ones started later too,
and GET /api/host shows them side by side (rate, p50/p99 per disk and op)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Annotated

from fastapi import APIRouter, Query

from qspan import target
from qspan.errors import AlreadyTraced, QspanError
from qspan.live.host import vm_summary
from qspan.live.replay import ReplaySession
from qspan.transport.rings import bpftrace_clock_ns
from .deps import Manager
from .sessions import LIVE
from .targets import process_identity

log = logging.getLogger("qspan.server")
router = APIRouter(prefix="/api/host", tags=["host"])


class HostFollower:
    """Attaches a session to every traceable QEMU that has none. A process a user detached from,
    or one that cannot be traced, is left alone (the latter tried again after retry_s); a QEMU
    started again is a new process and is followed again."""

    def __init__(self, manager, interval_s: float = 2.0, retry_s: float = 60.0, clock=time.monotonic,
                 list_pids=target.list_qemu_pids, identity=process_identity):
        self.manager, self.interval_s, self.retry_s = manager, interval_s, retry_s
        self._clock, self._list_pids, self._identity = clock, list_pids, identity
        self.failed: dict[tuple, tuple[float, str]] = {}  # process identity -> (when, why)
        self._failed_sessions: set[str] = set()  # failed sessions already counted in `failed`
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> None:
        """One scan of the host's QEMUs (attaching is synchronous: inspect and plan)."""
        sessions = [s for s in self.manager.list() if not isinstance(s, ReplaySession)]
        traced = {s.pid for s in sessions if s.state in LIVE}
        for s in sessions:
            # a session that failed after it started (bpftrace refused, its recording unwritable)
            # counts as a failed attach: tried again after retry_s, not at the next scan
            if s.state == "failed" and s.id not in self._failed_sessions:
                self._failed_sessions.add(s.id)
                ident = self._identity(s.pid)
                if ident is not None and s.pid not in traced:
                    self.failed[ident] = (self._clock(), s.error or "its session failed")
        alive = set()
        for pid in self._list_pids():
            ident = self._identity(pid)
            if ident is None:
                continue
            alive.add(ident)
            if pid in traced or ident in self.manager.unfollowed:
                continue
            failed = self.failed.get(ident)
            if failed and self._clock() - failed[0] < self.retry_s:
                continue
            try:
                s = self.manager.attach(pid, None)
                log.info("following PID %d: session %s", pid, s.id)
                self.failed.pop(ident, None)
            except AlreadyTraced:
                pass
            except OSError as err:  # the process went away while it was inspected: gone at the next scan
                log.info("PID %d went away while qspan looked at it: %s", pid, err)
            except QspanError as err:
                if failed is None:
                    log.info("not following PID %d: %s", pid, err)
                self.failed[ident] = (self._clock(), str(err))
        for ident in [i for i in self.failed if i not in alive]:
            del self.failed[ident]

    def start(self) -> None:
        def run():
            while not self._stop.is_set():
                try:
                    self.step()
                except Exception:  # the follower must outlive any one QEMU's surprise
                    log.exception("following the host's QEMUs failed; trying again")
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=run, name="qspan-follow-all", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)


@router.get("", summary="every QEMU on the host: its session, request rate, p50/p99 per disk and op")
def host(manager: Manager, window_s: Annotated[float, Query(gt=0, le=600)] = 10.0) -> dict:
    follower = manager.follower
    # a copy first: the follower's thread changes the dict while this runs
    refused = {ident[0]: why for ident, (_, why) in list(follower.failed.items())} if follower else {}
    live = {s.pid: s for s in manager.list() if s.state in LIVE and not isinstance(s, ReplaySession)}
    since = bpftrace_clock_ns() - int(window_s * 1e9)  # the spans' clock
    vms = []
    for row in manager.processes():
        s = live.get(row["pid"])
        vm = {"pid": row["pid"], "version": row.get("version"), "error": row.get("error") or refused.get(row["pid"]),
              "session": None, "state": None, "name": None, "requests_per_s": None, "disks": {}}
        if s is not None and s.feed is not None:
            st = s.status()
            now = bpftrace_clock_ns()
            with s.locked():
                store = s.feed.store
                spans = store.ended_since(since)
                # the store keeps the newest spans only: past that, the percentiles cover less than
                # the window asked for, and say how much (the rate comes from the per-second rows)
                covered_s = window_s if not store.full else min(window_s, (now - store.oldest_end_ns) / 1e9)
                rate = store.rate(int(window_s))
                summary = vm_summary(spans, s.feed.metrics.disk_of, covered_s)
            vm.update(summary, session=s.id, state=st["state"], lost_events=st["lost_events"],
                      name=s.header.get("target", {}).get("name"), percentiles_over_s=round(covered_s, 1),
                      requests_per_s=rate)
        elif s is not None:
            vm.update(session=s.id, state=s.state)
        vms.append(vm)
    return {"follow_all": follower is not None, "window_s": window_s, "vms": vms}
