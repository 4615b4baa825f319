"""Run bpftrace against a QEMU process: the subprocess edge of the pipeline.

`TraceSession` starts bpftrace on a generated program, waits until the probes
are attached, then hands the events on until the duration ends, the caller
stops it, or QEMU exits, through the output of the program's transport
(outputs.py: printf lines, map dumps, or qspan's own perf rings). bpftrace's
chatter on stderr (the RLIMIT_MEMLOCK warning here) is tolerated; its errors
become one TracerError. "Lost N events" lines are counted, never hidden.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qspan import runtime
from qspan.errors import TracerError
from qspan.program import BEGIN_MARK, MAP_CAPACITY, Transport
from qspan.program.sites import ANCHOR_PATH, Site
from qspan.target import process_alive
from qspan.transport import sites
from qspan.transport.follow import FOLLOW_S, ThreadFollower
from qspan.transport.pipe import pump, take
from qspan.transport.ringdecode import STRLEN
from qspan.transport.outputs import BatchCallback, LineCallback, LineOutput, LinesCallback, RawCallback, WatermarkCallback, make_output

# Bigger per-CPU perf buffers: the default loses events at ~100k events/s.
PERF_RB_PAGES = "1024"
NOISE = ("couldn't set RLIMIT_MEMLOCK",)
TRACEFS = Path("/sys/kernel/tracing")


@dataclass
class TraceResult:
    reason: str  # duration, stopped, qemu-exited, tracer-died
    event_lines: int
    lost_events: int
    attach_s: float
    traced_s: float  # from attached until qspan asked bpftrace to stop (or it ended by itself)
    stderr: str
    detach_s: float = 0.0  # from then until bpftrace had exited: it detaches its probes one by one
    followed_threads: list[dict] = field(default_factory=list)  # iothreads that appeared while traced (follow.py)

    def summary(self) -> dict:
        return {"reason": self.reason, "event_lines": self.event_lines, "lost_events": self.lost_events,
                "attach_s": round(self.attach_s, 3), "traced_s": round(self.traced_s, 3),
                "detach_s": round(self.detach_s, 3)} | (
                    {"followed_threads": self.followed_threads} if self.followed_threads else {})


def bpftrace_path() -> str:
    from qspan.errors import TracerUnavailable

    path = shutil.which("bpftrace")
    if not path:
        raise TracerUnavailable("bpftrace not found on PATH: install it (apt-get install bpftrace)")
    return path


def check_can_trace() -> None:
    """Fail early, with one clear line (TracerUnavailable), when tracing is impossible here."""
    from qspan.errors import TracerUnavailable

    bpftrace_path()
    if os.geteuid() != 0:
        raise TracerUnavailable("tracing needs root (BPF and uprobes): run qspan as root")
    if not (TRACEFS / "events").is_dir():
        # Tracepoints need tracefs; a minimal system may not have it mounted.
        try:
            subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as err:
            raise TracerUnavailable(f"tracefs is not mounted at {TRACEFS} and mounting it failed: {err}") from err


def stderr_errors(stderr: str) -> str:
    """bpftrace's last error lines, without the noise it prints on every run here."""
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not any(n in ln for n in NOISE)]
    return "; ".join(lines[-5:]) or "no message"


class TraceSession:
    def __init__(self, program_text: str, pid: int, transport: Transport, attach_timeout_s: float = 120.0,
                 all_lines: bool = False, sample_every: int = 1, sites: tuple[Site, ...] = (),
                 anchor_path: str = ANCHOR_PATH, watched: tuple[int, ...] = ()):
        self.program_text = program_text
        # the threads the program watches from attach on; iothreads created later join them (follow.py)
        self.follower = ThreadFollower(pid, watched)
        # probes inside QEMU's functions (transport/sites.py): attached once bpftrace has started
        self.sites, self.anchor_path = sites, anchor_path
        self._site_fds: list[int] = []
        self.transport = transport
        self.all_lines = all_lines  # hand on_line every output line (aggregate mode prints histograms)
        self.pid = pid
        self.attach_timeout_s = attach_timeout_s
        self._proc: subprocess.Popen | None = None
        self._stop_requested = False
        # maps transport: one sampling window in this many is traced (program.WINDOW_MS)
        self.sample_every = sample_every
        self._output: LineOutput | None = None
        self._site_error: TracerError | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="qspan-")

    @property
    def sampling_error(self) -> str | None:
        return self._output.sampling_error if self._output else None

    @property
    def bpftrace_pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stop(self) -> None:
        """Ask the session to end (safe from a signal handler or another thread)."""
        self._stop_requested = True

    def set_sample_every(self, every: int) -> None:
        """Trace one window in `every` from the next window on (safe from any thread; maps transport)."""
        if every < 1:
            raise ValueError(f"sampling factor must be >= 1, not {every}")
        self.sample_every = every

    def run(self, on_line: LineCallback, duration_s: float | None = None,
            on_attached: Callable[[], None] | None = None,
            on_watermark: WatermarkCallback | None = None,
            on_batch: BatchCallback | None = None,
            on_lines: LinesCallback | None = None, on_raw: RawCallback | None = None) -> TraceResult:
        """Trace until done; `on_line` gets every event line (and "Lost N events" lines).

        With the maps and ring transports, see MapOutput for `on_batch`, `on_lines` and `on_watermark`;
        with the ring transport, RingOutput for `on_raw`.
        """
        check_can_trace()
        if not process_alive(self.pid):
            raise TracerError(f"QEMU PID {self.pid} is not running")
        out = self._output = make_output(self.transport.name, on_line, self.all_lines, self.program_text,
                                         on_batch, on_watermark, on_lines, on_raw)
        if self.sites:
            sites.write_anchor(self.anchor_path)
        proc = self._proc = self._spawn()
        t0 = time.monotonic()
        self._stopping_since: float | None = None
        try:
            reason, attached_at = self._follow(proc, out, t0, duration_s, on_attached)
        finally:
            self.follower.close()
            sites.detach(self._site_fds)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            out.close()
            self._errf.seek(0)
            stderr = self._errf.read()
            self._errf.close()
            self._dir.cleanup()
        end = time.monotonic()
        if self._site_error is not None:
            raise self._site_error
        if attached_at is None:
            raise self._attach_failure(reason, stderr)
        if reason == "tracer-died":
            reason = "qemu-exited" if not process_alive(self.pid) else "tracer-died"
        stopped = self._stopping_since if self._stopping_since is not None else end
        stopped = max(stopped, attached_at)
        return TraceResult(reason, out.lines, out.lost, attached_at - t0, stopped - attached_at, stderr, end - stopped,
                           list(self.follower.followed))

    def _spawn(self) -> subprocess.Popen:
        prog = Path(self._dir.name) / "qspan.bt"
        prog.write_text(self.program_text)
        self._errf = open(Path(self._dir.name) / "stderr", "w+")
        # BPFTRACE_STRLEN fixed: the ring transport decodes strings at that size (ringdecode.py).
        env = dict(os.environ, BPFTRACE_PERF_RB_PAGES=PERF_RB_PAGES, BPFTRACE_MAP_KEYS_MAX=str(MAP_CAPACITY),
                   BPFTRACE_STRLEN=str(STRLEN))
        # -p: uprobes are attached to this process only, so other QEMUs running the
        # same binary never hit them (the /pid == N/ filters alone would still trap there).
        # Parent-death signal: bpftrace ends if qspan dies, even when no stdout write would fail then.
        cmd = [*_pdeathsig(required=not self.transport.heartbeat), bpftrace_path(), "-p", str(self.pid), str(prog)]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._errf, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)

    def _should_stop(self, now: float, t0: float, attached_at: float | None, duration_s: float | None) -> str | None:
        if attached_at is None and now - t0 > self.attach_timeout_s:
            return "attach-timeout"
        if self._stop_requested:
            return "stopped"
        if attached_at is not None and duration_s is not None and now - attached_at >= duration_s:
            return "duration"
        if not process_alive(self.pid):
            return "qemu-exited"
        return None

    def _follow(self, proc: subprocess.Popen, out: LineOutput, t0: float, duration_s: float | None,
                on_attached: Callable[[], None] | None) -> tuple[str, float | None]:
        """Read bpftrace's output until it exits; returns (why it ended, when the probes were attached)."""
        assert proc.stdout is not None
        # bpftrace's output goes into memory on a thread of its own (pipe.py says why)
        chunks: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        threading.Thread(target=pump, args=(proc.stdout, chunks), name="qspan-bpftrace-out", daemon=True).start()
        reason, attached_at, stopping_since = "tracer-died", None, None
        buf = b""
        followed_at = 0.0
        while True:
            now = time.monotonic()
            if stopping_since is None:
                why = self._should_stop(now, t0, attached_at, duration_s)
                if why:
                    reason, stopping_since = why, self._interrupt(now)
                    self._stopping_since = stopping_since
                else:
                    out.set_sample_every(self.sample_every)
                    if attached_at is not None and now - followed_at >= FOLLOW_S:
                        followed_at = now
                        self.follower.check(now - attached_at)
            elif now - stopping_since > 10:
                proc.kill()
            chunk, eof = take(chunks, out.poll_s)
            # A read's records become events, spans and a recording's bytes in one go, objects
            # without cycles: no collector walks them meanwhile (runtime.collector_paused).
            with runtime.collector_paused():
                if attached_at is not None:
                    out.poll()
                if chunk:
                    buf += chunk
                    *complete, buf = buf.split(b"\n")
                    for raw in complete:
                        line = raw.decode("utf-8", "replace")
                        if line == BEGIN_MARK and stopping_since is not None:
                            continue  # stopped before bpftrace attached: attach nothing more
                        if line == BEGIN_MARK:
                            if not self._attach_sites(proc):
                                reason, stopping_since = "site-failed", self._interrupt(time.monotonic())
                                continue
                            attached_at = time.monotonic()
                            out.attached(proc.pid, self.sample_every)
                            self.follower.open(proc.pid)
                            if on_attached:
                                on_attached()
                        else:
                            out.handle(line)
            if eof:
                sites.detach(self._site_fds)  # bpftrace is gone: nothing would store what the sites see
                for raw in buf.split(b"\n"):
                    out.handle(raw.decode("utf-8", "replace"))
                out.finish(proc)
                return reason, attached_at

    def _attach_sites(self, proc: subprocess.Popen) -> bool:
        """Attach the program's probe sites inside QEMU (bpftrace has attached the rest)."""
        try:
            self._site_fds = sites.attach(self.sites, proc.pid, self.anchor_path, self.pid)
        except TracerError as err:
            self._site_error = err
            return False
        return True

    def _attach_failure(self, reason: str, stderr: str) -> TracerError:
        if reason == "attach-timeout":
            return TracerError(f"bpftrace did not attach within {self.attach_timeout_s:.0f} s: {stderr_errors(stderr)}")
        if not process_alive(self.pid):
            return TracerError(f"QEMU PID {self.pid} exited before the probes were attached")
        rc = self._proc.returncode if self._proc else None
        how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit status {rc}"
        return TracerError(f"bpftrace failed ({how}): {stderr_errors(stderr)}")

    def _interrupt(self, now: float) -> float:
        # The sites go first, so no event lands in the maps after END has drained them.
        sites.detach(self._site_fds)
        if self._output is not None:
            self._output.stopping()
        # SIGINT makes bpftrace run END, flush its buffers and exit cleanly.
        if self._proc and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        return now


def _pdeathsig(required: bool) -> list[str]:
    """setpriv (util-linux) sends bpftrace SIGTERM when the thread that started it exits."""
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, "--pdeathsig", "TERM", "--"]
    if required:  # without a heartbeat on stdout, nothing else would end bpftrace if qspan died
        raise TracerError("setpriv (util-linux) is not installed: the ring transport needs it so that bpftrace "
                          "ends if qspan is killed (apt-get install util-linux, or --transport maps)")
    return []
