"""The live path's pure part: tracer output in, spans in a SpanStore out (no threads, no clock).

`LiveFeed` takes what the tracer hands on, in the order it arrives: text lines
(printf events, node names, "Lost N events") through a reorder buffer, and
with the maps transport whole dumps in time order (`batch`) with a watermark
after each. It correlates what is old enough that nothing earlier can still
come and puts finished spans in the store. LiveSession (session.py) runs it
behind the tracer thread; replay.py feeds it a recording.
"""

from __future__ import annotations

import threading

from qspan.correlate import Correlator
from qspan.live.metrics import RequestMetrics
from qspan.live.reorder import WATERMARK_MARGIN_NS, ReorderBuffer
from qspan.live.store import SpanStore
from qspan.model.events import Lost, events_of_entries
from qspan.output.document import spans_document
from qspan.output.recording import codes, string_kinds
from qspan.transport.text import MalformedLine, parse_line

# Correlate the text path's buffer every this many lines (not every line: a heap pass each).
PROCESS_EVERY = 64


class LiveFeed:
    def __init__(self, header: dict, store: SpanStore | None = None):
        self.header = header
        self.codes = codes(header)
        self.string_kinds = string_kinds(header)
        self.correlator = Correlator(header, capture_timeline=True)
        devices = header.get("target", {}).get("devices")
        self.store = store if store is not None else SpanStore(devices=devices)
        # every span, counted once, for /metrics (the store keeps only the newest)
        self.metrics = RequestMetrics(devices)
        self.buffer = ReorderBuffer()
        self.lines = 0
        self.lost = 0
        self.malformed = 0
        self.event_counts: dict[str, int] = {}
        self.watermarks = False  # the tracer says up to when its output is complete (maps transport)
        self._last_ts = 0  # the last event line's stamp: where a "Lost N events" line belongs
        self.crosscheck = None  # a LiveCrossCheck while one runs (live/crosscheck.py)
        self.otlp = None  # an OtlpExporter when spans also go to a collector (output/otlp.py)

    def line(self, line: str) -> None:
        """One text line from the tracer (or a recording)."""
        self.lines += 1
        try:
            rec = parse_line(line, self.codes, self.string_kinds, last_ts=self._last_ts)
        except MalformedLine:
            self.malformed += 1
            return
        if rec is None:
            return
        if type(rec) is Lost:
            self.lost += rec.count
        else:
            self._last_ts = rec.ts_ns
            self.event_counts[rec.kind] = self.event_counts.get(rec.kind, 0) + 1
        self.buffer.push(rec)
        if self.lines % PROCESS_EVERY == 0:
            self._process(self.buffer.ready())

    def batch(self, lost: int, entries: list[tuple]) -> None:
        """A dump from the maps transport: already in time order, so no reorder buffer."""
        events, unknown = events_of_entries(entries, self.codes, self.event_counts)
        self.malformed += unknown
        self.lines += len(entries)
        if lost:
            self.lost += lost
            self.correlator.add(Lost(lost, events[0].ts_ns if events else self.buffer.max_ts))
        # the text path (node names, printed when first seen) is ahead of the dumps: let it go first
        if events:
            self.buffer.watermark_ns = max(self.buffer.watermark_ns, events[-1].ts_ns + WATERMARK_MARGIN_NS)
        self._process(self.buffer.ready())
        self._process(events)

    def watermark(self, ts_ns: int) -> None:
        """The tracer handed on everything stamped before ts_ns (less a moment)."""
        self.watermarks = True
        self.buffer.watermark_ns = ts_ns
        self._process(self.buffer.ready())
        self.store.advance(ts_ns)

    def clock(self, now_ns: int) -> None:
        """Time passes even when no line comes (printf transport: no watermarks say so)."""
        if not self.watermarks:
            # The caller passes the tracer's clock (transport.rings.bpftrace_clock_ns): when
            # the guest is idle, what is in the buffer becomes safe to correlate.
            self.buffer.max_ts = max(self.buffer.max_ts, now_ns)
        self._process(self.buffer.ready())
        if not self.watermarks:
            # (with watermarks only they move the rollups: dumps may lag the clock by seconds)
            self.store.advance(now_ns)

    def drain(self) -> None:
        """The stream ended: correlate everything left and close the store's open seconds."""
        self._process(self.buffer.drain())
        self.store.flush()

    def _process(self, recs: list) -> None:
        add = self.correlator.add
        for rec in recs:
            add(rec)
        spans, timelines = self.correlator.take_spans()
        if spans:
            self.store.add(spans, timelines)
            self.metrics.add(spans)
            if self.otlp is not None:
                self.otlp.offer(spans)  # Span objects: its own thread makes them dicts, then OTLP
        if self.crosscheck is not None:
            self.crosscheck.events(recs)
            self.crosscheck.spans(spans)

    def counters(self) -> dict:
        """The correlator's counters, as the spans document carries them."""
        return self.correlator.counters(self.store.requests)


class FedSession:
    """What the server reads of a session whose spans come from a LiveFeed: a live one or a replay.

    Subclasses set `feed` (None until started), `header`, `end` (the recording's
    end marker once known) and `_lock` (held by whoever writes the feed).
    """

    feed: LiveFeed | None
    header: dict
    end: dict | None
    _lock: threading.Lock

    @property
    def store(self) -> SpanStore | None:
        return self.feed.store if self.feed else None

    @property
    def truncated(self) -> bool:
        """Whether the session's recording lacks its end marker."""
        return False

    def locked(self):
        """Hold this while reading the store: the feed's writer holds it too."""
        return self._lock

    def document(self, spans: list[dict]) -> dict:
        """The qspan.spans/1 document of these spans of this session (the CLI's builder)."""
        with self._lock:
            counters = self.feed.counters() if self.feed else {}
            end = self.end
        return spans_document(self.header, spans, counters, end, self.truncated)
