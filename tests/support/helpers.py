"""What tests share besides fixtures: where things are, and how to run qspan and read the guest.

Tests that need root, bpftrace or QEMU call require_tracing() and fail loudly when they
cannot have them: a skipped e2e test would hide a broken CI machine. Such tests live in
tests/e2e/; require_tracing() refuses to run for a test under tests/unit/ (conftest.py tells
it which test is running), so `make unit` never needs root, bpftrace or QEMU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUPPORT = REPO / "tests" / "support"
DATA = SUPPORT / "data"
GOLDEN = SUPPORT / "golden"
OUTPUT = REPO / "test-output"
UNIT = REPO / "tests" / "unit"
QSPAN = [sys.executable, "-m", "qspan.cli"]

# The file of the test now running; conftest.py sets it for every test.
current_test_path: Path | None = None


def tracer_pids() -> set[int]:
    """bpftrace processes this test run started (conftest.py marks the run in the environment)."""
    marker = f"QSPAN_TEST_RUN={os.environ.get('QSPAN_TEST_RUN', '')}".encode()
    out = subprocess.run(["pgrep", "-x", "bpftrace"], capture_output=True, text=True).stdout
    mine = set()
    for pid in map(int, out.split()):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    mine.add(pid)
        except OSError:
            pass
    return mine


def require_tracing() -> None:
    if current_test_path is not None and current_test_path.is_relative_to(UNIT):
        pytest.fail(f"{current_test_path.relative_to(REPO)} is a unit test but needs real tracing: "
                    "move it to tests/e2e/ (make unit runs without root, bpftrace or QEMU)")
    problems = []
    if os.geteuid() != 0:
        problems.append("not root")
    if not shutil.which("bpftrace"):
        problems.append("bpftrace missing")
    if not shutil.which("qemu-system-x86_64"):
        problems.append("qemu-system-x86_64 missing")
    if problems:
        pytest.fail("this test needs real tracing: " + ", ".join(problems) + " (run scripts/setup.sh as root)")


def run_qspan(*args: str, timeout: float = 300, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*QSPAN, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=env or dict(os.environ), **kw)


def one_clear_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    """qspan failed the way it should: a non-zero exit, one `qspan: error:` line naming `needles`, no traceback."""
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("qspan: error:")]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def guest_clock_fit(spans: list[dict], text: str) -> tuple[float, float, int]:
    """The guest's clock against the host's, from the same requests: each write's start on the
    guest's clock (qspan-load --log's 4th field) against its span's start (the host's kick).
    Returns (rate: host ns per guest ns, by least squares; the residuals' p99 in ns; pairs)."""
    starts = {(op, int(off)): int(t0) for op, off, t0 in re.findall(r"QSPAN-REQ (\w+) (\d+) \d+ (\d+)", text)}
    pairs = [(starts[(s["op"], s["offset"])], s["start_ns"]) for s in spans if (s["op"], s["offset"]) in starts]
    n = len(pairs)
    gx = sum(g for g, _ in pairs) / n
    hy = sum(h for _, h in pairs) / n
    rate = sum((g - gx) * (h - hy) for g, h in pairs) / sum((g - gx) ** 2 for g, _ in pairs)
    resid = sorted(abs((h - hy) - rate * (g - gx)) for g, h in pairs)
    return rate, resid[min(n - 1, int(0.99 * n))], n


def guest_requests(text: str) -> dict[tuple[str, int], int]:
    """The guest's per-request log: (op, offset) -> latency in ns."""
    return {(op, int(off)): int(lat) for op, off, lat in re.findall(r"QSPAN-REQ (\w+) (\d+) (\d+)", text)}


# The accessor functions tracers/offsets.txt reads struct offsets from, as their first bytes in
# Debian's QEMU 7.2 and bookworm-backports' 10.0 (objdump -d); a unit test's ProgramInput gets
# the offsets derived from them, as program_input derives them from the running binary.
ACCESSOR_CODE = {
    (7, 2): {"bdrv_get_node_name": (0x840940, bytes.fromhex("488d87b8400000c3")),
             "bdrv_get_format_name": (0x840210, bytes.fromhex("488b47104885c07403488b00c3")),
             "job_is_internal": (0x84BDB0, bytes.fromhex("48833f000f94c0c3")),
             "job_progress_update": (0x84C0F0, bytes.fromhex("4883c730e9f7b101")),
             "block_acct_idle_time_ns": (0x85A3A0, bytes.fromhex("534889fb8b3d862c9600e8218d1200482b83200100005bc3"))},
    (10, 0): {"bdrv_get_node_name": (0x980340, bytes.fromhex("488d87d840000031ffc3")),
              "bdrv_get_format_name": (0x97FBB0, bytes.fromhex("488b47104885c07403488b0031ffc3")),
              "job_is_internal": (0x98C330, bytes.fromhex("48833f000f94c031ffc3")),
              "job_progress_update": (0x98C690, bytes.fromhex("4883c730e9f73503")),
              "block_acct_idle_time_ns": (0x99C500, bytes.fromhex("534889fb8b3d86011f01e8a16a1500482b83500100005b31ffc3"))},
}


def offsets_for(version: tuple[int, int]) -> dict[str, int]:
    """struct.field -> offset as derived from that build's accessors (7.2's for other versions)."""
    from qspan import catalogue
    from qspan.catalogue.offsets import derive

    return derive(catalogue.load().offsets, ACCESSOR_CODE.get(version, ACCESSOR_CODE[(7, 2)]))


def local_client(app, **kw):
    """A TestClient naming the server as a browser on this host would (Host: 127.0.0.1): a loopback
    server without a token answers to loopback names only (DNS rebinding), not to "testserver"."""
    from fastapi.testclient import TestClient

    return TestClient(app, base_url="http://127.0.0.1:8321", **kw)
