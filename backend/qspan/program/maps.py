"""Transport "maps": probes store events in BPF maps; qspan empties them in batches.

A probe does not print. It stores its event in one of MAP_SIDES BPF hash maps,
keyed by (TS_NS, CPU), with a per-CPU sequence number. Every FLUSH_MS an
interval probe moves probes on to the next map and prints "QSPAN-FLUSH TS_NS
SIDE"; qspan then empties map SIDE itself with one batch syscall
(transport/bpfmaps.py). Probes move on to a map only once qspan has emptied it
(a sentinel entry, taken out with the events, says so), so a slow reader makes
the dumps bigger, not lossy; a full map loses events, and they are counted: a
gap in a CPU's sequence numbers. A printf per event costs the traced thread a
perf-buffer write and a wake-up of bpftrace's reader, and bpftrace's own map
printing costs four syscalls per entry (both measured by bench/probe_cost.py
and bench/overhead.py); the map store costs neither.

Sampling: time is cut into windows of WINDOW_MS; one window in (@qspan_skip +
1) is traced, the others store nothing. qspan writes @qspan_skip itself
(bpfmaps.EventMaps.set_skip), so the factor changes without reloading probes.
Windows, not single requests, because a request's events are spread over
coroutines and threads that BPF cannot tie together cheaply; a window keeps
whole requests and what ran beside them.
"""

from __future__ import annotations

from qspan.catalogue import Catalogue, EventSpec, ProbeSpec
from qspan.program.model import Transport
from qspan.program.probes import BEGIN_MARK

TRANSPORT = Transport("maps", batched=True, sampling=True)
FLUSH_MARK = "QSPAN-FLUSH"
# How often the maps are dumped: bounds the added delay (freshness) and, with
# MAP_CAPACITY, the event rate a dump can hold (131072 per 50 ms = 2.6 M/s).
FLUSH_MS = 25
MAP_CAPACITY = 65536
MAP_SIDES = ("@qspan_ev0", "@qspan_ev1", "@qspan_ev2", "@qspan_ev3")
WINDOW_MS = 100
SKIP_MAP = "@qspan_skip"
WINDOW_EVENT = "trace.window"
# Printed on a tick that cannot move on (qspan has not emptied the next map). bpftrace
# must write on every tick: if qspan is gone (killed), that write to the closed pipe
# ends bpftrace, which would otherwise keep every probe in QEMU attached for good,
# since a map nobody empties stops the flush marks.
WAIT_MARK = "QSPAN-WAIT"
HEADER = f"// transport maps: events kept in BPF maps, dumped every {FLUSH_MS} ms (see program/maps.py)"


def begin(watch: str) -> str:
    # the sampling state starts "everything traced"
    return f'BEGIN {{ printf("{BEGIN_MARK}\\n"); {SKIP_MAP} = 0; @qspan_off = 0; {watch} }}'


def store(p: ProbeSpec, spec: EventSpec) -> str:
    # (nsecs, cpu) is unique per event, so two probes racing on one CPU's
    # sequence number (an interrupt-time tracepoint) still store both events.
    # @qspan_off: a sampling window is closed (see WINDOW_MS); the probe stores nothing.
    return "if (@qspan_off == 0) { " + _numbered_store(spec.code, p.args) + " }"


def _store_into(side: str, code: int, args: tuple[str, ...]) -> str:
    vals = ", ".join(["$s", "(int64)tid", str(code)] + [f"(int64)({a})" for a in args])
    return f"{side}[nsecs, cpu] = ({vals});"


def _numbered_store(code: int, args: tuple[str, ...]) -> str:
    return "$s = @qspan_seq[cpu] + 1; @qspan_seq[cpu] = $s; $side = @qspan_side; " + _by_side(
        [_store_into(m, code, args) for m in MAP_SIDES])


def _by_side(actions: list[str], var: str = "$side") -> str:
    """if (var == 0) { a0 } else { if (var == 1) { a1 } else { ... } }"""
    if len(actions) == 1:
        return actions[0]
    return f"if ({var} == {len(MAP_SIDES) - len(actions)}) {{ {actions[0]} }} else {{ {_by_side(actions[1:], var)} }}"


def end(cat: Catalogue, named: bool) -> list[str]:
    """The flush and window interval, and END."""
    n = len(MAP_SIDES)
    mark = f'printf("{FLUSH_MARK} %llu %d\\n", nsecs, $left);'
    sentinel = "((uint64)1, (int64)0, 0, (int64)0, (int64)0, (int64)0, (int64)0)"
    # The sentinel entry (key 0, 0) goes out with the map's events: while it is
    # there, qspan has not emptied that map yet, and probes stay where they are.
    mark_left = [f"{m}[0, 0] = {sentinel};" for m in MAP_SIDES]
    pending = [f"$busy = {m}[0, 0].0;" for m in MAP_SIDES]
    # Windows follow the clock, not a count of ticks: a late tick (the timer is
    # not exact under load) moves a boundary by one tick at most and never adds up.
    # The window event travels with the events (same maps, same sequence numbers),
    # so it reaches the correlator in time order with them.
    window = _numbered_store(cat.events[WINDOW_EVENT].code, ("1 - $off", f"{SKIP_MAP} + 1", "0", "0"))
    return [
        f"// every {FLUSH_MS} ms: move probes on to the next map if qspan has emptied it,",
        "// and tell qspan to empty the one they left; every",
        f"// {WINDOW_MS} ms: open or close the sampling window ({SKIP_MAP} + 1: one window in that many is traced)",
        f"interval:ms:{FLUSH_MS} {{ $left = @qspan_side; $next = ($left + 1) % {n}; "
        f"{_by_side(pending, '$next')} if ($busy == 0) {{ @qspan_side = $next; "
        f"{_by_side(mark_left, '$left')} {mark} }} else {{ printf(\"{WAIT_MARK}\\n\"); }} "
        f"$w = nsecs / {WINDOW_MS * 1_000_000}; if ($w != @qspan_window) {{ @qspan_window = $w; "
        f"$off = 0; if ($w % ({SKIP_MAP} + 1) != 0) {{ $off = 1; }} "
        f"if ($off != @qspan_off) {{ @qspan_off = $off; {window} }} }} }}",
        "",
        # qspan empties every map once bpftrace has exited (it holds the maps open)
        f"END {{ $left = @qspan_side; {mark}{' clear(@qspan_named);' if named else ''} "
        f"clear(@qspan_seq); clear(@qspan_side); clear(@qspan_window); clear(@qspan_off); clear({SKIP_MAP}); }}",
    ]
