"""`qspan serve --otlp-endpoint`: a live session's spans to a loopback OTLP/HTTP receiver that
decodes every request with opentelemetry-proto (no collector is reachable here), while a lab
guest writes. Every guest write must arrive as one trace, in wall-clock time."""

from __future__ import annotations

import time

import pytest

from helpers import guest_requests, require_tracing
from otlp_receiver import Receiver, attrs
from qspanlab import lab
from qspanlab.harness import ServerProcess

pytestmark = pytest.mark.e2e
WRITES = 1000


def test_a_live_session_sends_one_trace_per_guest_request(tmp_path):
    require_tracing()
    receiver = Receiver()
    info = lab.up(tmp_path / "lab", name="otlp-vm")
    server = ServerProcess("--otlp-endpoint", receiver.url, "--otlp-header", "x-qspan-test=1").wait_ready()
    try:
        sid = server.attach(info.pid)
        t0 = time.time_ns()
        res = lab.load(info, f"--op write --qd 4 --count {WRITES} --log")
        t1 = time.time_ns()
        assert res.rc == 0 and res.summary["requests"] == WRITES
        guest = guest_requests(res.output)
        deadline = time.monotonic() + 60  # the server's batches go out every second
        while time.monotonic() < deadline:
            st = server.get(f"/api/sessions/{sid}")[1]["status"]["otlp"]
            if st["requests"] >= WRITES and st["exported"] == st["otel_spans"]:
                break
            time.sleep(0.5)
        assert st["dropped"] == 0 and st["failed"] == 0, st
        assert all(h.get("x-qspan-test") == "1" for h in receiver.headers) and receiver.headers  # --otlp-header
        roots = [(res_attrs, s) for res_attrs, s in receiver.spans() if not s.parent_span_id]
        writes = [(r, s) for r, s in roots if attrs(s.attributes).get("disk.io.direction") == "write"]
        assert len(writes) == WRITES, st
        assert {(attrs(s.attributes)["qspan.offset"]) for _, s in writes} == {off for _, off in guest}
        assert len({s.trace_id for _, s in writes}) == WRITES  # one trace each
        r = writes[0][0]
        assert r["service.name"] == "qspan" and r["process.pid"] == info.pid and r["qspan.vm.name"] == "otlp-vm"
        # wall-clock times: within the guest run, as this host's clock saw it
        assert all(t0 <= s.start_time_unix_nano <= s.end_time_unix_nano <= t1 for _, s in writes)
        assert {a["qspan.disk"] for a in (attrs(s.attributes) for _, s in writes)} == {"disk0"}
    finally:
        server.stop()
        lab.down(tmp_path / "lab")
        receiver.close()
