"""OTLP: a real recorded stream's spans sent with the OpenTelemetry SDK to a loopback receiver
that decodes every request with opentelemetry-proto; ids, parent links, times and attributes
checked against the spans. Not run against a real collector: none is reachable here."""

from __future__ import annotations

import json
import threading

import pytest

from helpers import DATA, one_clear_error, run_qspan
from otlp_receiver import Receiver, attrs
from qspan import pipeline
from qspan.model.spans import span_dict
from qspan.output import otlp, recording

RECORDING = DATA / "stock-qd4-w100.qspan.gz"


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def real():
    rec = recording.read(RECORDING)
    return rec.header, [span_dict(s) for s in pipeline.correlate_recording(rec).spans]


def by_trace(received) -> dict[bytes, list]:
    out: dict[bytes, list] = {}
    for _res, s in received:
        out.setdefault(s.trace_id, []).append(s)
    return out


def test_one_trace_per_request_with_its_phases_nodes_and_background_work(receiver, real):
    header, spans = real
    header = dict(header, clock={"unix_minus_trace_ns": 1_700_000_000_000_000_000})
    exporter = otlp.OtlpExporter(receiver.url, dict(header, target=dict(header["target"], devices={"disk0": "vda"})),
                                 otlp.unix_offset_ns(header, None)[0])
    exporter.offer(spans)
    counts = exporter.close()
    assert counts["dropped"] == 0 and counts["requests"] == len(spans) == 200
    assert counts["exported"] == counts["otel_spans"] and counts["failed"] == 0
    received = receiver.spans()
    assert len(received) == counts["otel_spans"]
    assert receiver.content_types == {"application/x-protobuf"}
    res = received[0][0]
    assert res["service.name"] == "qspan" and res["process.pid"] == header["target"]["pid"]
    traces = by_trace(received)
    assert len(traces) == len(spans)
    by_id = {s["id"]: s for s in spans}
    for members in traces.values():
        roots = [s for s in members if not s.parent_span_id]
        assert len(roots) == 1
        root = roots[0]
        a = attrs(root.attributes)
        want = by_id[a["qspan.request.id"]]
        assert root.name == f"guest {want['op']}" and a["disk.io.direction"] == want["op"]
        assert (a["qspan.offset"], a["qspan.bytes"], a["thread.id"], a["qspan.disk"]) == (
            want["offset"], want["bytes"], want["tid"], "vda")
        assert root.start_time_unix_nano == want["start_ns"] + 1_700_000_000_000_000_000
        assert root.end_time_unix_nano - root.start_time_unix_nano == want["dur_ns"]
        assert len({s.span_id for s in members}) == len(members)  # span ids unique in the trace
        children = [s for s in members if s.parent_span_id]
        assert all(s.parent_span_id == root.span_id for s in children)
        phases = [s for s in children if "qspan.phase" in attrs(s.attributes)]
        assert [(p.name, p.end_time_unix_nano - p.start_time_unix_nano) for p in sorted(phases, key=lambda p: p.start_time_unix_nano)] == [
            (p["name"], p["dur_ns"]) for p in want["phases"]]
        nodes = [s for s in children if s.name.startswith("node ")]
        assert [attrs(n.attributes)["qspan.node.name"] for n in nodes] == [v["node"] for v in want["nodes"]]
        handoffs = [p for p in phases if p.name == "handoff"]
        for p, h in zip(handoffs, want["handoffs"]):
            ha = attrs(p.attributes)
            assert ha["qspan.signal"] == h["signal"] and ha["thread.id"] == h["to_tid"]
            assert {k[len("qspan.instead."):-3]: v for k, v in ha.items() if k.startswith("qspan.instead.")} == {
                k: v for k, v in h["instead_ns"].items() if v}


def test_a_slow_collector_never_holds_up_the_caller(real):
    """offer() only queues. With the collector taking 2 s a request, the converter waits for it
    after 8,192 SDK spans (~1,000 requests) and qspan's queue of 1,000 fills: of 40,000 offered,
    at most those two are taken, the rest dropped and counted, and offer() returns at once."""
    header, spans = real
    slow = Receiver(delay_s=2.0)
    exporter = otlp.OtlpExporter(slow.url, header, 0, queue_spans=1000, timeout_s=1.0)
    try:
        done = threading.Event()

        def offer_all():
            for _ in range(200):
                exporter.offer(spans)
            done.set()

        t = threading.Thread(target=offer_all)
        t.start()
        assert done.wait(30), "offer() blocked behind the collector"
        c = dict(exporter.counts)
        assert c["offered"] == 40_000
        taken = c["offered"] - c["dropped"]  # queued or converted, never both, never lost uncounted
        assert taken <= 1000 + otlp.FLUSH_EVERY // 4 + 256, c  # 4+ SDK spans a request, one batch more
        assert c["dropped"] > 30_000, c
    finally:
        exporter.close(timeout_s=5)
        slow.close()


def test_cli_sends_a_recording_and_a_spans_file(receiver, tmp_path, real):
    r = run_qspan("otlp", str(RECORDING), "--endpoint", receiver.url)
    assert r.returncode == 0, r.stderr
    assert "200 requests as" in r.stderr and "start time to the second" in r.stderr  # an old recording
    assert len(by_trace(receiver.spans())) == 200
    header, spans = real
    f = tmp_path / "spans.json"
    f.write_text(json.dumps({"schema": "qspan.spans/1", "target": header["target"],
                             "trace": {"clock": {"unix_minus_trace_ns": 5}, "profile": "stock"}, "spans": spans[:10]}))
    r = run_qspan("otlp", str(f), "--endpoint", receiver.url)
    assert r.returncode == 0, r.stderr
    assert "start time" not in r.stderr and len(by_trace(receiver.spans())) == 210


def test_cli_says_when_no_collector_takes_them(tmp_path):
    from qspanlab.harness import free_port

    r = run_qspan("otlp", str(RECORDING), "--endpoint", f"http://127.0.0.1:{free_port()}/v1/traces", "--timeout", "20")
    one_clear_error(r, "did not take every span")
    one_clear_error(run_qspan("otlp", str(RECORDING), "--header", "novalue"), "expected NAME=VALUE")


def test_every_attribute_is_documented(receiver, real):
    from helpers import REPO

    doc = (REPO / "docs" / "otlp.md").read_text()
    header, spans = real
    exporter = otlp.OtlpExporter(receiver.url, header, 0)
    exporter.offer(spans)
    exporter.close()
    names = set()
    for res, s in receiver.spans():
        names |= set(res) | set(attrs(s.attributes))
    for n in sorted(names):
        documented = f"`{n}`" in doc or (n.startswith("qspan.instead.") and "`qspan.instead.<category>_ns`" in doc)
        assert documented, n
