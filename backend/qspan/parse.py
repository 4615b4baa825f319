"""Turn the tracer's text lines into typed records (a generator over any iterable of lines)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from .events import Event, Lost

LOST_RE = re.compile(r"Lost (\d+) events")


class MalformedLine(ValueError):
    def __init__(self, lineno: int, line: str, why: str):
        super().__init__(f"line {lineno}: {why}: {line[:80]!r}")
        self.lineno = lineno


def parse_line(line: str, codes: dict[int, str], string_kinds: frozenset[str] = frozenset({"node.name"}),
               lineno: int = 0, last_ts: int = 0) -> Event | Lost | None:
    """One tracer line: an Event, a Lost, None for a blank line; MalformedLine otherwise."""
    parts = line.split()
    if not parts:
        return None
    head = parts[0]
    if head.isdigit():
        kind = codes.get(int(head))
        if kind is None:
            raise MalformedLine(lineno, line, f"unknown event code {head}")
        if len(parts) != 7:
            raise MalformedLine(lineno, line, f"expected 7 fields, got {len(parts)}")
        try:
            ts, tid = int(parts[1]), int(parts[2])
            if kind in string_kinds:
                args: tuple = (int(parts[3]), parts[4], parts[5], int(parts[6]))
            else:
                args = (int(parts[3]), int(parts[4]), int(parts[5]), int(parts[6]))
        except ValueError:
            raise MalformedLine(lineno, line, "non-numeric field") from None
        return Event(kind, ts, tid, args)
    m = LOST_RE.search(line)
    if m:
        return Lost(int(m.group(1)), last_ts)
    raise MalformedLine(lineno, line, "not an event line")


def parse_lines(lines: Iterable[str], codes: dict[int, str], string_kinds: frozenset[str] = frozenset({"node.name"}),
                first_lineno: int = 1) -> Iterator[Event | Lost]:
    """Yield an Event per event line and a Lost per "Lost N events" line.

    `codes` maps event codes to event names (from the catalogue or a recording
    header). Any other line raises MalformedLine: callers that read bpftrace
    directly drop its chatter before calling this.
    """
    last_ts = 0
    for lineno, line in enumerate(lines, first_lineno):
        rec = parse_line(line, codes, string_kinds, lineno, last_ts)
        if rec is None:
            continue
        if isinstance(rec, Event):
            last_ts = rec.ts_ns
        yield rec


class MapDumpDecoder:
    """Turn the "maps" transport's dumps back into event lines (pure; see program.py).

    Between two "QSPAN-FLUSH TS" marks bpftrace prints one map side, one entry
    per event:  @qspan_ev0[TS_NS, CPU]: (SEQ, TID, CODE, ARG0, ARG1, ARG2, ARG3)
    At the mark, the dump's events come out as CODE TS_NS TID ARG0..ARG3 lines in
    time order, preceded by "Lost N events" when a CPU's sequence numbers skipped
    (a full map, or an event stored while its side was being cleared).
    `watermark_ns` is the flip time of the last dump: every event stamped more than
    a moment before it has been handed out.
    """

    def __init__(self):
        self._pending: list[tuple[int, str]] = []
        self._received: dict[str, int] = {}  # cpu -> events seen
        self._max_seq: dict[str, int] = {}  # cpu -> highest sequence number seen
        self.lost = 0
        self.watermark_ns = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def is_entry(self, line: str) -> bool:
        return line.startswith("@qspan_ev")

    def entry(self, line: str) -> None:
        try:
            key, val = line[line.index("[") + 1:].split("]: (", 1)
            ts, cpu = key.split(", ")
            seq, tid, code, a0, a1, a2, a3 = val.rstrip(")").split(", ")
            ts_ns, seq_n = int(ts), int(seq)
        except ValueError:
            raise MalformedLine(0, line, "not a map dump entry") from None
        if ts_ns == 0:
            return  # the flush's sentinel (see program.py), not an event
        self._pending.append((ts_ns, f"{code} {ts} {tid} {a0} {a1} {a2} {a3}"))
        self._received[cpu] = self._received.get(cpu, 0) + 1
        if seq_n > self._max_seq.get(cpu, 0):
            self._max_seq[cpu] = seq_n

    def flush(self, mark_line: str) -> list[str]:
        """At a flush mark: the dump's lines in time order (a Lost line first if any were lost)."""
        try:
            self.watermark_ns = max(self.watermark_ns, int(mark_line.split()[1]))
        except (IndexError, ValueError):
            raise MalformedLine(0, mark_line, "bad flush mark") from None
        missing = sum(max(0, self._max_seq[c] - self._received[c]) for c in self._max_seq)
        out = []
        if missing > self.lost:
            out.append(f"Lost {missing - self.lost} events")
            self.lost = missing
        self._pending.sort()
        out += [line for _, line in self._pending]
        self._pending = []
        return out
