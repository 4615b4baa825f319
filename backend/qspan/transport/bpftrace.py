"""Run bpftrace against a QEMU process: the subprocess edge of the pipeline.

`TraceSession` starts bpftrace on a generated program, waits until the probes
are attached, then hands every event line to a callback until the duration
ends, the caller stops it, or QEMU exits. bpftrace's chatter on stderr (the
RLIMIT_MEMLOCK warning on this kind of machine) is tolerated; its errors
become one TracerError message. "Lost N events" lines are counted, never hidden.
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
from dataclasses import dataclass
from pathlib import Path

from qspan.errors import TracerError
from qspan.transport.bpfmaps import EventMaps
from qspan.transport.text import LOST_RE, MapDumpDecoder, parse_flush_mark
from qspan.program import BEGIN_MARK, FLUSH_MARK, MAP_CAPACITY, MAP_SIDES, SKIP_MAP
from qspan.target import process_alive

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
    traced_s: float
    stderr: str

    def summary(self) -> dict:
        return {
            "reason": self.reason,
            "event_lines": self.event_lines,
            "lost_events": self.lost_events,
            "attach_s": round(self.attach_s, 3),
            "traced_s": round(self.traced_s, 3),
        }


def bpftrace_path() -> str:
    path = shutil.which("bpftrace")
    if not path:
        raise TracerError("bpftrace not found on PATH: install it (apt-get install bpftrace)")
    return path


def check_can_trace() -> None:
    """Fail early, with one clear line, when tracing is impossible here."""
    bpftrace_path()
    if os.geteuid() != 0:
        raise TracerError("tracing needs root (BPF and uprobes): run qspan as root")
    if not (TRACEFS / "events").is_dir():
        # Tracepoints need tracefs; a minimal system may not have it mounted.
        try:
            subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as err:
            raise TracerError(f"tracefs is not mounted at {TRACEFS} and mounting it failed: {err}") from err


def _pump(stream, chunks: "queue.SimpleQueue[bytes]") -> None:
    """Read a pipe until EOF into `chunks`; an empty chunk marks the end."""
    fd = stream.fileno()
    try:
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.put(chunk)
    except OSError:
        pass
    finally:
        chunks.put(b"")


def stderr_errors(stderr: str) -> str:
    """bpftrace's last error lines, without the noise it prints on every run here."""
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not any(n in ln for n in NOISE)]
    return "; ".join(lines[-5:]) or "no message"


class TraceSession:
    def __init__(self, program_text: str, pid: int, attach_timeout_s: float = 120.0, transport: str = "maps",
                 all_lines: bool = False, sample_every: int = 1):
        self.program_text = program_text
        self.transport = transport
        self.all_lines = all_lines  # hand on_line every output line (aggregate mode prints histograms)
        self.pid = pid
        self.attach_timeout_s = attach_timeout_s
        self._proc: subprocess.Popen | None = None
        self._stop_requested = False
        # maps transport: one sampling window in this many is traced (program.WINDOW_MS)
        self.sample_every = sample_every
        self.sampling_error: str | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="qspan-")

    def stop(self) -> None:
        """Ask the session to end (safe from a signal handler or another thread)."""
        self._stop_requested = True

    def set_sample_every(self, every: int) -> None:
        """Trace one window in `every` from the next window on (safe from any thread; maps transport)."""
        if every < 1:
            raise ValueError(f"sampling factor must be >= 1, not {every}")
        self.sample_every = every

    def run(self, on_line: Callable[[str], None], duration_s: float | None = None,
            on_attached: Callable[[], None] | None = None,
            on_watermark: Callable[[int], None] | None = None,
            on_batch: Callable[[int, list[tuple]], None] | None = None) -> TraceResult:
        """Trace until done; `on_line` gets every event line (and "Lost N events" lines).

        With the maps transport, `on_watermark(ts_ns)` is called after each dump:
        all events stamped before ts_ns (less a moment) have then been handed out.
        If `on_batch(lost, entries)` is given, the maps transport hands it each
        dump's entries instead, as (TS_NS, CPU, SEQ, TID, CODE, ARG0..ARG3) tuples
        in time order, held back so that successive batches stay in order (no text
        in between: the live path's fast lane); `on_line` then gets the rest.
        """
        check_can_trace()
        if not process_alive(self.pid):
            raise TracerError(f"QEMU PID {self.pid} is not running")
        prog = Path(self._dir.name) / "qspan.bt"
        prog.write_text(self.program_text)
        errf = open(Path(self._dir.name) / "stderr", "w+")
        env = dict(os.environ, BPFTRACE_PERF_RB_PAGES=PERF_RB_PAGES, BPFTRACE_MAP_KEYS_MAX=str(MAP_CAPACITY))
        t0 = time.monotonic()
        # -p: uprobes are attached to this process only, so other QEMUs running the
        # same binary never hit them (the /pid == N/ filters alone would still trap there).
        self._proc = subprocess.Popen(
            [bpftrace_path(), "-p", str(self.pid), str(prog)], stdout=subprocess.PIPE, stderr=errf, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True,
        )
        attached_at = None
        lines = lost = 0
        decoder = MapDumpDecoder()

        def emit(line: str) -> None:
            nonlocal lines, lost
            if line[:1].isdigit():
                lines += 1
                on_line(line)
            else:
                m = LOST_RE.search(line)
                if m:
                    lost += int(m.group(1))
                    on_line(line)
                elif self.all_lines:
                    on_line(line)

        maps: EventMaps | None = None
        skip_set = 0  # what the program's @qspan_skip holds

        def deliver(watermark_ns: int, hold_ns: int) -> None:
            nonlocal lines, lost
            if on_batch is None:
                for out in decoder.flush(watermark_ns):
                    emit(out)
                return
            n_lost, entries = decoder.release(watermark_ns, hold_ns)
            lines += len(entries)
            lost += n_lost
            if n_lost or entries:
                on_batch(n_lost, entries)

        def handle(line: str) -> None:
            if line.startswith("@qspan_ev"):
                return  # bpftrace printing what is left in a map as it exits: we read the maps ourselves
            if line.startswith(FLUSH_MARK):
                ts, side = parse_flush_mark(line)
                if maps is not None:
                    decoder.add(maps.drain(side))
                deliver(ts, hold_ns=2_000_000)
                if on_watermark:
                    on_watermark(decoder.watermark_ns)
            else:
                emit(line)

        reason = "tracer-died"
        buf = b""
        assert self._proc.stdout is not None
        # A thread only moves bpftrace's output into memory, so bpftrace never waits
        # on a full pipe while we correlate: it would stop draining its perf buffers
        # and the maps it prints and clears, and events would be lost.
        chunks: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        pump = threading.Thread(target=_pump, args=(self._proc.stdout, chunks), name="qspan-bpftrace-out", daemon=True)
        pump.start()
        eof = False
        stopping_since = None
        try:
            while True:
                now = time.monotonic()
                if stopping_since is None:
                    if attached_at is None and now - t0 > self.attach_timeout_s:
                        reason = "attach-timeout"
                        stopping_since = self._interrupt(now)
                    elif self._stop_requested:
                        reason = "stopped"
                        stopping_since = self._interrupt(now)
                    elif attached_at is not None and duration_s is not None and now - attached_at >= duration_s:
                        reason = "duration"
                        stopping_since = self._interrupt(now)
                    elif not process_alive(self.pid):
                        reason = "qemu-exited"
                        stopping_since = self._interrupt(now)
                elif now - stopping_since > 10:
                    self._proc.kill()
                if maps is not None and stopping_since is None and self.sample_every - 1 != skip_set:
                    skip_set = self.sample_every - 1
                    try:
                        maps.set_skip(skip_set)
                    except TracerError as err:  # sampling is a relief valve: tracing goes on without it
                        self.sampling_error = str(err)
                parts: list[bytes] = []
                try:
                    parts.append(chunks.get(timeout=0.1))
                    while parts[-1]:  # take everything already read, then split once
                        parts.append(chunks.get_nowait())
                except queue.Empty:
                    pass
                eof = eof or (bool(parts) and not parts[-1])
                chunk = b"".join(parts)
                if chunk:
                    buf += chunk
                    *complete, buf = buf.split(b"\n")
                    for raw in complete:
                        line = raw.decode("utf-8", "replace")
                        if line == BEGIN_MARK:
                            attached_at = time.monotonic()
                            if self.transport == "maps":
                                maps = EventMaps.of_process(self._proc.pid, MAP_SIDES, SKIP_MAP)
                                if self.sample_every > 1:  # before anyone is told "attached": from the first window on
                                    skip_set = self.sample_every - 1
                                    maps.set_skip(skip_set)
                            if on_attached:
                                on_attached()
                        else:
                            handle(line)
                if eof:
                    for raw in buf.split(b"\n"):
                        handle(raw.decode("utf-8", "replace"))
                    if maps is not None:
                        # bpftrace is gone; our descriptors kept its maps: take what is left.
                        self._proc.wait()
                        decoder.add(maps.drain_all())
                        deliver(1 << 62, hold_ns=0)  # everything: nothing more can come
                    break
        finally:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            if maps is not None:
                maps.close()
            errf.seek(0)
            stderr = errf.read()
            errf.close()
            self._dir.cleanup()
        end = time.monotonic()
        if attached_at is None:
            if reason == "attach-timeout":
                raise TracerError(f"bpftrace did not attach within {self.attach_timeout_s:.0f} s: {stderr_errors(stderr)}")
            if not process_alive(self.pid):
                raise TracerError(f"QEMU PID {self.pid} exited before the probes were attached")
            rc = self._proc.returncode
            how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit status {rc}"
            raise TracerError(f"bpftrace failed ({how}): {stderr_errors(stderr)}")
        if reason == "tracer-died":
            reason = "qemu-exited" if not process_alive(self.pid) else "tracer-died"
        return TraceResult(reason, lines, lost, attached_at - t0, end - attached_at, stderr)

    def _interrupt(self, now: float) -> float:
        # SIGINT makes bpftrace run END, flush its buffers and exit cleanly.
        if self._proc and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        return now
