"""The server's side of the dashboard's views, on a real recording opened in it (a ReplaySession):
the WebSocket takes a view and sends its charts (then only when they change), refuses a view that
cannot be, and the REST routes find, pin and open requests with their thread timelines."""

from __future__ import annotations

import json

import pytest
from helpers import DATA, local_client

from qspan.server.app import create_app
from qspan.server.settings import Settings

RECORDING = DATA / "stock-qd4-w100.qspan.gz"


@pytest.fixture
def opened(tmp_path):
    app = create_app(Settings(record_dir=tmp_path / "sessions"))
    with local_client(app) as client:
        sid = app.state.manager.open_recording(RECORDING).id
        yield client, sid


def _frames(ws, n: int) -> list[dict]:
    out = []
    while len(out) < n:
        msg = ws.receive_json()
        if msg["type"] in ("frame", "error"):
            out.append(msg)
    return out


def test_the_live_socket_sends_the_view_it_is_asked_for_and_charts_only_when_they_change(opened):
    client, sid = opened
    with client.websocket_connect(f"ws://127.0.0.1:8321/api/sessions/{sid}/live", subprotocols=["qspan.v1"]) as ws:
        first = _frames(ws, 1)[0]
        assert first["view"] == {"scope": "all", "op": None, "window_s": 60, "range_s": None}
        assert first["charts"]["groups"] == ["read", "write"] and sum(first["charts"]["requests"]) == 200
        assert [s["scope"] for s in first["scopes"]] == ["all", "disk:disk0", "node:disk0"]
        # the recording's charts do not change: the next frames carry none
        assert _frames(ws, 1)[0]["charts"] is None
        ws.send_text(json.dumps({"type": "view", "scope": "disk:disk0", "op": "write", "window_s": 0}))
        frame = next(f for f in _frames(ws, 5) if f["charts"] is not None)
        assert frame["view"]["op"] == "write" and frame["charts"]["groups"] == ["write"]
        assert sum(frame["charts"]["requests"]) == 100 and all(r["op"] == "write" for r in frame["charts"]["slowest"])
        ws.send_text(json.dumps({"type": "view", "scope": "vda"}))
        assert any(f["type"] == "error" and "scope" in f["message"] for f in _frames(ws, 3))
        ws.send_text("x" * 5000)
        assert any(f["type"] == "error" and "at most 4096" in f["message"] for f in _frames(ws, 3))
        ws.send_text(json.dumps({"type": "view", "program": "BEGIN { exit(); }"}))
        assert any(f["type"] == "error" and "unknown view fields" in f["message"] for f in _frames(ws, 3))


def test_find_pin_and_open_a_request_with_its_named_timeline(opened):
    client, sid = opened
    r = client.get(f"/api/sessions/{sid}/find", params={"op": "write", "scope": "disk:disk0",
                                                           "offset_min": 0, "offset_max": 32 << 20, "min_dur_us": 100})
    assert r.status_code == 200, r.text
    found = r.json()
    assert found["matched"] == len(found["spans"]) > 0
    assert all(s["op"] == "write" and s["offset"] < 32 << 20 and s["dur_ns"] >= 100_000 and s["disk"] == "disk0"
               for s in found["spans"])
    wanted = found["spans"][0]["id"]
    assert client.post(f"/api/sessions/{sid}/spans/{wanted}/pin").json() == {"pinned": wanted}
    got = client.get(f"/api/sessions/{sid}/spans/{wanted}").json()
    assert got["span"]["id"] == wanted and got["timeline_kept"] and got["timeline"]
    # threads by QEMU's names for them: the request's own thread is the iothread
    assert got["threads"][str(got["span"]["tid"])] == "iothread0" and "main loop" in got["threads"].values()
    # segments name the node a coroutine was in, never its pointer
    assert {seg["node"] for seg in got["timeline"] if seg["kind"] == "co"} <= {"disk0", None}
    assert client.get(f"/api/sessions/{sid}/spans/99999999").status_code == 404
    assert client.post(f"/api/sessions/{sid}/spans/99999999/pin").status_code == 404
    # the REST view is the socket's
    charts = client.get(f"/api/sessions/{sid}/charts", params={"window_s": 0}).json()
    assert sum(charts["charts"]["requests"]) == 200
    assert client.get(f"/api/sessions/{sid}/charts", params={"window_s": 7}).status_code == 422
    assert client.get(f"/api/sessions/{sid}/find", params={"scope": "vda"}).status_code == 422


def test_a_recording_s_request_gets_its_timeline_correlated_again(tmp_path):
    """A replay keeps the timelines of a few hundred requests; any other is correlated again from the file."""
    from qspan.live.replay import ReplaySession

    s = ReplaySession("s1", RECORDING)
    s.start()
    kept = set(s.store.timelines)
    victim = next(x.id for x in s.store.ring if x.id in kept)
    want = s.store.timelines[victim].dicts()
    s.store.timelines.clear()
    again = s.timeline_of(victim)
    assert again is not None and again.dicts() == want
    assert s.timeline_of(victim) is again  # cached
    assert s.timeline_of(10 ** 9) is None


def test_exports_hold_the_view_s_selection(opened):
    client, sid = opened
    doc = client.get(f"/api/sessions/{sid}/export/spans.json", params={"scope": "disk:disk0", "op": "read"}).json()
    assert len(doc["spans"]) == 100 and {s["op"] for s in doc["spans"]} == {"read"}
    assert client.get(f"/api/sessions/{sid}/export/spans.json", params={"scope": "bogus"}).status_code == 422


def test_spans_is_a_list_with_the_new_filters(opened):
    client, sid = opened
    r = client.get(f"/api/sessions/{sid}/spans", params={"op": "read", "offset_min": 4096, "offset_max": 8192})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got and all(s["op"] == "read" and s["offset"] < 8192 and s["offset"] + s["bytes"] > 4096 for s in got)
    assert len(client.get(f"/api/sessions/{sid}/spans", params={"limit": 20000}).json()) == 200
