"""Run qspan's own CLI as a child process and wait until its probes are attached.

For the lab experiments and the e2e tests, which drive a workload only once
the tracer sees everything.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from .errors import QspanError
from .paths import REPO


def start_traced(*args: str, attach_timeout_s: float = 120.0) -> subprocess.Popen:
    """Start `qspan ARGS...` (attach or record); return once it printed that it attached.

    Its stderr stays a pipe: callers read the rest with communicate().
    """
    env = dict(os.environ, PYTHONPATH=str(REPO / "backend"))
    proc = subprocess.Popen([sys.executable, "-m", "qspan.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + attach_timeout_s
    seen = ""
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if "attached;" in line:
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    proc.wait()
    raise QspanError(f"qspan {args[0]} did not attach: {seen.strip()[-500:]}")
