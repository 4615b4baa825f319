"""The web API on a real server (uvicorn in a subprocess) against a real lab QEMU."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websockets

from helpers import REPO, require_tracing
from qspanlab import lab
from qspanlab.harness import ServerProcess as Server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    require_tracing()
    d = tmp_path_factory.mktemp("lab")
    info = lab.up(d)
    yield info
    lab.down(d)


@pytest.fixture(scope="module")
def server():
    s = Server().wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def session(server, vm):
    sid = server.attach(vm.pid, timeout_s=120)
    res = lab.load(vm, "--op write --qd 4 --count 400 --rate 400 --verify")
    assert res.summary["verify"] == "ok"
    time.sleep(1.5)  # the reorder window and a tick
    return sid, res


def test_attach_then_spans_match_the_guest(server, session):
    sid, res = session
    status, body = server.get(f"/api/sessions/{sid}")
    assert status == 200
    assert body["status"]["lost_events"] == 0 and body["status"]["events"] > 0
    own = body["status"]["tracer_cpu"]  # qspan's own CPU since attach, from /proc
    assert own["us_per_request"] > 0 and own["server_cpu_s"] > 0 and own["bpftrace_cpu_s"] >= 0
    assert body["breakdown"]["write"]["requests"] == res.summary["requests"]
    status, spans = server.get(f"/api/sessions/{sid}/spans?op=write&limit=20000")
    assert status == 200 and len(spans) == res.summary["requests"]
    slow = server.get(f"/api/sessions/{sid}/spans?op=write&min_dur_us=100000000")[1]
    assert slow == []
    # the server keeps the timelines of the newest spans and of the slowest (what the page drills into)
    every = server.get(f"/api/sessions/{sid}/spans?limit=20000")[1]
    for s in (every[-1], max(every, key=lambda s: s["dur_ns"])):
        one = server.get(f"/api/sessions/{sid}/spans/{s['id']}")[1]
        assert one["span"]["id"] == s["id"] and one["timeline"], "a span comes with its thread's timeline"


def test_exports(server, session):
    sid, res = session
    status, doc = server.get(f"/api/sessions/{sid}/export/spans.json")
    assert status == 200 and doc["schema"] == "qspan.spans/1"
    assert len([s for s in doc["spans"] if s["op"] == "write"]) == res.summary["requests"]
    status, trace = server.get(f"/api/sessions/{sid}/export/perfetto.json")
    assert status == 200
    evs = trace["traceEvents"]
    names = {e["args"]["name"] for e in evs if e["ph"] == "M" and e["name"] == "thread_name"}
    assert any("iothread" in n for n in names)
    # one async slice a request, in its op's lane (tests/e2e/test_perfetto.py: how Perfetto reads them)
    writes = [e for e in evs if e["ph"] == "b" and e["cat"] == "request" and e["name"] == "write" and "request" in e["args"]]
    assert len(writes) == res.summary["requests"]
    starts = {e["id"] for e in evs if e["ph"] == "s"}
    finishes = {e["id"] for e in evs if e["ph"] == "f"}
    assert starts and starts == finishes, "every handoff flow has both ends"
    assert any(e["ph"] == "X" and e["name"].startswith("co ") for e in evs), "coroutine runs are slices"


def test_live_websocket_frames(server, session, vm):
    sid, _ = session

    async def two_frames():
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/api/sessions/{sid}/live") as ws:
            a = json.loads(await asyncio.wait_for(ws.recv(), 10))
            b = json.loads(await asyncio.wait_for(ws.recv(), 10))
            return a, b

    a, b = asyncio.run(two_frames())
    assert a["type"] == b["type"] == "frame"
    # the first frame has the default view's charts (the VM, every op, the last minute); the next
    # has none unless a second closed meanwhile: charts are sent when they change
    assert a["view"] == {"scope": "all", "op": None, "window_s": 60, "range_s": None}
    assert "write" in a["charts"]["groups"] and sum(a["charts"]["latency"]["write"]["requests"]) > 0
    assert b["charts"] is None or b["charts"]["t1_s"] >= a["charts"]["t1_s"]
    slow = a["charts"]["slowest"]
    assert slow and slow[0]["dur_us"] >= slow[-1]["dur_us"]
    assert a["status"]["state"] == "attached"


def test_bad_input(server, session, vm):
    sid, _ = session
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        cases = [
            ("POST", "/api/sessions", {"pid": 99999999}, 404, "no process"),
            ("POST", "/api/sessions", {"pid": sleeper.pid}, 422, "is not QEMU"),
            ("POST", "/api/sessions", {"pid": -3}, 422, None),
            ("POST", "/api/sessions", {"pid": vm.pid, "profile": "../etc"}, 422, None),
            # bpftrace text is never an API input: an unknown field is refused, naming it. Neither PID
            # is traced, so a server that ignored the field would answer 404 / 422 "is not QEMU" instead.
            ("POST", "/api/sessions", {"pid": 99999999, "program": "BEGIN { exit(); }"}, 422, '"extra_forbidden", "loc": ["body", "program"]'),
            ("POST", "/api/sessions", {"pid": sleeper.pid, "program": "BEGIN { exit(); }"}, 422, '"extra_forbidden", "loc": ["body", "program"]'),
            ("POST", "/api/sessions", {"pid": vm.pid}, 409, "already traced"),
            ("DELETE", "/api/sessions/nope", None, 404, "no session"),
            ("GET", "/api/sessions/nope/spans", None, 404, "no session"),
            ("GET", f"/api/sessions/{sid}/spans?since_ns=-1", None, 422, None),
            ("GET", f"/api/sessions/{sid}/spans?op=delete", None, 422, None),
            ("GET", f"/api/sessions/{sid}/spans?limit=0", None, 422, None),
            ("GET", f"/api/sessions/{sid}/spans/999999999", None, 404, "not (or no longer)"),
        ]
        for method, path, body, want, text in cases:
            status, reply = server.request(method, path, body)
            assert status == want, (method, path, body, status, reply)
            if text:
                assert text in json.dumps(reply), (path, reply)
    finally:
        sleeper.kill()
    # and the schema says so: three fields (none of them program text), nothing else accepted
    attach_schema = server.get("/openapi.json")[1]["components"]["schemas"]["AttachRequest"]
    assert set(attach_schema["properties"]) == {"pid", "profile", "qemu_accounting"} and attach_schema["additionalProperties"] is False


def test_websocket_from_a_foreign_origin_is_refused(server, session):
    sid, _ = session

    async def connect(origin):
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/api/sessions/{sid}/live", origin=origin) as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), 10))["type"]

    assert asyncio.run(connect(f"http://127.0.0.1:{server.port}")) == "frame"
    with pytest.raises(websockets.exceptions.InvalidStatus) as err:  # refused in the handshake
        asyncio.run(connect("http://evil.example"))
    assert err.value.response.status_code == 403


def test_non_loopback_needs_a_token():
    r = subprocess.run([sys.executable, "-m", "qspan.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
                       cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin"})
    assert r.returncode != 0 and "needs --token" in r.stderr and "Traceback" not in r.stderr
    s = Server("--token", "s3cret").wait_ready(headers={"Authorization": "Bearer s3cret"})
    try:
        assert s.request("GET", "/api/sessions")[0] == 401
        assert s.request("GET", "/api/sessions", headers={"Authorization": "Bearer s3cret"})[0] == 200
    finally:
        s.stop()


def test_detach(server, session):
    sid, _ = session
    status, body = server.request("DELETE", f"/api/sessions/{sid}")
    assert status == 200 and body["state"] == "detached" and body["reason"] == "stopped"


def test_the_sessions_recording_holds_what_the_server_showed(server, session):
    """The live session keeps the rings' records as read (recording v2): correlated offline,
    they give the spans the server showed."""
    from qspan import pipeline
    from qspan.output import recording

    sid, res = session
    deadline = time.monotonic() + 30
    while (st := server.get(f"/api/sessions/{sid}")[1]["status"])["state"] != "detached":
        assert time.monotonic() < deadline, f"session did not end: {st}"
        time.sleep(0.5)
    path = st["recording"]
    with open(path, "rb") as f:
        assert f.readline() == b"#qspan-recording 2\n"
    rec = recording.read(path)
    assert rec.end["reason"] == "stopped" and rec.end["event_lines"] == len(rec.events)
    spans = pipeline.correlate_recording(rec).spans
    assert len([s for s in spans if s.op == "write"]) == res.summary["requests"]
    end_frame = 5 + len(json.dumps(rec.end, sort_keys=True))  # tag, length, JSON
    assert st["recording_bytes"] + end_frame == Path(path).stat().st_size  # status counts what is on disk
