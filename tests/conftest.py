"""Shared fixtures. Tests that need root, bpftrace or QEMU fail loudly when they
cannot have them: a skipped e2e test would hide a broken CI machine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
OUTPUT = REPO / "test-output"
QSPAN = [sys.executable, "-m", "qspan.cli"]

sys.path.insert(0, str(REPO / "backend"))


def require_tracing() -> None:
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
    return subprocess.run(
        [*QSPAN, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env=env or dict(os.environ, PYTHONPATH=str(REPO / "backend")), **kw,
    )


def guest_requests(text: str) -> dict[tuple[str, int], int]:
    """The guest's per-request log: (op, offset) -> latency in ns."""
    return {(op, int(off)): int(lat) for op, off, lat in re.findall(r"QSPAN-REQ (\w+) (\d+) (\d+)", text)}


# Every process this test run starts inherits this marker, bpftrace included: the leak check
# must never mistake (or kill) another run's tracer on the same machine.
RUN_MARKER = f"QSPAN_TEST_RUN={os.getpid()}-{time.time_ns()}"
os.environ["QSPAN_TEST_RUN"] = RUN_MARKER.split("=", 1)[1]


def _tracer_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-x", "bpftrace"], capture_output=True, text=True).stdout
    mine = set()
    for pid in map(int, out.split()):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if RUN_MARKER.encode() in f.read().split(b"\0"):
                    mine.add(pid)
        except OSError:
            pass
    return mine


@pytest.fixture(autouse=True)
def no_leaked_tracers():
    """No test may leave a bpftrace attached to anything."""
    before = _tracer_pids()
    yield
    leaked = _tracer_pids() - before
    if leaked:
        for pid in leaked:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        pytest.fail(f"test leaked bpftrace processes {sorted(leaked)}")


@pytest.fixture(scope="session")
def output_dir() -> Path:
    OUTPUT.mkdir(exist_ok=True)
    return OUTPUT
