"""The session manager's own logic, on stand-in sessions: dropping ended sessions, sharing live frames."""

from __future__ import annotations

import json
import logging
import threading

import pytest
from helpers import local_client

from qspan.errors import QspanError
from qspan.live import SpanStore
from qspan.server import frames
from qspan.server.app import create_app
from qspan.server.sessions import SessionManager
from qspan.server.settings import Settings


class FakeSession:
    """What the manager and the live route read of a LiveSession; no tracer behind it."""

    def __init__(self, sid: str, pid: int, state: str = "attached"):
        self.id, self.pid, self.state, self.error = sid, pid, state, None
        self.profile_name, self.header = "stock", {}
        self.store = SpanStore()  # empty: no tracer feeds it
        self.ticks = 0
        self._lock = threading.Lock()

    def status(self) -> dict:
        return {"id": self.id, "pid": self.pid, "state": self.state, "error": self.error}

    def locked(self):
        return self._lock

    def tick(self) -> None:
        self.ticks += 1

    def stop(self) -> None:
        self.state = "detached"

    def join(self, timeout: float | None = None) -> None:
        pass


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def manager_with(clock: Clock, *sessions: FakeSession, **settings) -> SessionManager:
    m = SessionManager(Settings(**settings), clock=clock)
    for s in sessions:
        m.sessions[s.id] = s
    return m


# -- dropping ended sessions ------------------------------------------------------


def test_at_most_n_ended_sessions_are_kept_oldest_ended_dropped_first():
    clock = Clock()
    live = FakeSession("s0", 100)
    ended = [FakeSession(f"s{i}", 100 + i) for i in range(1, 6)]
    m = manager_with(clock, live, *ended, keep_ended_sessions=2)
    for s in reversed(ended):  # s5 ends first, s1 last
        s.state = "failed" if s.pid % 2 else "detached"
        m.tick()
        clock.t += 1
    assert sorted(m.sessions) == ["s0", "s1", "s2"]
    assert live.ticks == 5, "attached sessions are still ticked"


def test_ended_sessions_are_dropped_a_while_after_they_ended_not_after_they_started():
    clock = Clock()
    old_live, ends_now = FakeSession("s1", 101), FakeSession("s2", 102)
    m = manager_with(clock, old_live, ends_now, ended_session_ttl_s=60)
    m.tick()
    clock.t += 3600  # both have run for an hour
    ends_now.state = "detached"
    m.tick()
    clock.t += 59
    m.tick()
    assert sorted(m.sessions) == ["s1", "s2"]
    clock.t += 2
    m.tick()
    assert sorted(m.sessions) == ["s1"], "an attached session is never dropped, however old"


def test_keep_zero_drops_a_session_at_the_tick_that_sees_it_ended():
    m = manager_with(Clock(), FakeSession("s1", 101, "failed"), keep_ended_sessions=0)
    m.tick()
    assert m.sessions == {}


def test_a_dropped_session_is_gone_from_the_api(tmp_path):
    clock = Clock()
    m = manager_with(clock, FakeSession("s1", 101, "detached"), record_dir=tmp_path, ended_session_ttl_s=10)
    c = local_client(create_app(m.settings, m))
    m.tick()
    assert c.get("/api/sessions").json() == [{"id": "s1", "pid": 101, "state": "detached", "error": None}]
    clock.t += 11
    m.tick()
    assert c.get("/api/sessions").json() == []
    assert c.get("/api/sessions/s1").status_code == 404


def test_bad_limits_are_refused():
    for bad in ({"keep_ended_sessions": -1}, {"ended_session_ttl_s": -1}):
        with pytest.raises(QspanError):
            Settings(**bad).check()


def test_a_failing_session_tick_is_logged_and_the_others_go_on(caplog):
    bad, good = FakeSession("s1", 101), FakeSession("s2", 102)

    def boom():
        raise RuntimeError("correlator bug")

    bad.tick = boom
    m = manager_with(Clock(), bad, good)
    m.tick()
    assert good.ticks == 1
    [rec] = [r for r in caplog.records if r.name == "qspan.server" and "tick failed" in r.getMessage()]
    assert rec.levelno == logging.ERROR and rec.exc_info and "correlator bug" in str(rec.exc_info[1])


def test_a_failed_session_is_logged_once(caplog):
    s = FakeSession("s1", 101)
    m = manager_with(Clock(), s)
    s.state, s.error = "failed", "bpftrace failed (exit status 1): no probes"
    m.tick()
    m.tick()
    msgs = [r.getMessage() for r in caplog.records if r.name == "qspan.server" and r.levelno == logging.WARNING]
    assert msgs == ["session s1 on PID 101 failed: bpftrace failed (exit status 1): no probes"]


# -- live frames ------------------------------------------------------------------


@pytest.fixture
def builds(monkeypatch):
    """Count frame builds (the real builder still runs)."""
    count = {"n": 0}
    real = frames.build_frame

    def counting(s, *args, **kwargs):
        count["n"] += 1
        return real(s, *args, **kwargs)

    monkeypatch.setattr(frames, "build_frame", counting)
    return count


def test_clients_of_one_session_share_a_recent_frame(builds):
    clock = Clock()
    a, b = FakeSession("s1", 101), FakeSession("s2", 102)
    m = manager_with(clock, a, b)
    first = m.frame(a)[0]
    clock.t += frames.FRAME_REUSE_S / 2
    assert m.frame(a)[0] == first and builds["n"] == 1
    assert json.loads(m.frame(b)[0])["status"]["pid"] == 102 and builds["n"] == 2, "each session its own frame"
    clock.t += frames.FRAME_REUSE_S
    a.state = "detached"
    assert json.loads(m.frame(a)[0])["status"]["state"] == "detached" and builds["n"] == 3, "an old frame is rebuilt"


def test_two_servers_never_share_frames(builds):
    """Session ids are per server (s1, s2, ...): frames are the manager's, not the process's."""
    clock = Clock()
    one, two = manager_with(clock, FakeSession("s1", 101)), manager_with(clock, FakeSession("s1", 202))
    assert json.loads(one.frame(one.sessions["s1"])[0])["status"]["pid"] == 101
    assert json.loads(two.frame(two.sessions["s1"])[0])["status"]["pid"] == 202


def test_a_dropped_session_leaves_no_frame_behind():
    clock = Clock()
    s = FakeSession("s1", 101)
    m = manager_with(clock, s, keep_ended_sessions=0)
    m.frame(s)
    assert len(m.frames) == 1
    s.state = "detached"
    m.tick()
    assert m.sessions == {} and len(m.frames) == 0
    m.frame(s)  # a client still holding it gets its last frame; nothing is kept for it
    assert len(m.frames) == 0


def test_live_route_sends_the_managers_frame_then_the_end(tmp_path):
    m = manager_with(Clock(), FakeSession("s1", 101, "detached"), record_dir=tmp_path)
    c = local_client(create_app(m.settings, m))
    with c.websocket_connect("ws://127.0.0.1:8321/api/sessions/s1/live") as ws:  # its default Host: testserver
        frame, end = ws.receive_json(), ws.receive_json()
    assert frame["type"] == "frame" and frame["status"]["pid"] == 101
    assert end == {"type": "end", "status": {"id": "s1", "pid": 101, "state": "detached", "error": None}}


def test_a_new_session_gets_room_under_the_total_cap_and_a_free_space_check(tmp_path, monkeypatch):
    """attach: the oldest finished recording goes to make room (--record-total-mb), and the session
    records with its cap and the free-space check (--record-keep-free-mb)."""
    import os
    import time

    from qspan.server import sessions as sessions_module

    made = {}

    class Recorded(FakeSession):
        def __init__(self, sid, pid, profile, record_dir, **kw):
            super().__init__(sid, pid, "attaching")
            made.update(kw, record_dir=record_dir)
            self.record_path = record_dir / f"new-{sid}.qspan"

        def start(self) -> None:
            pass

    old = tmp_path / "20261201-100000-pid1-s1-9.qspan"
    old.write_bytes(b"\0" * (9 << 20))
    os.utime(old, (time.time() - 60, time.time() - 60))
    monkeypatch.setattr(sessions_module, "LiveSession", Recorded)
    m = SessionManager(Settings(record_dir=tmp_path, record_max_mb=4, record_total_mb=10, record_keep_free_mb=1))
    m.attach(4242, None)
    assert not old.exists()
    assert made["record_max_bytes"] == 4 << 20 and made["record_note"] is None
    assert made["record_room"]() is None  # the test's filesystem has a MiB free
