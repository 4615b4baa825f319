"""Errors reach HTTP clients with the status they carry, through the app's one QspanError handler.

No tracing here: attaching stops at target inspection (bpftrace's checks are stubbed
where a test does not exercise them), and nothing is attached.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from helpers import local_client

from qspan import errors, target
from qspan.server.app import create_app
from qspan.server.settings import Settings
from qspan.transport import bpftrace

MISSING_PID = 99_999_999  # above any pid_max (2**22): no process has it


@pytest.fixture
def client(tmp_path):
    return local_client(create_app(Settings(record_dir=tmp_path / "sessions")), raise_server_exceptions=False)


@pytest.fixture
def can_trace(monkeypatch, tmp_path):
    """bpftrace's host checks pass, as non-root and without bpftrace, so attaching goes on to
    inspect the target (nothing is run: every test here fails before bpftrace would start)."""
    (tmp_path / "tracefs" / "events").mkdir(parents=True)
    monkeypatch.setattr(bpftrace.shutil, "which", lambda name: f"/nonexistent/bin/{name}")
    monkeypatch.setattr(bpftrace.os, "geteuid", lambda: 0)
    monkeypatch.setattr(bpftrace, "TRACEFS", tmp_path / "tracefs")


def test_each_error_family_keeps_its_exit_code_and_carries_a_status():
    cases = [
        (errors.QspanError, 1, 422), (errors.TargetError, 3, 422), (errors.NoSuchProcess, 3, 404),
        (errors.NotQemu, 3, 422), (errors.TracerError, 4, 422), (errors.TracerUnavailable, 4, 503),
        (errors.RecordingError, 5, 422), (errors.CatalogueError, 6, 500),
        (errors.NoSuchSession, 1, 404), (errors.AlreadyTraced, 1, 409),
    ]
    for cls, exit_code, status in cases:
        assert (cls.exit_code, cls.http_status) == (exit_code, status), cls.__name__
    assert issubclass(errors.NoSuchProcess, errors.TargetError) and issubclass(errors.TracerUnavailable, errors.TracerError)


def test_one_handler_turns_any_qspan_error_into_its_status(tmp_path):
    app = create_app(Settings(record_dir=tmp_path))

    @app.get("/boom/{name}")
    def boom(name: str):
        raise getattr(errors, name)(f"{name} happened")

    c = local_client(app, raise_server_exceptions=False)
    for name, status in [("NoSuchProcess", 404), ("NotQemu", 422), ("TracerUnavailable", 503), ("TracerError", 422),
                         ("AlreadyTraced", 409), ("NoSuchSession", 404), ("CatalogueError", 500), ("QspanError", 422)]:
        r = c.get(f"/boom/{name}")
        assert (r.status_code, r.json()) == (status, {"detail": f"{name} happened"}), name


def test_attach_to_a_pid_nobody_has_is_404(client, can_trace):
    r = client.post("/api/sessions", json={"pid": MISSING_PID})
    assert r.status_code == 404 and f"no process with PID {MISSING_PID}" in r.json()["detail"]


def test_attach_to_a_process_that_is_not_qemu_is_422(client, can_trace):
    r = client.post("/api/sessions", json={"pid": os.getpid()})
    assert r.status_code == 422 and "is not QEMU" in r.json()["detail"]


def test_status_comes_from_the_error_type_not_its_words(client, can_trace, monkeypatch):
    """A profile named "rootfs" is the client's mistake (422), though its message says "root"."""
    exe = "/usr/bin/qemu-system-x86_64"
    monkeypatch.setattr(target, "inspect", lambda pid, use_qmp=True: target.Target(pid, exe, exe, "9.1.0", "", 0, None))
    r = client.post("/api/sessions", json={"pid": os.getpid(), "profile": "rootfs"})
    assert r.status_code == 422 and "no profile 'rootfs'" in r.json()["detail"]


def test_tracing_impossible_on_this_host_is_503(client, monkeypatch):
    monkeypatch.setattr(bpftrace.shutil, "which", lambda name: None)
    r = client.post("/api/sessions", json={"pid": os.getpid()})
    assert r.status_code == 503 and "bpftrace not found" in r.json()["detail"]

    monkeypatch.setattr(bpftrace.shutil, "which", lambda name: "/usr/bin/bpftrace")
    monkeypatch.setattr(bpftrace.os, "geteuid", lambda: 1000)
    r = client.post("/api/sessions", json={"pid": os.getpid()})
    assert r.status_code == 503 and "needs root" in r.json()["detail"]

    # no tracefs, and mounting it fails: the message names neither root nor bpftrace
    def mount(*args, **kwargs):
        raise OSError("mount: permission denied")

    monkeypatch.setattr(bpftrace.os, "geteuid", lambda: 0)
    monkeypatch.setattr(bpftrace, "TRACEFS", Path("/nonexistent/tracefs"))  # mount() is stubbed: never created
    monkeypatch.setattr(bpftrace.subprocess, "run", mount)
    r = client.post("/api/sessions", json={"pid": os.getpid()})
    assert r.status_code == 503 and "tracefs is not mounted" in r.json()["detail"]


def test_unknown_session_is_404_on_every_route(client):
    for method, path in [("GET", "/api/sessions/nope"), ("DELETE", "/api/sessions/nope"),
                         ("GET", "/api/sessions/nope/spans"), ("GET", "/api/sessions/nope/spans/1"),
                         ("GET", "/api/sessions/nope/latency"), ("GET", "/api/sessions/nope/export/spans.json"),
                         ("GET", "/api/sessions/nope/export/perfetto.json"), ("GET", "/api/sessions/nope/crosscheck"),
                         ("POST", "/api/sessions/nope/crosscheck")]:
        r = client.request(method, path)
        assert (r.status_code, r.json()) == (404, {"detail": "no session 'nope'"}), path


def test_program_text_is_refused_not_ignored(client, can_trace):
    """An extra field is a 422 naming it, before the PID is even looked at (that PID would be a 404)."""
    r = client.post("/api/sessions", json={"pid": MISSING_PID, "program": "BEGIN { exit(); }"})
    assert r.status_code == 422
    assert [(e["type"], e["loc"]) for e in r.json()["detail"]] == [("extra_forbidden", ["body", "program"])]
    schema = client.get("/openapi.json").json()["components"]["schemas"]["AttachRequest"]
    assert set(schema["properties"]) == {"pid", "profile", "qemu_accounting"} and schema["additionalProperties"] is False
    assert schema["properties"]["qemu_accounting"]["type"] == "boolean"
    check = client.get("/openapi.json").json()["components"]["schemas"]["CrossCheckRequest"]
    assert set(check["properties"]) == {"boundaries_us"} and check["additionalProperties"] is False


def test_expected_errors_are_logged_without_a_traceback(client, can_trace, caplog):
    caplog.set_level(logging.INFO, logger="qspan.server")
    client.post("/api/sessions", json={"pid": MISSING_PID})
    records = [r for r in caplog.records if r.name == "qspan.server" and "no process" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.INFO and records[0].exc_info is None
    assert "POST /api/sessions: 404" in records[0].getMessage()
