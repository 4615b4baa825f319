"""A live session whose recording runs out of disk: the recording stops, the live view goes on.

Real parts: `qspan serve` with its record directory on a small tmpfs (mounted in a mount
namespace of the server's own: the host sees nothing of it), the lab QEMU, guest writes. First
the filesystem fills up (ENOSPC, with nothing left free on purpose); then qspan's own free-space
floor (--record-keep-free-mb) stops the recording before that.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from helpers import require_tracing
from qspanlab import lab
from qspanlab.harness import ServerProcess

pytestmark = pytest.mark.e2e
WRITES = 9000  # at 1,500/s: ~13 MB of ring recording (~1.4 kB a request), more than either tmpfs holds


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    require_tracing()
    d = tmp_path_factory.mktemp("lab")
    info = lab.up(d)
    yield info
    lab.down(d)


def _server_on_a_small_disk(scratch: Path, size_mb: int, *extra: str) -> ServerProcess:
    wrapper = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
               f'mount -t tmpfs -o size={size_mb}m qspan-test-disk "{scratch}" && exec "$@"', "sh")
    return ServerProcess("--record-dir", str(scratch), *extra, wrapper=wrapper).wait_ready()


def _trace_writes(server: ServerProcess, vm) -> tuple[dict, dict]:
    """Attach, let the guest write, wait for the spans: the session's status and breakdown."""
    sid = server.attach(vm.pid)
    try:
        res = lab.load(vm, f"--op write --qd 4 --count {WRITES} --rate 1500")
        assert res.rc == 0 and res.summary["errors"] == 0, res.output[-500:]
        deadline = time.monotonic() + 30
        while True:  # the spans of the last requests reach the store within a second or so
            doc = server.get(f"/api/sessions/{sid}")[1]
            status, breakdown = doc["status"], doc["breakdown"]
            done = breakdown.get("write", {}).get("requests", 0) + status["sampling"]["sampled_out"]
            if done >= WRITES or time.monotonic() > deadline:
                return status, breakdown
            time.sleep(0.5)
    finally:
        server.request("DELETE", f"/api/sessions/{sid}")


def test_a_full_disk_stops_the_recording_and_the_live_view_goes_on(vm, tmp_path):
    scratch = tmp_path / "disk"
    scratch.mkdir()
    server = _server_on_a_small_disk(scratch, 4, "--record-keep-free-mb", "0", "--record-max-mb", "0")
    try:
        status, breakdown = _trace_writes(server, vm)
    finally:
        server.stop()
    assert status["state"] == "attached", status
    assert status["recording_capped"] and status["recording_stopped"] == "write failed: No space left on device"
    assert 0 < status["recording_bytes"] <= 4 << 20
    # every guest write a span (or counted as cut by sampling, if the server fell behind)
    assert breakdown["write"]["requests"] + status["sampling"]["sampled_out"] == WRITES, status
    assert not any(scratch.iterdir()), "the tmpfs was the server's namespace's only"


def test_the_free_space_floor_stops_it_first(vm, tmp_path):
    scratch = tmp_path / "disk"
    scratch.mkdir()
    server = _server_on_a_small_disk(scratch, 16, "--record-keep-free-mb", "12")
    try:
        status, breakdown = _trace_writes(server, vm)
    finally:
        server.stop()
    assert status["recording_capped"], status
    assert status["recording_stopped"].endswith("MiB qspan leaves free (--record-keep-free-mb)"), status
    # stopped at the first check past the floor: 4 MiB of room, checked at the start and every MiB
    assert status["recording_bytes"] < 16 << 20
    assert breakdown["write"]["requests"] + status["sampling"]["sampled_out"] == WRITES, status
