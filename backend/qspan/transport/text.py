"""The event line format: text lines into typed records, and map entries into lines.

A text (version 1) recording, the printf transport and node names carry one line per event,
`CODE TS_NS TID ARG0 ARG1 ARG2 ARG3` (program/__init__.py); `parse_lines` is a
generator over any iterable of such lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from qspan.model.events import Event, Lost

LOST_RE = re.compile(r"Lost (\d+) events")
# Events whose lines carry strings (ARG1, ARG2). A recording's header names them
# ("string_events", from the catalogue's str: arguments); older ones had only node.name.
DEFAULT_STRING_KINDS = frozenset({"node.name"})


class MalformedLine(ValueError):
    def __init__(self, lineno: int, line: str, why: str):
        super().__init__(f"line {lineno}: {why}: {line[:80]!r}")
        self.lineno = lineno


def parse_line(line: str, codes: dict[int, str], string_kinds: frozenset[str] = DEFAULT_STRING_KINDS,
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


def parse_lines(lines: Iterable[str], codes: dict[int, str], string_kinds: frozenset[str] = DEFAULT_STRING_KINDS,
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


def parse_flush_mark(line: str) -> tuple[int, int]:
    """ "QSPAN-FLUSH TS_NS SIDE" -> (TS_NS, SIDE)."""
    try:
        _, ts, side = line.split()
        return int(ts), int(side)
    except ValueError:
        raise MalformedLine(0, line, "bad flush mark") from None


def entry_line(e: tuple) -> str:
    """A map entry (TS_NS, CPU, SEQ, TID, CODE, ARG0..ARG3) as the event line text recordings hold."""
    return "%d %d %d %d %d %d %d" % (e[4], e[0], e[3], e[5], e[6], e[7], e[8])
