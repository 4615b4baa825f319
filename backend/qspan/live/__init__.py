"""Live correlation: tracer lines in, a bounded store of spans and aggregates out.

`ReorderBuffer` and `SpanStore` are pure (no clock, no threads): the tracer's
lines carry their own timestamps. `LiveSession` (the I/O edge) runs bpftrace
in a thread, records the raw stream, and feeds both.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
import itertools
import os
import threading
import time
from collections import deque
from pathlib import Path

from qspan import catalogue

from qspan.output import overhead

from qspan import program

from qspan.output import recording

from qspan import target

from qspan.transport import bpftrace as tracer
from qspan.correlate import Correlator, Timeline
from qspan.errors import QspanError
from qspan.model.events import Event, Lost
from qspan.transport.text import MalformedLine, entry_line, parse_line
from qspan.output.report import percentile
from qspan.model.spans import INSTEAD_CATEGORIES, Span, span_dict

# bpftrace prints per-CPU buffers: lines from different CPUs arrive out of
# timestamp order by up to a buffer's worth. Hold events this long (in trace
# time) before correlating them.
REORDER_LAG_NS = 50_000_000
# With the maps transport every dump says up to when it is complete; an event
# stamped just before a dump's flip can still land in the next one (it read the
# clock before the flip and the side after it), so hold this much back.
WATERMARK_MARGIN_NS = 2_000_000
HIST_EDGES_US = [2 ** i for i in range(0, 18)]  # 1 us .. 131 ms, log2 buckets


class ReorderBuffer:
    def __init__(self, lag_ns: int = REORDER_LAG_NS):
        self.lag_ns = lag_ns
        self._heap: list[tuple[int, int, Event | Lost]] = []
        self._seq = itertools.count()
        self.max_ts = 0
        self.watermark_ns = 0  # the tracer says: nothing stamped before this is still to come

    def push(self, rec: Event | Lost) -> None:
        ts = rec.ts_ns if isinstance(rec, Event) else rec.after_ts_ns
        self.max_ts = max(self.max_ts, ts)
        heapq.heappush(self._heap, (ts, next(self._seq), rec))

    def ready(self) -> list[Event | Lost]:
        """Events old enough that no earlier one can still arrive, in timestamp order."""
        out = []
        limit = max(self.max_ts - self.lag_ns, self.watermark_ns - WATERMARK_MARGIN_NS)
        while self._heap and self._heap[0][0] <= limit:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def drain(self) -> list[Event | Lost]:
        out = [heapq.heappop(self._heap)[2] for _ in range(len(self._heap))]
        return out


class LoadShedder:
    """The live path's sampling factor, from how far behind it runs (pure: times are passed in).

    When the server falls behind the tracer (the dump it is handling is old, or
    events were lost), trace one sampling window in twice as many; when it has
    kept up for a while with room to spare (busy under `room` of the time, so
    twice the events would still fit), trace twice as many again. Shedding whole
    windows in BPF keeps every traced request whole, where falling behind loses
    events at random and leaves every span in flight incomplete.
    """

    def __init__(self, max_every: int = 32, behind_ns: int = 400_000_000, caught_up_ns: int = 150_000_000,
                 room: float = 0.4, settle_ns: int = 3_000_000_000, calm_ns: int = 10_000_000_000):
        self.max_every, self.behind_ns, self.caught_up_ns, self.room = max_every, behind_ns, caught_up_ns, room
        self.settle_ns, self.calm_ns = settle_ns, calm_ns
        self.every = 1
        self._changed_at: int | None = None
        self._calm_since: int | None = None

    def update(self, now_ns: int, lag_ns: int, busy: float, lost: int = 0) -> int:
        """The factor to use from now on; `busy` is the fraction of recent time spent correlating."""
        if self._changed_at is not None and now_ns - self._changed_at < self.settle_ns:
            return self.every  # let the last change take effect (a window or two, and the backlog)
        if lag_ns > self.behind_ns or lost:
            self._calm_since = None
            if self.every < self.max_every:
                self.every *= 2
                self._changed_at = now_ns
        elif lag_ns < self.caught_up_ns and busy < self.room:
            if self._calm_since is None:
                self._calm_since = now_ns
            elif now_ns - self._calm_since >= self.calm_ns and self.every > 1:
                self.every //= 2
                self._changed_at = self._calm_since = now_ns
        else:
            self._calm_since = None
        return self.every


class SpanStore:
    """The most recent spans, per-second latency percentiles, and running breakdowns. Bounded."""

    def __init__(self, max_spans: int = 5_000, max_seconds: int = 600, max_timelines: int = 300):
        # Memory is bounded by these: the full stream is in the session's recording.
        self.spans: deque[dict] = deque(maxlen=max_spans)
        self.max_timelines = max_timelines
        self.timelines: dict[int, Timeline] = {}  # span id -> its thread timeline, most recent only
        self.seconds: deque[dict] = deque(maxlen=max_seconds * 3)  # one row per op per second
        self._open: dict[tuple[int, str], list[int]] = {}  # (second, op) -> durations in ns
        self.totals: dict[str, dict] = {}

    def add(self, spans: list[Span], timelines: dict[int, Timeline]) -> None:
        for s in spans:
            d = span_dict(s)
            if len(self.spans) == self.spans.maxlen:
                self.timelines.pop(self.spans[0]["id"], None)
            self.spans.append(d)
            if s.id in timelines:
                self.timelines[s.id] = timelines[s.id]
                self._trim_timelines()
            sec = s.end_ns // 1_000_000_000
            self._open.setdefault((sec, s.op), []).append(s.dur_ns)
            self._account(d)
        if spans:
            self._close_seconds(spans[-1].end_ns // 1_000_000_000 - 1)

    def _trim_timelines(self) -> None:
        if len(self.timelines) <= self.max_timelines + 100:  # trim in batches: slowest() sorts the ring
            return
        # keep the slowest requests' timelines (what the dashboard drills into) and the newest
        keep = {s["id"] for s in self.slowest(20)}
        for sid in list(self.timelines):
            if len(self.timelines) <= self.max_timelines:
                break
            if sid not in keep:
                del self.timelines[sid]

    def _account(self, d: dict) -> None:
        t = self.totals.setdefault(d["op"], {"requests": 0, "dur_ns": 0, "phases_ns": {}, "instead_ns": dict.fromkeys(INSTEAD_CATEGORIES, 0),
                                             "histogram": [0] * (len(HIST_EDGES_US) + 1)})
        t["requests"] += 1
        t["dur_ns"] += d["dur_ns"]
        for p in d["phases"]:
            t["phases_ns"][p["name"]] = t["phases_ns"].get(p["name"], 0) + p["dur_ns"]
        for h in d["handoffs"]:
            for k, v in h["instead_ns"].items():
                t["instead_ns"][k] = t["instead_ns"].get(k, 0) + v
        us = d["dur_ns"] / 1000
        t["histogram"][bisect_right(HIST_EDGES_US, us)] += 1  # bucket i: edges[i-1] <= us < edges[i]

    def _close_seconds(self, upto_sec: int) -> None:
        for key in sorted(k for k in self._open if k[0] <= upto_sec):
            durs = sorted(self._open.pop(key))
            self.seconds.append({
                "t_s": key[0], "op": key[1], "requests": len(durs),
                "p50_us": percentile(durs, 50) / 1000, "p90_us": percentile(durs, 90) / 1000,
                "p99_us": percentile(durs, 99) / 1000, "max_us": durs[-1] / 1000,
            })

    def flush(self) -> None:
        self._close_seconds(1 << 62)

    def slowest(self, n: int = 10, since_ns: int = 0) -> list[dict]:
        cands = [s for s in self.spans if s["end_ns"] >= since_ns]
        return sorted(cands, key=lambda s: -s["dur_ns"])[:n]

    def query(self, since_ns: int = 0, until_ns: int | None = None, op: str | None = None,
              min_dur_us: float = 0, limit: int = 1000) -> list[dict]:
        out = []
        for s in self.spans:
            if s["end_ns"] < since_ns or (until_ns is not None and s["start_ns"] > until_ns):
                continue
            if (op and s["op"] != op) or s["dur_ns"] < min_dur_us * 1000:
                continue
            out.append(s)
        return out[-limit:]

    def get(self, span_id: int) -> dict | None:
        return next((s for s in self.spans if s["id"] == span_id), None)

    def breakdown(self) -> dict:
        out = {}
        for op, t in self.totals.items():
            n = t["requests"] or 1
            out[op] = {
                "requests": t["requests"],
                "mean_us": t["dur_ns"] / n / 1000,
                "phase_mean_us": {k: v / n / 1000 for k, v in t["phases_ns"].items()},
                "instead_mean_us": {k: v / n / 1000 for k, v in t["instead_ns"].items()},
                "histogram": {"edges_us": HIST_EDGES_US, "counts": t["histogram"]},
            }
        return out


class LiveSession:
    """One attached tracer: bpftrace in a thread, its stream recorded and correlated live."""

    def __init__(self, session_id: str, pid: int, profile: str | None, record_dir: Path, sampling: str = "auto",
                 record_max_bytes: int | None = None):
        self.id = session_id
        self.pid = pid
        self.profile_name = profile
        # Unique per server and session: two servers on one host share the default
        # directory and both number their sessions s1, s2, ... (opened with "x" below).
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.record_path = record_dir / f"{stamp}-pid{pid}-{session_id}-{os.getpid()}.qspan"
        self.record_max_bytes = record_max_bytes
        self._writer: recording.RecordingWriter | None = None
        self.state = "attaching"  # attaching, attached, detached, failed
        self.error: str | None = None
        self.reason: str | None = None
        self.store = SpanStore()
        self.lines = 0
        self.lost = 0
        self.malformed = 0
        self.started_at = time.time()
        self.attached_at: float | None = None
        self.ended_at: float | None = None
        self._lock = threading.Lock()
        self._rate: deque[tuple[float, int]] = deque(maxlen=20)
        self._buf = ReorderBuffer()
        self._watermarks = False
        self._event_counts: dict[str, int] = {}
        self._event_us: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._session: tracer.TraceSession | None = None
        # sampling "auto": shed whole windows when behind (maps transport); "off": trace everything
        self.sampling = sampling
        self._shedder = LoadShedder() if sampling == "auto" else None
        self._busy_s = 0.0  # time spent handling dumps (correlating, recording)
        self._lost_since_check = 0
        self._busy_marks: deque[tuple[float, float]] = deque(maxlen=64)
        self._lags: deque[tuple[float, int]] = deque()  # (when, lag) of the dumps of the last second
        self.lag_ns = 0  # how old the newest dump was when handled
        self.busy = 0.0
        self.target: target.Target | None = None
        self.header: dict = {}

    def start(self) -> None:
        """Inspect and generate synchronously (errors reach the caller), trace in a thread."""
        tracer.check_can_trace()
        t = target.inspect(self.pid)
        cat = catalogue.load()
        prof = program.choose_profile(cat, t, self.profile_name)
        prog = program.generate(cat, program.program_input(t, prof, cat), prof)
        self.target, self.profile_name = t, prof.name
        self.header = recording.make_header(t, cat, prof, prog)
        self._codes = {e.code: e.name for e in cat.events.values()}
        self._event_us = overhead.event_costs(prog.probe_kinds, prog.transport, overhead.load_costs())
        self._correlator = Correlator(self.header, capture_timeline=True)
        self._session = tracer.TraceSession(prog.text, self.pid, transport=prog.transport)
        self._thread = threading.Thread(target=self._run, name=f"qspan-{self.id}", daemon=True)
        self._thread.start()

    def _attached(self) -> None:
        self.state = "attached"
        self.attached_at = time.time()

    def _run(self) -> None:
        assert self._session is not None
        try:
            with open(self.record_path, "x") as f:
                writer = self._writer = recording.RecordingWriter(f, self.header, self.record_max_bytes)

                def on_line(line: str) -> None:
                    writer.line(line)
                    self._feed(line)

                def on_batch(lost: int, entries: list[tuple]) -> None:
                    # maps transport: events arrive as tuples, in time order, batch after batch
                    t = time.thread_time()  # CPU time: waiting for the lock or the GIL is not work
                    self._feed_batch(lost, entries)  # spans first: the dashboard waits on them, the file does not
                    if lost:
                        writer.line(f"Lost {lost} events")
                    writer.lines([entry_line(e) for e in entries])
                    self._busy_s += time.thread_time() - t
                    self._lost_since_check += lost

                result = self._session.run(on_line, None, on_attached=self._attached, on_watermark=self._watermark,
                                           on_batch=on_batch if self._session.transport == "maps" else None)
                writer.end(result.summary())
            self.reason = result.reason
            with self._lock:
                self._process(self._buf.drain())
                self.store.flush()
            if result.reason == "qemu-exited":
                self.error = f"QEMU PID {self.pid} exited; {result.event_lines} events kept in {self.record_path.name}"
            self.state = "detached"
        except QspanError as err:
            self.error = str(err)
            self.state = "failed"
        except Exception as err:  # never let a tracer thread die silently
            self.error = f"internal error: {err!r}"
            self.state = "failed"
        finally:
            self.ended_at = time.time()

    def _feed(self, line: str) -> None:
        self.lines += 1
        try:
            rec = parse_line(line, self._codes)
        except MalformedLine:
            self.malformed += 1
            return
        if rec is None:
            return
        if isinstance(rec, Lost):
            self.lost += rec.count
        else:
            self._event_counts[rec.kind] = self._event_counts.get(rec.kind, 0) + 1
        with self._lock:
            self._buf.push(rec)
            if self.lines % 64 == 0:
                self._process(self._buf.ready())

    def _feed_batch(self, lost: int, entries: list[tuple]) -> None:
        """A batch from the maps transport: already in time order, so no reorder buffer."""
        codes, counts = self._codes, self._event_counts
        events = []
        for e in entries:
            kind = codes.get(e[4])
            if kind is None:
                self.malformed += 1
                continue
            counts[kind] = counts.get(kind, 0) + 1
            events.append(Event(kind, e[0], e[3], (e[5], e[6], e[7], e[8])))
        self.lines += len(entries)
        with self._lock:
            if lost:
                self.lost += lost
                self._correlator.add(Lost(lost, events[0].ts_ns if events else self._buf.max_ts))
            # the text path (node names, printed when first seen) is ahead of the dumps: let it go first
            if events:
                self._buf.watermark_ns = max(self._buf.watermark_ns, events[-1].ts_ns + WATERMARK_MARGIN_NS)
            self._process(self._buf.ready())
            self._process(events)

    def _watermark(self, ts_ns: int) -> None:
        with self._lock:
            self._watermarks = True
            self._buf.watermark_ns = ts_ns
            self._process(self._buf.ready())
        self._shed(ts_ns)

    def _shed(self, dump_ts_ns: int) -> None:
        """After each dump: how far behind are we, and should fewer windows be traced?"""
        now = time.monotonic()
        self.lag_ns = time.monotonic_ns() - dump_ts_ns  # bpftrace's nsecs is CLOCK_MONOTONIC too
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

    def _process(self, recs: list) -> None:
        for rec in recs:
            self._correlator.add(rec)
        spans, timelines = self._correlator.take_spans()
        if spans:
            self.store.add(spans, timelines)

    def tick(self) -> None:
        """Correlate what is old enough even when few lines arrive (called by the server)."""
        with self._lock:
            if not self._watermarks:
                # printf transport: no dumps say what is complete. The tracer's clock is
                # CLOCK_MONOTONIC, like ours: when the guest is idle, time still passes
                # and what is in the buffer becomes safe to correlate.
                self._buf.max_ts = max(self._buf.max_ts, time.monotonic_ns())
            self._process(self._buf.ready())
        self._rate.append((time.monotonic(), self.lines))

    def locked(self):
        """Hold this while reading the store: the tracer thread writes it."""
        return self._lock

    def stop(self) -> None:
        if self._session:
            self._session.stop()

    def join(self, timeout: float | None = None) -> None:
        if self._thread:
            self._thread.join(timeout)

    def status(self) -> dict:
        rate = 0.0
        if len(self._rate) >= 2:
            (t0, n0), (t1, n1) = self._rate[0], self._rate[-1]
            rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        with self._lock:
            spans = sum(t["requests"] for t in self.store.totals.values())
            newest = self.store.spans[-1]["end_ns"] if self.store.spans else None
        return {
            "id": self.id, "pid": self.pid, "profile": self.profile_name, "state": self.state,
            "error": self.error, "reason": self.reason, "events": self.lines, "events_per_s": round(rate, 1),
            "lost_events": self.lost, "malformed_lines": self.malformed, "spans": spans,
            "started_at": self.started_at, "attached_at": self.attached_at, "ended_at": self.ended_at,
            "recording": str(self.record_path),
            # the recording stops growing at the server's --record-max-mb; tracing goes on
            "recording_bytes": self._writer.written if self._writer else 0,
            "recording_capped": bool(self._writer and self._writer.capped),
            "qemu_version": self.target.version if self.target else None,
            "newest_end_ns": newest,
            # what the probes cost QEMU, estimated from the events seen (tracers/costs.txt)
            "overhead": overhead.estimate(dict(self._event_counts), self._event_us, spans),
            "sampling": {
                "mode": self.sampling, "every": self._session.sample_every if self._session else 1,
                "window_ms": program.WINDOW_MS, "sampled_out": self._correlator.stats["sampled_out"] if self.header else 0,
                "lag_ms": round(self.lag_ns / 1e6, 1), "busy": round(self.busy, 3),
                "error": self._session.sampling_error if self._session else None,
            },
        }
