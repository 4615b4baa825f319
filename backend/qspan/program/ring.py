"""Transport "ring" (the default): probes printf, and qspan reads the perf ring buffers itself.

A bpftrace printf is a perf-buffer record, `(printf id, arguments)`, written
to the ring of the CPU the probe runs on. What makes the printf transport
expensive is not that write but the wake-up of bpftrace's reader after every
record (a self-IPI, then a context switch on the other core) and bpftrace's
formatting. So qspan opens perf rings of its own that wake no one per record
(transport/rings.py; one wake-up per ring's size at most), puts them in
bpftrace's perf event array in place of bpftrace's, and polls them every
POLL_MS, decoding the records with struct (transport/ringdecode.py; the
layout follows from each printf's format: every integer argument is 64 bits,
every string BPFTRACE_STRLEN bytes). A perf record takes no lock and
allocates nothing: on the stock lab the iothread's added CPU per request is
about 5.5 us less than with the maps transport's hash map inserts
(bench/overhead.py, README's performance section).

Events go out as the same `CODE TS_NS TID ARG0 ARG1 ARG2 ARG3` printf as the
printf transport, so anything bpftrace prints itself (before qspan has taken
the rings over) is still an event line. That cannot happen for events: the
probes print nothing until qspan says so: once its rings are in place it sets
@qspan_live (the interval probe then opens and closes sampling windows, each a
`trace.window` event) and, tracing everything, clears @qspan_off itself, so
that the probes print from the moment qspan reports them attached.

A full ring loses records; the kernel counts them (PERF_RECORD_LOST) at the
place in the ring where they went missing.

Sampling is the maps transport's: windows of WINDOW_MS, one in (@qspan_skip +
1) traced, decided by an interval probe.
"""

from __future__ import annotations

from qspan.catalogue import Catalogue, EventSpec, ProbeSpec
from qspan.program.maps import SKIP_MAP, WINDOW_EVENT, WINDOW_MS
from qspan.program.model import Transport
from qspan.program.probes import BEGIN_MARK

TRANSPORT = Transport("ring", batched=True, sampling=True, heartbeat=False)  # it prints into our rings only
LIVE_MAP = "@qspan_live"  # qspan sets it to 1 once its rings are in bpftrace's perf event array
OFF_MAP = "@qspan_off"  # 1: the probes print nothing (before qspan's rings, or a closed sampling window)
POLL_MS = 25  # how often qspan reads the rings: bounds the added delay (freshness)
RECORD_POLL_MS = 200  # the same when nothing is live (a recording): fewer wake-ups
TICK_MS = 25  # the interval probe that opens and closes sampling windows
HEADER = (f"// transport ring: events printed into perf rings that qspan reads itself every {POLL_MS} ms "
          f"({RECORD_POLL_MS} ms for a recording), "
          "no wake-up per event (see program/ring.py)")


def begin(watch: str) -> str:
    # Off until qspan's rings are in place: an event printed before would wake bpftrace.
    return f'BEGIN {{ printf("{BEGIN_MARK}\\n"); {SKIP_MAP} = 0; @qspan_off = 1; {LIVE_MAP} = 0; {watch} }}'


def event_printf(code: int, args: tuple[str, ...], ts: str = "nsecs") -> str:
    # Every argument cast to 64 bits: the record layout is then the format's (ringdecode.py).
    vals = ", ".join([ts, "(int64)tid"] + [f"(int64)({a})" for a in args])
    return f'printf("{code} %llu %d %lld %lld %lld %lld\\n", {vals});'


def store(p: ProbeSpec, spec: EventSpec) -> str:
    return f"if (@qspan_off == 0) {{ {event_printf(spec.code, p.args)} }}"


def end(cat: Catalogue, named: bool) -> list[str]:
    """The window interval, and END (which clears nothing, @qspan_named included: see below)."""
    window = event_printf(cat.events[WINDOW_EVENT].code, ("1 - $off", f"{SKIP_MAP} + 1", "0", "0"), ts="$now")
    return [
        f"// every {TICK_MS} ms, once qspan reads the rings: open or close the sampling window",
        f"// of {WINDOW_MS} ms by the clock ({SKIP_MAP} + 1: one window in that many is traced)",
        # The windows' clock runs from BEGIN, the flips only once qspan reads the rings: so the
        # first traced window opens at a window's start, not mid-window when qspan is ready.
        f"interval:ms:{TICK_MS} {{ $now = nsecs; $w = $now / {WINDOW_MS * 1_000_000}; "
        f"if ($w != @qspan_window) {{ @qspan_window = $w; if ({LIVE_MAP} == 1) {{ "
        f"$off = 0; if ($w % ({SKIP_MAP} + 1) != 0) {{ $off = 1; }} "
        # an opening is stamped before its flip, a closing after: no event stored in a
        # window is older than its opening or newer than its closing (but for a preempted probe)
        f"if ($off != @qspan_off) {{ @qspan_off = $off; if ($off == 1) {{ $now = nsecs; }} {window} }} }} }} }}",
        "",
        # No clear() here: bpftrace carries it out in user space, on a perf record that
        # would land in qspan's rings. What the maps hold is printed at exit, and ignored.
        "END { @qspan_off = 1; }",
    ]
