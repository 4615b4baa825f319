"""What tests share besides fixtures: where things are, and how to run qspan and read the guest.

Tests that need root, bpftrace or QEMU call require_tracing() and fail loudly when they
cannot have them: a skipped e2e test would hide a broken CI machine.
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
QSPAN = [sys.executable, "-m", "qspan.cli"]


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
    return subprocess.run([*QSPAN, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=env or dict(os.environ), **kw)


def guest_requests(text: str) -> dict[tuple[str, int], int]:
    """The guest's per-request log: (op, offset) -> latency in ns."""
    return {(op, int(off)): int(lat) for op, off, lat in re.findall(r"QSPAN-REQ (\w+) (\d+) (\d+)", text)}
