"""Spans to an OpenTelemetry collector over OTLP/HTTP: one trace per guest request.

A request is the trace's root span; its phases (the critical path), its node visits and the
work it started without awaiting (e.g. O's write to B) are child spans. Attributes use
OpenTelemetry's names where one fits (`service.*`, `host.name`, `process.pid`, `thread.id`,
`disk.io.direction`) and `qspan.*` for the rest (docs/otlp.md).

Never in the tracer's way: `offer()` only appends to a bounded queue (and counts what it
drops when full); a thread of its own turns spans into the SDK's, whose BatchSpanProcessor
batches them, with its own bounded queue, to an exporter that gives up on a slow collector.
The OpenTelemetry packages are the `otlp` extra: imported only when an exporter is made.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from datetime import datetime

from qspan import __version__
from qspan.errors import QspanError
from qspan.model.spans import span_dict

log = logging.getLogger("qspan.otlp")
QUEUE_SPANS = 20_000  # requests waiting for the converter (~10 s at 2,000/s); more are dropped, and counted
# The SDK's own queue drops the oldest spans when full, uncounted: the converter waits for the
# exporter (force_flush) after this many SDK spans, so that queue never fills, and a slow
# collector backs up into qspan's queue, where drops are counted.
SDK_QUEUE = 65_536
FLUSH_EVERY = 8_192
ATTR = "qspan."


def unix_offset_ns(header: dict, first_ns: int | None) -> tuple[int, bool]:
    """What turns the trace's times into Unix ns, and whether it is exact: the recording's clock
    anchor, else (recordings made before it) its start time in whole seconds put at its first span."""
    clock = header.get("clock") or {}
    if "unix_minus_trace_ns" in clock:
        return int(clock["unix_minus_trace_ns"]), True
    at = header.get("recorded_at")
    if not at or first_ns is None:
        raise QspanError("the recording has no clock anchor and no start time: its spans cannot be put in wall-clock time")
    return int(datetime.fromisoformat(at).timestamp() * 1e9) - first_ns, False


def resource_attributes(header: dict) -> dict:
    t = header.get("target", {})
    profile = header.get("profile")  # a recording's header holds the profile; a spans file its name
    attrs = {"service.name": "qspan", "service.version": __version__, "host.name": socket.gethostname(),
             "process.pid": t.get("pid", 0), "process.executable.path": t.get("exe", ""),
             ATTR + "qemu.version": t.get("version", ""), ATTR + "profile": (profile.get("name") if isinstance(profile, dict) else profile) or ""}
    if t.get("name"):
        attrs[ATTR + "vm.name"] = t["name"]
    return attrs


def emit(tracer, span: dict, offset_ns: int, disks: dict[str, str]) -> int:
    """One request as SDK spans (ended: the processor takes them); returns how many."""
    from opentelemetry import trace

    at = lambda ns: ns + offset_ns  # noqa: E731
    node = next((disks[v["node"]] for v in span["nodes"] if v["node"] in disks), None)
    attrs = {ATTR + "request.id": span["id"], ATTR + "op": span["op"], ATTR + "offset": span["offset"],
             ATTR + "bytes": span["bytes"], "thread.id": span["tid"], ATTR + "complete": span["complete"]}
    if span["op"] in ("read", "write"):
        attrs["disk.io.direction"] = span["op"]
    if node:
        attrs[ATTR + "disk"] = node
    if span.get("job"):
        attrs[ATTR + "job"] = span["job"]
    if span.get("qspan_ns") is not None:
        attrs[ATTR + "self_cost_ns"] = span["qspan_ns"]
    name = f"job {span['op']}" if span.get("job") else f"guest {span['op']}"
    root = tracer.start_span(name, attributes=attrs, start_time=at(span["start_ns"]))
    ctx = trace.set_span_in_context(root)
    n = 1
    handoffs = {h["ready_ns"]: h for h in span["handoffs"]}  # a handoff phase starts when its wait was ready
    for ph in span["phases"]:
        a = {ATTR + "phase": ph["name"]}
        if ph["name"] == "handoff":
            h = handoffs.get(ph["start_ns"])
            if h is not None:
                a.update({ATTR + "signal": h["signal"], ATTR + "from_tid": h["from_tid"], "thread.id": h["to_tid"]})
                a.update({f"{ATTR}instead.{cat}_ns": ns for cat, ns in h["instead_ns"].items() if ns})
        s = tracer.start_span(ph["name"], context=ctx, attributes=a, start_time=at(ph["start_ns"]))
        s.end(end_time=at(ph["start_ns"] + ph["dur_ns"]))
        n += 1
    for v in span["nodes"]:  # a visit is an instant: the request's coroutine entered the node
        s = tracer.start_span(f"node {v['node']}", context=ctx, start_time=at(v["ts_ns"]), attributes={
            ATTR + "node.name": v["node"], ATTR + "node.driver": v["driver"], ATTR + "offset": v["offset"],
            ATTR + "bytes": v["bytes"]})
        s.end(end_time=at(v["ts_ns"]))
        n += 1
    for c in span["children"]:  # linked, not awaited: off the critical path
        a = {ATTR + "role": c["role"], ATTR + "critical_path": False}
        if c.get("offset") is not None:
            a.update({ATTR + "offset": c["offset"], ATTR + "bytes": c["bytes"]})
        s = tracer.start_span(c["role"], context=ctx, attributes=a, start_time=at(c["start_ns"]))
        s.end(end_time=at(c["end_ns"] if c.get("end_ns") is not None else c["start_ns"]))
        n += 1
    root.end(end_time=at(span["end_ns"]))
    return n


class OtlpExporter:
    """Spans offered by the live path (or a file) to an OTLP/HTTP endpoint, in the background."""

    def __init__(self, endpoint: str, header: dict, offset_ns: int, headers: dict | None = None,
                 queue_spans: int = QUEUE_SPANS, timeout_s: float = 5.0):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as err:
            raise QspanError(f"OTLP export needs the OpenTelemetry SDK ({err.name} missing): "
                             "pip install 'qspan[otlp]' (scripts/setup.sh installs it)") from None
        self.endpoint = endpoint
        self.offset_ns = offset_ns
        self.disks = dict(header.get("target", {}).get("devices") or {})
        self.counts = {"offered": 0, "dropped": 0, "requests": 0, "otel_spans": 0, "exported": 0, "failed": 0}
        exporter = _Counting(OTLPSpanExporter(endpoint=endpoint, headers=headers, timeout=timeout_s), self.counts)
        self.provider = TracerProvider(resource=Resource.create(resource_attributes(header)), shutdown_on_exit=False)
        self.provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=SDK_QUEUE,
                                                            schedule_delay_millis=1000, max_export_batch_size=2048))
        self.tracer = self.provider.get_tracer("qspan", __version__)
        self._queue: deque = deque()  # span dicts, or Span objects from the live path
        self._max = queue_spans
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="qspan-otlp", daemon=True)
        self._thread.start()

    def offer(self, spans: list) -> None:
        """Hand spans on without waiting: beyond the queue's room they are dropped and counted."""
        with self._wake:
            room = self._max - len(self._queue)
            self._queue.extend(spans[:max(0, room)])
            self.counts["offered"] += len(spans)
            self.counts["dropped"] += max(0, len(spans) - max(0, room))
            self._wake.notify()

    def _run(self) -> None:
        unflushed = 0
        while True:
            with self._wake:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if not self._queue and self._closed:
                    return
                batch = [self._queue.popleft() for _ in range(min(256, len(self._queue)))]
            for s in batch:
                try:
                    n = emit(self.tracer, s if isinstance(s, dict) else span_dict(s), self.offset_ns, self.disks)
                    self.counts["otel_spans"] += n
                    self.counts["requests"] += 1
                    unflushed += n
                except Exception:  # one odd span must not stop the export of the rest
                    log.exception("OTLP: request %s not converted", s["id"] if isinstance(s, dict) else s.id)
            if unflushed >= FLUSH_EVERY:
                self.provider.force_flush()  # this thread waits for the collector; the live path never does
                unflushed = 0

    def close(self, timeout_s: float = 30.0) -> dict:
        """Send what is queued, waiting up to timeout_s in all, stop, and return the counts.
        What a slow collector has not taken by then is given up (the SDK's own flush would wait
        for it batch after batch: it runs in a thread this call stops waiting for)."""
        deadline = time.monotonic() + timeout_s
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout_s)

        def finish():
            self.provider.force_flush()
            self.provider.shutdown()

        t = threading.Thread(target=finish, name="qspan-otlp-flush", daemon=True)
        t.start()
        t.join(max(0.0, deadline - time.monotonic()))
        return dict(self.counts)


def _Counting(inner, counts: dict):
    """The SDK exporter, counting the spans each export call delivered or lost."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Counting(SpanExporter):
        def export(self, spans):
            result = inner.export(spans)
            counts["exported" if result == SpanExportResult.SUCCESS else "failed"] += len(spans)
            return result

        def shutdown(self):
            inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return inner.force_flush(timeout_millis)

    return Counting()
