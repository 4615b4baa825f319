"""Run qspan's own CLI as a child process: a tracer, until its probes are
attached, or the server, until it answers.

For the lab experiments, the benchmarks and the e2e tests, which drive a
workload only once the tracer sees everything.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from qspan.errors import QspanError
from qspanlab.lab import REPO

# Debian's Chromium, headless, as the browser tests and bench/dashboard.py launch it: no sandbox
# (root in CI), no GPU, and nothing that would reach for the network on its own.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def start_traced(*args: str, attach_timeout_s: float = 120.0, python: str = sys.executable,
                 wrapper: tuple[str, ...] = ()) -> subprocess.Popen:
    """Start `qspan ARGS...` (attach or record); return once it printed that it attached.

    `python`: the interpreter whose qspan runs (bench/overhead.py --baseline: another build).
    `wrapper`: a command that runs it (tests/e2e/test_debuginfo.py: in a mount namespace of its own).
    Its stderr stays a pipe: callers read the rest with communicate().
    """
    env = dict(os.environ)
    proc = subprocess.Popen([*wrapper, python, "-m", "qspan.cli", *args], cwd=REPO, env=env,
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


def bpftrace_targets() -> dict[int, int]:
    """Every bpftrace on the host that traces a process (-p PID): bpftrace PID -> the traced PID."""
    found = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"bpftrace") and b"-p" in argv:
            i = argv.index(b"-p")
            if i + 1 < len(argv) and argv[i + 1].isdigit():
                found[int(p)] = int(argv[i + 1])
    return found


def bpftraces_of(pid: int) -> list[int]:
    """bpftrace processes tracing QEMU `pid` (qspan runs it with -p PID)."""
    return sorted(b for b, traced in bpftrace_targets().items() if traced == pid)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`qspan serve` in a child process on a free port, with a small JSON client for its API."""

    def __init__(self, *extra: str, host: str = "127.0.0.1", wrapper: tuple[str, ...] = ()):
        self.port = free_port()
        self.host = host
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        # stderr to a file, not a pipe: nobody reads a pipe during a long run, and a
        # full one would block the server mid-benchmark
        self._stderr = tempfile.TemporaryFile("a+")  # O_APPEND: reading it never moves the server's writes
        # wrapper: a command that runs it (tests/e2e/test_disk.py: in a mount namespace of its own)
        self.proc = subprocess.Popen([*wrapper, sys.executable, "-m", "qspan.cli", "serve", "--host", host,
                                      "--port", str(self.port), *extra],
                                     cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=self._stderr, text=True)

    def stderr(self) -> str:
        """What the server wrote to stderr so far (or in all, once stopped)."""
        if self._stderr.closed:
            return self._stderr_text
        self._stderr.seek(0)
        return self._stderr.read()

    def wait_ready(self, timeout: float = 30, headers: dict | None = None) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.stderr()}")
            try:
                self.get("/api/sessions", headers=headers)
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        raise RuntimeError("server did not come up")

    def attach(self, pid: int, timeout_s: float = 120.0) -> str:
        """Attach a session to QEMU `pid` through the API; its id, once the probes are attached."""
        status, body = self.request("POST", "/api/sessions", {"pid": pid})
        if status != 201:
            raise QspanError(f"attaching to PID {pid}: HTTP {status}: {body}")
        sid = body["id"]
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.get(f"/api/sessions/{sid}")[1]["status"]
            if st["state"] == "attached":
                return sid
            if st["state"] != "attaching":
                raise QspanError(f"session {sid} on PID {pid} is {st['state']}: {st.get('error')}")
            if time.monotonic() > deadline:
                raise QspanError(f"session {sid} on PID {pid} did not attach within {timeout_s:.0f} s")
            time.sleep(0.5)

    def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def request_text(self, method: str, path: str, headers: dict | None = None) -> tuple[int, str]:
        """A request whose answer is not JSON (/metrics): its status and body."""
        req = urllib.request.Request(self.base + path, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def get(self, path: str, headers: dict | None = None):
        status, body = self.request("GET", path, headers=headers)
        if status >= 500:
            raise ConnectionError(status)
        return status, body

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not self._stderr.closed:
            self._stderr_text = self.stderr()
            self._stderr.close()
