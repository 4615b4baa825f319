"""The ring transport's records, back into events (pure; see program/ring.py and rings.py).

A ring holds perf records. PERF_RECORD_SAMPLE (type 9) carries a bpftrace
printf: a u32 size, then the printf's id (its place among the program's
printfs, in text order: bpftrace numbers them as it reads the program), then
its arguments, each 8 bytes for an integer and BPFTRACE_STRLEN for a string,
with nothing in between (the generator casts every integer to 64 bits, and a
string's length is a multiple of 8). PERF_RECORD_LOST (type 2) says how many
records the kernel dropped there because the ring was full.

An event printf (`CODE %llu %d %lld %lld %lld %lld`) becomes the maps
transport's entry, (TS_NS, CPU, 0, TID, CODE, ARG0..ARG3), so everything
downstream is shared; any other printf (a node's name) becomes the line
bpftrace would have printed.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from qspan.errors import TracerError
from qspan.transport.decode import MapDumpDecoder

STRLEN = 64  # bpftrace's BPFTRACE_STRLEN: the runner sets it (bpftrace.py), whatever the environment says
RECORD_SAMPLE = 9
RECORD_LOST = 2
_HEADER = struct.Struct("<IHH")  # perf_event_header: type, misc, size
_SAMPLE = struct.Struct("<IQ")  # a sample's raw size, then the printf id
_LOST = struct.Struct("<QQ")  # PERF_RECORD_LOST: id, lost
_PRINTF_RE = re.compile(r'printf\("((?:[^"\\]|\\.)*)"')
_SPEC_RE = re.compile(r"%(?:ll[ud]|l?[dus]|s)")
_EVENT_RE = re.compile(r"^(\d+) %llu %d %lld %lld %lld %lld\\n$")
# An event record: header, raw size, printf id, ts, tid, four args, and the kernel's padding to 8 bytes.
EVENT_RECORD = struct.Struct("<IHHIQQqqqqq4x")
# bpftrace numbers its own asynchronous actions (exit, clear, print...) from here, printfs from 0.
ASYNC_ACTIONS = 30000


@dataclass(frozen=True)
class PrintfLayout:
    """One printf of the program: its format, the size of each argument, and the event code if it is one."""

    fmt: str  # as written in the program (escapes not undone)
    sizes: tuple[int, ...]
    strings: tuple[bool, ...]
    code: int | None

    @property
    def payload(self) -> int:
        return 8 + sum(self.sizes)

    @property
    def raw_size(self) -> int:
        """The sample's raw size: the payload, padded so that the whole record is 8-aligned."""
        return self.payload + (-(self.payload + 4) % 8)

    @property
    def record_size(self) -> int:
        """The perf record this printf makes: perf header, raw size, raw data."""
        return 12 + self.raw_size


def printf_formats(program_text: str) -> tuple[str, ...]:
    """Every printf format of a generated program, in bpftrace's id order (text order), as written."""
    code = "\n".join(ln for ln in program_text.splitlines() if not ln.lstrip().startswith("//"))
    return tuple(m.group(1) for m in _PRINTF_RE.finditer(code))


def layout_of(fmt: str, strlen: int = STRLEN) -> PrintfLayout:
    """One printf's record layout, from its format (a string argument takes `strlen` bytes)."""
    strings = tuple(s == "%s" for s in _SPEC_RE.findall(fmt))
    ev = _EVENT_RE.match(fmt)
    return PrintfLayout(fmt, tuple(strlen if s else 8 for s in strings), strings, int(ev.group(1)) if ev else None)


def printf_layouts(program_text: str) -> tuple[PrintfLayout, ...]:
    """Every printf of a generated program, in bpftrace's id order (text order)."""
    return tuple(layout_of(fmt) for fmt in printf_formats(program_text))


class RecordCounter:
    """How many printf records and lost records a ring's bytes hold, without decoding them (pure).

    A recording keeps the rings' bytes as they are and decodes them when read
    (output/recording.py), so recording costs qspan a copy, not ~1.2 us of
    Python an event; what it must know at once is how many events it wrote
    and how many the kernel dropped. A run of event records is told by slicing
    out every record's type and size bytes (no Python per record); anything
    else is walked header by header.
    """

    def __init__(self, layouts: tuple[PrintfLayout, ...]):
        self.size = EVENT_RECORD.size
        # the stride check can only say "all events" if no other printf makes records of that size
        self._stride_ok = all(lay.code is not None for lay in layouts if lay.record_size == self.size)

    def count(self, cpu: int, data: bytes) -> tuple[int, int]:
        """(printf records, events the kernel counted lost) in one ring's new bytes."""
        size = self.size
        n, rest = divmod(len(data), size)
        if (self._stride_ok and rest == 0 and data[0::size] == b"\x09" * n
                and data[6::size] == bytes((size & 0xFF,)) * n and data[7::size] == bytes((size >> 8,)) * n):
            return n, 0  # every record a sample (type 9) of an event's size: each one is where the last ends
        records = lost = off = 0
        end = len(data)
        while off + 8 <= end:
            rtype, _misc, rsize = _HEADER.unpack_from(data, off)
            if rsize < 8 or off + rsize > end:
                raise TracerError(f"malformed perf record in CPU {cpu}'s ring (size {rsize} at byte {off} of {end})")
            if rtype == RECORD_LOST:
                lost += _LOST.unpack_from(data, off + 8)[1]
            elif rtype == RECORD_SAMPLE and rsize >= 20 and _SAMPLE.unpack_from(data, off + 8)[1] < ASYNC_ACTIONS:
                records += 1
            off += rsize
        return records, lost


class RingDecoder(MapDumpDecoder):
    """Records in, entries in time order out (MapDumpDecoder's release, with losses the kernel counted)."""

    def __init__(self, layouts: tuple[PrintfLayout, ...], mark_losses: bool = False):
        super().__init__()
        self.layouts = layouts
        self.codes = {i: lay.code for i, lay in enumerate(layouts) if lay.code is not None}
        self._new_lost = 0
        # mark_losses (a recording read back): where each loss was, as (the stamp of the record
        # before it in its ring, or of the last seen, count), for take_loss_marks()
        self._marks: list[tuple[int, int]] | None = [] if mark_losses else None
        self.last_ts = 0  # the stamp of the last event record added (in ring order)

    def add_records(self, cpu: int, data: bytes) -> list[str]:
        """Decode one ring's new bytes; its events are kept for release(), other printfs returned as lines."""
        size = EVENT_RECORD.size
        if len(data) % size == 0:
            # The common case, a run of event records only: one unpack for all of them.
            recs = list(EVENT_RECORD.iter_unpack(data))
            codes = self.codes
            if all(r[0] == RECORD_SAMPLE and r[2] == size and r[4] in codes for r in recs):
                self._keep([(r[5], cpu, 0, r[6], codes[r[4]], r[7], r[8], r[9], r[10]) for r in recs])
                return []
        return self._walk(cpu, data)

    def _walk(self, cpu: int, data: bytes) -> list[str]:
        events, lines, off, n = [], [], 0, len(data)
        while off + 8 <= n:
            rtype, _misc, rsize = _HEADER.unpack_from(data, off)
            if rsize < 8 or off + rsize > n:
                raise TracerError(f"malformed perf record in CPU {cpu}'s ring (size {rsize} at byte {off} of {n})")
            if rtype == RECORD_LOST:
                count = _LOST.unpack_from(data, off + 8)[1]
                self._new_lost += count
                if self._marks is not None:
                    self._marks.append((events[-1][0] if events else self.last_ts, count))
            elif rtype == RECORD_SAMPLE:
                raw, pid = _SAMPLE.unpack_from(data, off + 8) if rsize >= 20 else (0, -1)
                if pid >= ASYNC_ACTIONS:
                    off += rsize  # exit(), clear(), ...: the program uses none while qspan reads the rings
                    continue
                lay = self.layouts[pid] if 0 <= pid < len(self.layouts) else None
                if lay is None or raw != lay.raw_size:
                    raise TracerError(f"a ring record (printf id {pid}, {raw} bytes) does not match the program: "
                                      "is this bpftrace's record layout?")
                values = self._values(lay, data, off + 20)
                if lay.code is not None:
                    ts, tid, a0, a1, a2, a3 = values
                    events.append((ts, cpu, 0, tid, lay.code, a0, a1, a2, a3))
                else:
                    lines.append(_format(lay.fmt, values))
            off += rsize
        self._keep(events)
        return lines

    @staticmethod
    def _values(lay: PrintfLayout, data: bytes, at: int) -> list:
        out = []
        for size, is_str in zip(lay.sizes, lay.strings):
            if is_str:
                out.append(data[at:at + size].split(b"\0", 1)[0].decode("utf-8", "replace"))
            else:
                out.append(struct.unpack_from("<q", data, at)[0])
            at += size
        return out

    def _keep(self, events: list[tuple]) -> None:
        # One CPU's records are in the order they were written; a probe preempted between
        # reading the clock and writing lands a little out of time order: release() sorts.
        self._pending.extend(events)
        if events:
            self.last_ts = events[-1][0]

    def take_loss_marks(self) -> list[tuple[int, int]]:
        """(stamp before the loss, events lost) for each loss in the records added since the last call
        (decoder made with mark_losses); the losses then count as released."""
        marks, self._marks = self._marks or [], [] if self._marks is not None else None
        self.lost += self._new_lost
        self._new_lost = 0
        return marks

    def _expire(self) -> int:
        # The kernel counts a full ring's losses exactly and at once: nothing to wait for.
        lost, self._new_lost = self._new_lost, 0
        self.lost += lost
        return lost


def _format(fmt: str, values: list) -> str:
    """What bpftrace would have printed for a non-event printf (integers and strings only)."""
    py = _SPEC_RE.sub(lambda m: "%s" if m.group(0) == "%s" else "%d", fmt)
    return (py.encode().decode("unicode_escape") % tuple(values)).rstrip("\n")
