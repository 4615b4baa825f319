"""One attached tracer (the I/O edge of the live path): bpftrace in a thread, its stream recorded and fed live.

`LiveSession.start` plans synchronously (inspection and generation errors
reach the caller: the API turns them into HTTP errors), then traces in a
thread: every line goes to the session's recording and to a LiveFeed
(feed.py), whose store the server reads under `locked()`. With the maps
transport and `sampling="auto"`, a LoadShedder traces fewer sampling windows
when the server falls behind.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from qspan import compiled, pipeline, program, runtime
from qspan.catalogue import costs
from qspan.errors import QspanError
from qspan.live.feed import FedSession, LiveFeed
from qspan.live.shedder import LoadShedder
from qspan.output import overhead, recording
from qspan.output.ringrecording import RawRecordingWriter, open_writer
from qspan.target import Target, process_cpu_s
from qspan.transport.bpftrace import TraceSession, check_can_trace
from qspan.transport.rings import bpftrace_clock_ns
from qspan.transport.text import entry_line

log = logging.getLogger("qspan.live")

# Events correlated per hold of the session's lock (~10 ms of the compiled correlator's time).
BATCH_SLICE = 4096


class LiveSession(FedSession):
    """One attached tracer; `status()` and the store under `locked()` are what the server reads."""

    @property
    def truncated(self) -> bool:
        # a failed session's recording has no end marker: `qspan spans` calls it truncated too
        return self.state == "failed"

    def __init__(self, session_id: str, pid: int, profile: str | None, record_dir: Path, sampling: str = "auto",
                 record_max_bytes: int | None = None, accounting: bool = False,
                 record_room: Callable[[], str | None] | None = None, record_note: str | None = None,
                 otlp: tuple[str, dict] | None = None):
        self.id = session_id
        self.pid = pid
        self.profile_name = profile
        self.accounting = accounting  # QEMU's own accounting interval on each span (req.acct): live/crosscheck.py
        self.accounting_traced = False  # ... and the binary has what it takes
        # Unique per server and session: two servers on one host share the default
        # directory and both number their sessions s1, s2, ... (opened with "x" below).
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.record_path = record_dir / f"{stamp}-pid{pid}-{session_id}-{os.getpid()}.qspan"
        self.record_max_bytes = record_max_bytes
        self.record_room = record_room  # asked as the recording grows: a reason to stop it (free space)
        self.record_note = record_note  # why its cap is below the server's, if it is
        self.otlp = otlp  # (endpoint, headers): spans also go to an OpenTelemetry collector
        self._otlp_close: threading.Thread | None = None
        self._writer: recording.RecordingWriter | RawRecordingWriter | None = None
        self.state = "attaching"  # attaching, attached, detached, failed
        self.error: str | None = None
        self.reason: str | None = None
        self.end: dict | None = None  # the recording's end marker, once tracing stopped
        self.started_at = time.time()
        self.attached_at: float | None = None
        self.ended_at: float | None = None
        self._lock = threading.Lock()
        self._rate: deque[tuple[float, int]] = deque(maxlen=20)
        self._thread: threading.Thread | None = None
        self._session: TraceSession | None = None
        self.feed: LiveFeed | None = None
        # sampling "auto": shed whole windows when behind (maps transport); "off": trace everything
        self.sampling = sampling
        self._shedder = LoadShedder() if sampling == "auto" else None
        self._busy_s = 0.0  # CPU time spent handling dumps (correlating, recording)
        self._lost_since_check = 0
        self._busy_marks: deque[tuple[float, float]] = deque(maxlen=64)
        self._lags: deque[tuple[float, int]] = deque()  # (when, lag) of the dumps of the last second
        self.lag_ns = 0  # how old the newest dump was when handled
        self.busy = 0.0
        self.target: Target | None = None
        self.header: dict = {}
        self._event_us: dict[str, float] = {}
        self._cpu_since: tuple[float, float, int | None] | None = None  # (monotonic, own CPU, bpftrace PID)
        self._tracer_cpu_last: dict | None = None
        runtime.collector_pauses()  # counted from the first session on (the status shows them)

    def start(self) -> None:
        """Plan synchronously (errors reach the caller), trace in a thread."""
        check_can_trace()
        plan = pipeline.plan(self.pid, self.profile_name, accounting=self.accounting)
        self.target, self.profile_name, self.header = plan.target, plan.profile.name, plan.header
        self.accounting_traced = "req.acct" in {p.event for p in plan.program.probes}
        self._event_us = overhead.event_costs(plan.program.probe_kinds, plan.program.transport.name, costs.load())
        self.feed = LiveFeed(self.header)
        if self.otlp:
            from qspan.output.otlp import OtlpExporter, unix_offset_ns

            endpoint, headers = self.otlp
            self.feed.otlp = OtlpExporter(endpoint, self.header, unix_offset_ns(self.header, None)[0], headers=headers)
        self._session = pipeline.session(plan)
        self._thread = threading.Thread(target=self._run, name=f"qspan-{self.id}", daemon=True)
        self._thread.start()

    def _attached(self) -> None:
        self.state = "attached"
        self.attached_at = time.time()
        # qspan's own CPU is measured from here: the server's process, and bpftrace (its start included)
        bpftrace_pid = self._session.bpftrace_pid if self._session else None
        self._cpu_since = (time.monotonic(), process_cpu_s(os.getpid()), bpftrace_pid)

    def _run(self) -> None:
        assert self._session is not None and self.feed is not None
        try:
            # The ring transport's recording keeps the rings' bytes (ringrecording.py): writing them
            # costs a copy, where formatting each event as a text line cost ~0.6 us of the live
            # path's time an event, and that time is what makes it sample at full rate.
            with open_writer(self.record_path, self.header, self._session.transport.name, self._session.program_text,
                             exclusive=True, max_bytes=self.record_max_bytes, room_check=self.record_room) as writer:
                self._writer = writer
                raw = writer.on_raw is not None  # the rings' bytes: events and losses are in them already
                batched = self._session.transport.batched
                result = self._session.run(lambda line: self._line(writer, line, raw), None,
                                           on_attached=self._attached, on_watermark=self._watermark,
                                           on_batch=(lambda lost, entries: self._batch(writer, lost, entries, raw))
                                           if batched else None,
                                           on_raw=writer.on_raw)
                end = writer.end(result.summary())
            self.reason = result.reason
            with self._lock:
                self.end = end  # what the recording's #end says, --record-max-mb's cap included
                self.feed.drain()
            if result.reason == "qemu-exited":
                self.error = f"QEMU PID {self.pid} exited; {result.event_lines} events kept in {self.record_path.name}"
            self.state = "detached"
        except QspanError as err:
            log.warning("session %s (PID %d) failed: %s", self.id, self.pid, err)
            self.error = str(err)
            self.state = "failed"
        except Exception as err:  # never let a tracer thread die silently
            log.exception("session %s (PID %d): internal error", self.id, self.pid)
            self.error = f"internal error: {err!r}"
            self.state = "failed"
        finally:
            self.ended_at = time.time()
            if self.feed is not None and self.feed.otlp is not None:
                # what is queued still goes out, and no tick or request waits for the collector;
                # join() (the server's shutdown) waits for it, up to the exporter's own timeout
                self._otlp_close = threading.Thread(target=self.feed.otlp.close, kwargs={"timeout_s": 20.0},
                                                    name=f"qspan-otlp-close-{self.id}", daemon=True)
                self._otlp_close.start()

    def _line(self, writer, line: str, raw: bool) -> None:
        # A raw recording has the event lines already (a node's name, decoded from the rings):
        # only what bpftrace itself printed goes in, and with this transport that is no event.
        if not (raw and line[:1].isdigit()):
            writer.line(line)
        with self._lock:
            self.feed.line(line)

    def _batch(self, writer, lost: int, entries: list[tuple], raw: bool) -> None:
        # maps and ring transports: events arrive as tuples, in time order, batch after batch
        t = time.thread_time()  # CPU time: waiting for the lock or the GIL is not work
        # Spans first (the dashboard waits on them, the file does not), a slice at a time: a read
        # behind a stall holds a second of events or more, and the frame builder, waiting on the
        # lock for all of them, showed none (frames 0.3-0.9 s late in bench/live.py). Python's
        # lock is not fair: without sleep(0) this thread takes it back before the waiter wakes.
        for i in range(0, max(len(entries), 1), BATCH_SLICE):
            if i:
                time.sleep(0)
            with self._lock:
                self.feed.batch(lost if i == 0 else 0, entries[i:i + BATCH_SLICE])
        if not raw:  # a raw recording has them, and the kernel's own count of what it lost
            if lost:
                writer.line(f"Lost {lost} events")
            writer.lines([entry_line(e) for e in entries])
        self._busy_s += time.thread_time() - t
        self._lost_since_check += lost

    def _watermark(self, ts_ns: int) -> None:
        with self._lock:
            self.feed.watermark(ts_ns)
        self._shed(ts_ns)

    def _shed(self, dump_ts_ns: int) -> None:
        """After each dump: how far behind are we, and should fewer windows be traced?"""
        now = time.monotonic()
        self.lag_ns = bpftrace_clock_ns() - dump_ts_ns  # on the clock of bpftrace's nsecs
        lags = self._lags
        lags.append((now, self.lag_ns))
        while now - lags[0][0] > 1.0:
            lags.popleft()
        marks = self._busy_marks
        if marks and now - marks[-1][0] < 0.25:
            return
        marks.append((now, self._busy_s))
        while len(marks) > 2 and now - marks[1][0] >= 2.0:
            marks.popleft()  # busy: over the last ~2 s
        if len(marks) >= 2 and now > marks[0][0]:
            self.busy = (marks[-1][1] - marks[0][1]) / (now - marks[0][0])
        if self._shedder is None or self._session is None:
            return
        lost, self._lost_since_check = self._lost_since_check, 0
        # Behind means a backlog that does not clear: the smallest lag of the last second.
        # (A dump holding a busy window's events is slow to handle; that alone is no backlog.)
        backlog_ns = min(lag for _, lag in lags)
        every = self._shedder.update(time.monotonic_ns(), backlog_ns, self.busy, lost)
        if every != self._session.sample_every:
            self._session.set_sample_every(every)

    def _tracer_cpu(self, requests: int) -> dict | None:
        """qspan's own CPU since attach (server process and bpftrace), while attached; after
        that, as last measured (bpftrace's /proc entry goes with it)."""
        if self._cpu_since is None or self.state != "attached":
            return self._tracer_cpu_last
        t0, own0, bpf_pid = self._cpu_since
        bpf = process_cpu_s(bpf_pid) if bpf_pid is not None else 0.0
        own = process_cpu_s(os.getpid()) - own0
        self._tracer_cpu_last = overhead.measured(own, bpf, requests, time.monotonic() - t0)
        return self._tracer_cpu_last

    def tick(self) -> None:
        """Correlate what is old enough even when few lines arrive (called by the server)."""
        if self.feed is None:
            return
        with self._lock:
            self.feed.clock(bpftrace_clock_ns())
        self._rate.append((time.monotonic(), self.feed.lines))

    def stop(self) -> None:
        if self._session:
            self._session.stop()

    def join(self, timeout: float | None = None) -> None:
        if self._thread:
            self._thread.join(timeout)
        if self._otlp_close is not None:
            self._otlp_close.join(timeout)

    def status(self) -> dict:
        rate = 0.0
        if len(self._rate) >= 2:
            (t0, n0), (t1, n1) = self._rate[0], self._rate[-1]
            rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        feed = self.feed
        with self._lock:
            spans = feed.store.requests if feed else 0
            newest = feed.store.newest_end_ns if feed else None
            counts = dict(feed.event_counts) if feed else {}
            sampled_out = feed.correlator.stats["sampled_out"] if feed else 0
        return {
            "id": self.id, "pid": self.pid, "profile": self.profile_name, "state": self.state,
            "qemu_accounting": self.accounting_traced,
            "crosscheck": self.feed is not None and self.feed.crosscheck is not None,
            "error": self.error, "reason": self.reason, "events": feed.lines if feed else 0,
            "events_per_s": round(rate, 1), "lost_events": feed.lost if feed else 0,
            "malformed_lines": feed.malformed if feed else 0, "spans": spans,
            "started_at": self.started_at, "attached_at": self.attached_at, "ended_at": self.ended_at,
            "recording": str(self.record_path),
            # the recording stops growing at the server's --record-max-mb; tracing goes on
            "recording_bytes": self._writer.written if self._writer else 0,
            "recording_capped": bool(self._writer and self._writer.capped),
            # why it stopped growing (its cap, the disk's free space, a failed write), and why its cap is
            # lower than the server's; the live view goes on either way
            "recording_stopped": self._writer.stopped_why if self._writer else None,
            "recording_note": self.record_note,
            "qemu_version": self.target.version if self.target else None,
            # the OpenTelemetry export, when the server has one: requests offered, dropped, spans delivered
            "otlp": dict(feed.otlp.counts, endpoint=feed.otlp.endpoint) if feed and feed.otlp else None,
            "newest_end_ns": newest,
            # what the probes cost QEMU, estimated from the events seen (tracers/costs.txt)
            "overhead": overhead.estimate(counts, self._event_us, spans),
            # and what qspan itself took, as /proc counted it since attach
            "tracer_cpu": self._tracer_cpu(spans),
            # iothreads created after attach: watched from when they were seen, or why not (transport/follow.py)
            "followed_threads": list(self._session.follower.followed) if self._session else [],
            "correlator": compiled.state,  # compiled (mypyc) or pure Python, and why (qspan/compiled.py)
            # the server process's cyclic-collector stalls: what bounds freshness when frames come late
            "collector": runtime.collector_pauses().summary(),
            "sampling": {
                "mode": self.sampling, "every": self._session.sample_every if self._session else 1,
                "window_ms": program.WINDOW_MS, "sampled_out": sampled_out,
                "lag_ms": round(self.lag_ns / 1e6, 1), "busy": round(self.busy, 3),
                "error": self._session.sampling_error if self._session else None,
            },
        }
