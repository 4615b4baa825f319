"""Shared fixtures. Tests that need root, bpftrace or QEMU fail loudly when they
cannot have them: a skipped e2e test would hide a broken CI machine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
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


def _tracer_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "bpftrace .*qspan"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


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
