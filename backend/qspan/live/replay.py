"""A recording fed through the live path, as its tracer once handed it over.

A `ReplaySession` looks to the server like an ended LiveSession: its spans
come from the same LiveFeed, store and document builder, so a recording taken
on a production host can be looked at in the dashboard elsewhere, and a test
can check that the server and the CLI make the same document of it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from qspan.correlate import Timeline
from qspan.live.feed import FedSession, LiveFeed
from qspan.live.store import SpanStore
from qspan.output import recording

# A recording is looked at whole: its requests are kept up to this many (a span is ~2.4 KB,
# so ~120 MiB), where a live session keeps its newest 5,000. Past it, each second's slowest.
REPLAY_MAX_SPANS = 50_000
TIMELINES_CACHED = 64


class _OneTimeline(SpanStore):
    """A store that keeps nothing but the timeline of one span (timeline_of's)."""

    def __init__(self, span_id: int):
        super().__init__(max_spans=1, max_timelines=1)
        self.want = span_id
        self.found: Timeline | None = None
        self.seen = False

    def add(self, spans, timelines) -> None:
        if self.found is None and self.want in timelines:
            self.found = timelines[self.want]
        self.seen = self.seen or any(s.id == self.want for s in spans)

    def flush(self) -> None:
        pass


# Told how far opening a recording got: "checking", bytes of the file read of its size, then
# "replaying" (correlating, most of the time), events fed of all (qspan serve --open says it)
OpenProgress = Callable[[str, int, int], None]


class ReplaySession(FedSession):
    def __init__(self, session_id: str, path: str | Path, progress: OpenProgress | None = None):
        self.id = session_id
        self.path = Path(path)
        self._progress = progress
        rec = recording.read(self.path, allow_truncated=True,  # a clear RecordingError before anything else
                             on_bytes=(lambda done, size: progress("checking", done, size)) if progress else None)
        self._records = len(rec.events) + len(rec.lost)
        self.header = rec.header
        self.end = rec.end or None
        self._truncated = rec.truncated
        target = self.header.get("target", {})
        self.pid = target.get("pid", 0)
        self.profile_name = self.header.get("profile", {}).get("name")
        devices = self.header.get("target", {}).get("devices")
        self.feed = LiveFeed(self.header, store=SpanStore(max_spans=REPLAY_MAX_SPANS, devices=devices))
        self._timelines: dict[int, Timeline | None] = {}
        # one correlation again at a time: clicks on several requests wait for each other
        # (and find the ones done meanwhile cached) rather than each using a core
        self._timeline_lock = threading.Lock()
        self.state = "attaching"
        self.error: str | None = None
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.pinned = False  # SessionManager.open_recording: kept for the server's lifetime when True
        self._lock = threading.Lock()

    @property
    def truncated(self) -> bool:
        return self._truncated

    def start(self) -> None:
        """Feed every line, then drain: synchronous (a recording is done when it is read)."""
        with self._lock:
            for n, line in enumerate(recording.body_lines(self.path), 1):
                self.feed.line(line)
                if self._progress is not None and not n & 0x3FFF:
                    self._progress("replaying", n, self._records)
            self.feed.drain()
            if self._progress is not None:
                self._progress("replaying", self._records, self._records)
        self.state = "detached"
        self.ended_at = time.time()

    def timeline_of(self, span_id: int) -> Timeline | None:
        """A request's thread timeline, when the store no longer has it: the recording correlated
        again up to that request (the correlator is deterministic: the same ids). Seconds for a
        large recording; the last few asked for are cached."""
        with self._timeline_lock:
            if span_id in self._timelines:
                return self._timelines[span_id]
            store = _OneTimeline(span_id)
            feed = LiveFeed(self.header, store=store)
            for line in recording.body_lines(self.path):
                feed.line(line)
                if store.seen:
                    break
            else:
                feed.drain()
            if len(self._timelines) >= TIMELINES_CACHED:
                del self._timelines[next(iter(self._timelines))]
            self._timelines[span_id] = store.found
            return store.found

    def tick(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass

    def status(self) -> dict:
        feed = self.feed
        return {
            "id": self.id, "pid": self.pid, "profile": self.profile_name, "state": self.state, "error": self.error,
            "reason": (self.end or {}).get("reason"), "events": feed.lines, "events_per_s": 0.0,
            "lost_events": feed.lost, "malformed_lines": feed.malformed, "spans": feed.store.requests,
            "started_at": self.started_at, "attached_at": None, "ended_at": self.ended_at,
            "recording": str(self.path), "replay": True, "pinned": self.pinned,
            "qemu_version": self.header.get("target", {}).get("version"),
            "newest_end_ns": feed.store.newest_end_ns,
        }
