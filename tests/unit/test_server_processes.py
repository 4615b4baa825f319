"""/api/processes inspects each QEMU once per (PID, binary, start time)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

import pytest
from helpers import local_client

from qspan import target
from qspan.errors import NotQemu
from qspan.server import targets
from qspan.server.app import create_app
from qspan.server.settings import Settings

PID = 4242
QEMU = "/usr/bin/qemu-system-x86_64"


class Host:
    """A pretend host: which QEMUs run, with which binary and start time; counts inspections."""

    def __init__(self, monkeypatch):
        self.procs = {PID: (QEMU, 1000)}
        self.inspected: list[int] = []
        self.fail: Exception | None = None
        monkeypatch.setattr(target, "list_qemu_pids", lambda: sorted(self.procs))
        monkeypatch.setattr(target, "inspect", self.inspect)
        monkeypatch.setattr(targets, "process_exe", lambda pid: self._proc(pid)[0])
        monkeypatch.setattr(targets, "process_start_time", lambda pid: self._proc(pid)[1])

    def _proc(self, pid):
        if pid not in self.procs:
            raise FileNotFoundError(pid)
        return self.procs[pid]

    def inspect(self, pid: int, use_qmp: bool = True) -> target.Target:
        self.inspected.append(pid)
        if self.fail:
            raise self.fail
        exe = self.procs[pid][0]
        return target.Target(pid, exe, f"/proc/{pid}/root{exe}", "9.1.0", "", 0, f"/run/qmp-{pid}.sock")


@pytest.fixture
def host(monkeypatch):
    return Host(monkeypatch)


@pytest.fixture
def app(tmp_path):
    return create_app(Settings(record_dir=tmp_path))


def test_a_qemu_is_inspected_once_for_many_refreshes(host, app):
    c = local_client(app)
    first = c.get("/api/processes").json()
    assert first == [{"pid": PID, "exe": QEMU, "version": "9.1.0", "qmp": f"/run/qmp-{PID}.sock",
                      "probe_source": "uprobe", "profile": "stock", "session": None}]
    assert c.get("/api/processes").json() == first
    assert host.inspected == [PID]


def test_a_reused_pid_or_an_execd_binary_is_inspected_again(host, app):
    c = local_client(app)
    c.get("/api/processes")
    host.procs[PID] = (QEMU, 2000)  # QEMU exited, a new one got its PID
    c.get("/api/processes")
    assert host.inspected == [PID, PID]
    host.procs[PID] = ("/usr/local/bin/qemu-system-aarch64", 2000)  # the same process exec'd another QEMU
    assert c.get("/api/processes").json()[0]["exe"] == "/usr/local/bin/qemu-system-aarch64"
    assert host.inspected == [PID, PID, PID]


def test_errors_are_cached_too_and_gone_pids_forgotten(host, app):
    c = local_client(app)
    host.fail = NotQemu(f"PID {PID} is not QEMU (its binary is /bin/sleep)")
    for _ in range(2):
        assert c.get("/api/processes").json() == [{"pid": PID, "error": str(host.fail), "session": None}]
    assert host.inspected == [PID]
    del host.procs[PID]
    assert c.get("/api/processes").json() == []
    assert len(app.state.manager.targets) == 0


def test_a_process_that_exits_while_listed_is_left_out(host, app, monkeypatch):
    monkeypatch.setattr(target, "list_qemu_pids", lambda: [PID, PID + 1])  # PID + 1 is gone by the time we look
    assert [row["pid"] for row in local_client(app).get("/api/processes").json()] == [PID]


def test_an_unexpected_inspection_failure_is_logged_with_its_traceback(host, app, caplog):
    host.fail = KeyError("thread-id")
    assert local_client(app).get("/api/processes").json()[0]["error"] == "internal error: KeyError('thread-id')"
    [rec] = [r for r in caplog.records if r.name == "qspan.server" and r.levelno == logging.ERROR]
    assert f"PID {PID}" in rec.getMessage() and rec.exc_info[0] is KeyError


def test_the_live_session_on_a_qemu_is_shown(host, app):
    class Attached:
        id, pid, state = "s7", PID, "attached"

    app.state.manager.sessions["s7"] = Attached()
    assert local_client(app).get("/api/processes").json()[0]["session"] == "s7"


def test_start_time_is_field_22_of_proc_stat():
    child = subprocess.Popen(["sleep", "30"])
    try:
        with open(f"/proc/{child.pid}/stat") as f:
            want = int(f.read().split(") ", 1)[1].split()[19])
        assert targets.process_start_time(child.pid) == want
        assert targets.process_start_time(os.getpid()) <= want
        assert targets.process_identity(child.pid) == (child.pid, os.path.realpath(shutil.which("sleep")), want)
    finally:
        child.kill()
        child.wait()
    assert targets.process_identity(child.pid) is None


def test_an_entry_is_inspected_again_once_it_is_old(host):
    # QEMU may load a profile's library after it started: the listing must not say "stock" for ever.
    now = [0.0]
    cache = targets.TargetCache(max_age_s=30, clock=lambda: now[0])
    cache.rows()
    now[0] = 29.0
    cache.rows()
    assert host.inspected == [PID]
    now[0] = 31.0
    cache.rows()
    assert host.inspected == [PID, PID]
