"""What bpftrace prints, turned into events: one output class per transport.

`LineOutput` (printf: every event is a line on stdout), `MapOutput` (maps:
stdout carries flush marks; the events are drained from BPF maps and decoded)
and `RingOutput` (ring: the events are read from qspan's own perf rings every
POLL_MS). The runner (bpftrace.py) picks one by the program's transport name
(make_output).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from typing import Optional

from qspan.errors import TracerError
from qspan.program import FLUSH_MARK, MAP_SIDES, SKIP_MAP
from qspan.program.ring import LIVE_MAP, OFF_MAP, POLL_MS, RECORD_POLL_MS
from qspan.transport.bpfmaps import EventMaps, open_scalars, write_scalar
from qspan.transport.decode import MapDumpDecoder
from qspan.transport.ringdecode import RecordCounter, RingDecoder, printf_layouts
from qspan.transport.rings import RingReader, Rings
from qspan.transport.text import LOST_RE, parse_flush_mark

# What a run hands on: event lines (and "Lost N events"), or with the maps transport
# and a batch callback, each dump's entries (TS_NS, CPU, SEQ, TID, CODE, ARG0..ARG3).
LineCallback = Callable[[str], None]
LinesCallback = Callable[[list[str]], None]
BatchCallback = Callable[[int, list[tuple]], None]
WatermarkCallback = Callable[[int], None]
# ring transport: each read of a CPU's ring, as the bytes it held (a version-2 recording's writer)
RawCallback = Callable[[int, bytes], None]
# An event stamped just before a flip can land in the next map: hold back this much.
HOLD_NS = 2_000_000


class LineOutput:
    """printf transport: bpftrace's stdout is the event stream."""

    poll_s = 0.1  # how long the runner waits for output before calling poll()

    def __init__(self, on_line: LineCallback, all_lines: bool):
        self.on_line = on_line
        self.all_lines = all_lines  # aggregate mode: its histograms are lines too
        self.lines = 0
        self.lost = 0
        self.sampling_error: str | None = None

    def attached(self, bpftrace_pid: int, sample_every: int) -> None:
        pass

    def set_sample_every(self, every: int) -> None:
        pass  # no sampling windows in this transport

    def poll(self) -> None:
        pass  # everything comes on stdout

    def stopping(self) -> None:
        pass  # the runner has asked bpftrace to end (its END probe runs next)

    def handle(self, line: str) -> None:
        if line[:1].isdigit():
            self.lines += 1
            self.on_line(line)
            return
        m = LOST_RE.search(line)
        if m:
            self.lost += int(m.group(1))
            self.on_line(line)
        elif self.all_lines:
            self.on_line(line)

    def finish(self, bpftrace: subprocess.Popen) -> None:
        pass

    def close(self) -> None:
        pass


class MapOutput(LineOutput):
    """maps transport: stdout carries flush marks (and node names); the events are in BPF maps.

    With `on_batch`, each dump's entries go there in time order, held back
    HOLD_NS so that successive batches stay in order (the live path's fast
    lane); without, they become event lines for `on_line` (recordings).
    `on_watermark(ts_ns)` follows each dump: everything stamped before ts_ns
    (less a moment) has then been handed on.
    """

    def __init__(self, on_line: LineCallback, on_batch: Optional[BatchCallback], on_watermark: Optional[WatermarkCallback],
                 on_lines: Optional[LinesCallback] = None):
        super().__init__(on_line, all_lines=False)
        self.on_batch = on_batch
        # a dump's event lines in one call (a recording's writer): half the Python per event
        # of one on_line call each (bench/ingest.py, "record")
        self.on_lines = on_lines
        self.on_watermark = on_watermark
        self.decoder = MapDumpDecoder()
        self.maps: EventMaps | None = None
        self.skip = 0  # what the program's @qspan_skip holds
        self._stopping = False

    def stopping(self) -> None:
        # From here every map is drained once bpftrace has exited (finish): an event a
        # preempted probe stored late into a map emptied before is then still found, so
        # nothing is judged lost, or handed on, until then (a recorded case: 14 events
        # counted lost at END's flush, and found in the final drain a moment later).
        self._stopping = True

    def attached(self, bpftrace_pid: int, sample_every: int) -> None:
        self.maps = EventMaps.of_process(bpftrace_pid, MAP_SIDES, SKIP_MAP)
        if sample_every > 1:  # before anyone is told "attached": from the first window on
            self.skip = sample_every - 1
            self.maps.set_skip(self.skip)

    def set_sample_every(self, every: int) -> None:
        if not self._can_sample() or every - 1 == self.skip:
            return
        self.skip = every - 1
        try:
            self._write_skip(self.skip)
        except TracerError as err:  # sampling is a relief valve: tracing goes on without it
            self.sampling_error = str(err)

    def _can_sample(self) -> bool:
        return self.maps is not None

    def _write_skip(self, skip: int) -> None:
        assert self.maps is not None
        self.maps.set_skip(skip)

    def handle(self, line: str) -> None:
        if line.startswith("@qspan_ev"):
            return  # bpftrace printing what is left in a map as it exits: we read the maps ourselves
        if not line.startswith(FLUSH_MARK):
            super().handle(line)
            return
        ts, side = parse_flush_mark(line)
        if self.maps is not None:
            self.decoder.add(self.maps.drain(side))
        if self._stopping:
            return
        self._deliver(ts, HOLD_NS)
        if self.on_watermark:
            self.on_watermark(self.decoder.watermark_ns)

    def _deliver(self, watermark_ns: int, hold_ns: int) -> None:
        if self.on_batch is None:
            lines = self.decoder.flush(watermark_ns)
            if lines and not lines[0][:1].isdigit():
                super().handle(lines.pop(0))  # "Lost N events": counted, and kept in the recording
            self.lines += len(lines)
            if self.on_lines is not None:
                if lines:
                    self.on_lines(lines)
            else:
                for out in lines:
                    self.on_line(out)
            return
        lost, entries = self.decoder.release(watermark_ns, hold_ns)
        self.lines += len(entries)
        self.lost += lost
        if lost or entries:
            self.on_batch(lost, entries)

    def finish(self, bpftrace: subprocess.Popen) -> None:
        if self.maps is not None:
            # bpftrace is gone; our descriptors kept its maps: take what is left.
            bpftrace.wait()
            self.decoder.add(self.maps.drain_all())
            self._deliver(1 << 62, hold_ns=0)  # everything: nothing more can come

    def close(self) -> None:
        if self.maps is not None:
            self.maps.close()


class RingOutput(MapOutput):
    """ring transport: the events are in qspan's perf rings (transport/rings.py), read every POLL_MS.

    Same hand-on as MapOutput (`on_batch`, `on_lines`, `on_watermark`), and
    `on_raw`: each read of a ring as its bytes (a version-2 recording). The
    watermark is the clock of bpftrace's nsecs (rings.bpftrace_clock_ns) read
    before the rings are: every record stamped earlier, less `hold_ns` for a
    probe preempted between its clock read and its write, is in them by then.
    """

    poll_s = POLL_MS / 1000
    # A probe preempted between reading the clock and writing its record writes it late.
    # With maps the flush mark is stamped in BPF and the drain comes milliseconds after it;
    # here the clock is read just before the rings, so the hold is all the slack there is:
    # 2 ms lost one event in a 60 s full-rate CI run (the live path drops what comes out of
    # order, and counts it lost). One poll period instead: spans reach the page 25 ms later.
    hold_ns = POLL_MS * 1_000_000

    def __init__(self, on_line: LineCallback, on_batch: Optional[BatchCallback],
                 on_watermark: Optional[WatermarkCallback], on_lines: Optional[LinesCallback], program_text: str,
                 on_raw: Optional[RawCallback] = None):
        super().__init__(on_line, on_batch, on_watermark, on_lines)
        if on_batch is None:
            # A recording waits for nobody: read less often. Each read wakes qspan's two threads:
            # at 1,000 writes/s `qspan record` took 30-32 us of CPU a request reading every 25 ms,
            # 22 every 200 ms (two runs each). An 8 MiB ring holds seconds of the lab's full rate.
            self.poll_s = RECORD_POLL_MS / 1000
        layouts = printf_layouts(program_text)
        self.decoder = RingDecoder(layouts)
        # With on_raw, every read goes there as it is; without on_batch too, nothing is decoded
        # (a version-2 recording): records and losses are only counted.
        self.on_raw = on_raw
        self._counter = RecordCounter(layouts) if on_raw is not None and on_batch is None else None
        self.rings: Rings | None = None
        self.reader: RingReader | None = None
        self._scalars: dict[str, int] = {}

    def attached(self, bpftrace_pid: int, sample_every: int) -> None:
        self.rings = Rings(bpftrace_pid)
        self.reader = RingReader(self.rings, self.poll_s)
        self.reader.start()
        self._scalars = open_scalars(bpftrace_pid, (SKIP_MAP, LIVE_MAP, OFF_MAP))
        self.skip = sample_every - 1
        try:
            write_scalar(self._scalars[SKIP_MAP], self.skip)
            write_scalar(self._scalars[LIVE_MAP], 1)  # the interval probe opens and closes windows from now on
            if self.skip == 0:
                # Tracing everything: the probes print from now, not from the next tick, so
                # "attached" means traced. (Sampling: the first traced window opens it.)
                write_scalar(self._scalars[OFF_MAP], 0)
        except OSError as err:
            raise TracerError(f"cannot start bpftrace's probes: {err}") from err

    def _can_sample(self) -> bool:
        return SKIP_MAP in self._scalars

    def _write_skip(self, skip: int) -> None:
        try:
            write_scalar(self._scalars[SKIP_MAP], skip)
        except OSError as err:
            raise TracerError(f"setting the sampling factor in bpftrace's map failed: {err}") from err

    def handle(self, line: str) -> None:
        if line.startswith("@"):
            return  # bpftrace printing a map as it exits
        LineOutput.handle(self, line)

    def poll(self, final: bool = False) -> None:
        if self.reader is None:  # not attached yet (or closed)
            return
        if final:
            self.reader.last_read()
        now, chunks = self.reader.take()
        if self.on_raw is not None:
            for cpu, data in chunks:
                self.on_raw(cpu, data)
        if self._counter is not None:
            for cpu, data in chunks:
                records, lost = self._counter.count(cpu, data)
                self.lines += records
                self.lost += lost
            return
        for cpu, data in chunks:
            for line in self.decoder.add_records(cpu, data):
                LineOutput.handle(self, line)  # a node's name: before the events that use it
        if final:
            self._deliver(1 << 62, 0)  # the final one is no time: nothing is behind it
        elif now is not None:
            self._deliver(now, self.hold_ns)
            if self.on_watermark:
                self.on_watermark(self.decoder.watermark_ns)

    def finish(self, bpftrace: subprocess.Popen) -> None:
        bpftrace.wait()  # END has run: nothing more is printed
        self.poll(final=True)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.stop()
            self.reader = None
        if self.rings is not None:
            self.rings.close()
            self.rings = None
        for fd in self._scalars.values():
            os.close(fd)
        self._scalars = {}


def make_output(transport_name: str, on_line: LineCallback, all_lines: bool, program_text: str,
                on_batch: Optional[BatchCallback] = None, on_watermark: Optional[WatermarkCallback] = None,
                on_lines: Optional[LinesCallback] = None, on_raw: Optional[RawCallback] = None) -> LineOutput:
    """The output for a program's transport (aggregate mode's programs print lines: `all_lines`;
    `on_raw` is the ring transport's only)."""
    if transport_name == "ring":
        return RingOutput(on_line, on_batch, on_watermark, on_lines, program_text, on_raw)
    if on_raw is not None:
        raise TracerError(f"only the ring transport hands on raw records, not {transport_name}")
    if transport_name == "maps":
        return MapOutput(on_line, on_batch, on_watermark, on_lines)
    return LineOutput(on_line, all_lines)
