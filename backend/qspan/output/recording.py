"""Recordings: the raw event stream of one trace, with a header that makes it replayable.

Version 1 (text, one record per line; the printf and maps transports, and
the live server's recordings):

    #qspan-recording 1
    #header {"target": {...}, "codes": {"1": "co.switch", ...}, ...}
    <event lines exactly as the tracer printed them, and "Lost N events" lines>
    #end {"reason": "duration", "lost_events": 0, ...}

Version 2 (the ring transport's `qspan record`): the same two text lines,
then binary frames holding the rings' perf records as read, and the end
summary (output/ringrecording.py). Keeping the bytes costs the tracer a copy
where formatting every event as text cost ~1.2 us of Python an event
(docs/performance.md); they are decoded when read, into the same events.

The code table travels in the header, so a recording stays readable when the
catalogue changes. A recording without its #end line (E frame) is truncated.
"""

from __future__ import annotations

import gzip
import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from qspan import runtime
from qspan.errors import RecordingError
from qspan.output.capped import Capped
from qspan.output.counted import OnBytes, open_counted
from qspan.model.events import Event, Lost
from qspan.transport.text import DEFAULT_STRING_KINDS, MalformedLine, parse_lines

MAGIC = "#qspan-recording 1"
MAGIC_RAW = "#qspan-recording 2"  # its frames: output/ringrecording.py


@dataclass
class Recording:
    header: dict
    events: list[Event]
    lost: list[Lost]
    end: dict = field(default_factory=dict)
    truncated: bool = False

    @property
    def codes(self) -> dict[int, str]:
        return codes(self.header)

    @property
    def string_kinds(self) -> frozenset[str]:
        return string_kinds(self.header)


def codes(header: dict) -> dict[int, str]:
    """Event code -> event name, from the recording's header (codes change with the catalogue)."""
    return {int(k): v for k, v in header["codes"].items()}


def string_kinds(header: dict) -> frozenset[str]:
    """The events whose lines carry strings, as the recording's header says."""
    return frozenset(header["string_events"]) if "string_events" in header else DEFAULT_STRING_KINDS


class RecordingWriter(Capped):
    """Writes a version-1 (text) recording incrementally; the caller owns the file object."""

    def __init__(self, f: IO[str], header: dict, max_bytes: int | None = None,
                 room_check: Callable[[], str | None] | None = None):
        super().__init__(max_bytes, room_check)
        self.f = f
        self._put(MAGIC + "\n")
        self._put("#header " + json.dumps(header, sort_keys=True) + "\n")

    def _put(self, text: str) -> None:
        self.f.write(text)
        self.written += len(text)

    def _add(self, text: str, first: str) -> None:
        if self._room(len(text), first):
            try:
                self._put(text)
            except OSError as err:
                self._failed(first, err)

    def line(self, raw: str) -> None:
        self._add(raw if raw.endswith("\n") else raw + "\n", raw)

    def lines(self, raws: list[str]) -> None:
        if raws:
            self._add("\n".join(raws) + "\n", raws[0])

    on_raw = None  # the ring transport's raw reads: not kept in a text recording

    def end(self, summary: dict) -> dict:
        """Close the recording with why tracing stopped; returns the end marker as written."""
        summary = self._end_summary(summary)
        return self._end(self.f, "#end " + json.dumps(summary, sort_keys=True) + "\n", summary)


def make_header(t, cat, prof, prog) -> dict:
    """The header of a recording of target `t` traced with program `prog` (profile `prof`)."""
    from datetime import datetime, timezone

    from qspan import __version__
    from qspan.transport.rings import bpftrace_clock_ns

    return {
        "profile": prof.header(),
        "tool": f"qspan {__version__}",
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # the trace's clock against Unix time, now: what turns its times into wall-clock ones (OTLP)
        "clock": {"unix_minus_trace_ns": time.time_ns() - bpftrace_clock_ns()},
        "target": t.header(),
        "codes": {str(e.code): e.name for e in cat.events.values()},
        "probes": [f"{p.event} {p.source} {p.target}" for p in prog.probes],
        # probes placed inside their function (tracers/sites.txt): where, and from which line
        "probe_sites": [{"function": s.function, "offset": s.offset, "where": s.where} for s in prog.sites],
        "skipped_probes": list(prog.skipped),
        "transport": prog.transport.name,
        "string_events": sorted(e.name for e in cat.events.values() if e.has_strings),
        "self_cost": self_cost(cat, prog),
    }


def self_cost(cat, prog) -> dict:
    """What each event's probe hit costs the thread it hits (tracers/costs.txt), for the spans'
    own accounting: ns per event and its kind, uprobe (any QEMU code probe) or tracepoint."""
    from qspan.catalogue import costs
    from qspan.output.overhead import event_costs

    strings = {e.name for e in cat.events.values() if e.has_strings}  # printed by the same hit as another event
    kinds = {ev: k for ev, k in prog.probe_kinds.items() if ev not in strings}
    per_event = event_costs(kinds, prog.transport.name, costs.load())
    return {
        "source": "tracers/costs.txt",
        "ns": {ev: round(us * 1000) for ev, us in sorted(per_event.items())},
        "kind": {ev: "tracepoint" if all(k == "hit.tracepoint" for k in ks) else "uprobe"
                 for ev, ks in sorted(kinds.items()) if ks},
    }


def _body(f: IO[str], start_lineno: int, state: dict) -> Iterator[str]:
    for lineno, line in enumerate(f, start_lineno):
        if line.startswith("#end "):
            try:
                state["end"] = json.loads(line[5:])
            except ValueError:
                raise RecordingError(f"{state['path']}:{lineno}: malformed #end line") from None
            return
        if line.startswith("#"):
            continue
        if not line.endswith("\n"):
            state["partial"] = lineno
            return
        yield line


def _open(path: Path, on_bytes: OnBytes | None = None) -> IO[bytes]:
    try:
        if on_bytes is not None:
            return open_counted(path, on_bytes)
        if path.suffix == ".gz":  # recordings compress ~10x; tests keep theirs gzipped
            return gzip.open(path, "rb")
        return open(path, "rb")
    except OSError as err:
        raise RecordingError(f"{path}: cannot open recording: {err.strerror}") from err


def is_recording(path: str | Path) -> bool:
    """Whether the file starts as a recording of either version (a spans JSON file does not)."""
    try:
        with _open(Path(path)) as f:
            return f.readline(64).decode("ascii", "replace").rstrip("\n") in (MAGIC, MAGIC_RAW)
    except (OSError, EOFError, gzip.BadGzipFile):
        return False


def _text(f: IO[bytes]) -> IO[str]:
    return io.TextIOWrapper(f, encoding="utf-8", errors="strict", newline="\n")


def _start(f: IO[bytes], path: Path) -> tuple[str, dict]:
    """The recording's magic and header (the first two lines of either version)."""
    first = f.readline(64).decode("ascii", "replace").rstrip("\n")
    if first not in (MAGIC, MAGIC_RAW):
        raise RecordingError(f"{path}: not a qspan recording (first line is not {MAGIC!r} or {MAGIC_RAW!r})")
    second = f.readline()
    if not second.startswith(b"#header "):
        raise RecordingError(f"{path}:2: missing #header line")
    try:
        header = json.loads(second[8:].decode("utf-8"))
        codes(header)
        if first == MAGIC_RAW:
            [str(x) for x in header["ring_printfs"]]
            int(header["ring_strlen"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RecordingError(f"{path}:2: malformed #header line") from None
    return first, header


def body_lines(path: str | Path) -> Iterator[str]:
    """A recording's event lines as written (version 2: decoded, in time order), for replaying them
    as a tracer's output (read() checks the recording first)."""
    path = Path(path)
    with _open(path) as f:
        magic, header = _start(f, path)
        if magic == MAGIC:
            yield from _body(_text(f), 3, {"path": path})
            return
        from qspan.correlate import in_time_order
        from qspan.output.ringrecording import raw_events

        rev = {v: k for k, v in codes(header).items()}
        for rec in in_time_order(raw_events(f, header, {"path": path})):
            if isinstance(rec, Lost):
                yield f"Lost {rec.count} events"
            else:
                a = rec.args
                yield "%d %d %d %s %s %s %s" % (rev[rec.kind], rec.ts_ns, rec.tid, a[0], a[1], a[2], a[3])


def read(path: str | Path, allow_truncated: bool = False, on_bytes: OnBytes | None = None) -> Recording:
    path = Path(path)
    state: dict = {"path": path}
    events: list[Event] = []
    lost: list[Lost] = []
    # A recording's events are read into one list, millions of objects that form no cycles:
    # the cyclic collector walking that growing list was half of the read's time (3.2 M events:
    # 4.1 s with the collector, 2.2 s without).
    with _open(path, on_bytes) as f, runtime.collector_paused():
        try:
            magic, header = _start(f, path)
            if magic == MAGIC:
                code_table = codes(header)
                try:
                    for rec in parse_lines(_body(_text(f), 3, state), code_table, string_kinds(header), first_lineno=3):
                        (events if isinstance(rec, Event) else lost).append(rec)
                except MalformedLine as err:
                    # lineno counts body lines from 3; comments were skipped, so say "near"
                    raise RecordingError(f"{path}: corrupted recording near {err}") from None
            else:
                from qspan.output.ringrecording import raw_events

                for rec in raw_events(f, header, state):
                    (events if type(rec) is Event else lost).append(rec)
        except UnicodeDecodeError as err:
            raise RecordingError(f"{path}: corrupted recording (not UTF-8 text at byte {err.start})") from None
        except (OSError, EOFError) as err:  # gzip: bad magic, CRC, cut stream
            raise RecordingError(f"{path}: corrupted recording: {err}") from None
    truncated = "end" not in state
    if truncated and not allow_truncated:
        where = ""
        if "partial" in state:
            where = f" (last line cut at line {state['partial']})" if magic == MAGIC else \
                f" (last frame cut at byte {state['partial']})"
        raise RecordingError(
            f"{path}: recording is truncated{where}: no end marker after {len(events)} events; "
            "pass --allow-truncated to analyse the complete events"
        )
    return Recording(header, events, lost, state.get("end", {}), truncated)
