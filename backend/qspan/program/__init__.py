"""Generate the bpftrace program for one target from the probe catalogue.

The program is plain text that `qspan tracer --pid N --print` shows without
running anything. Only entry probes are used: never uretprobes, since QEMU
coroutines switch stacks.

Transport "maps" (the default): a probe does not print. It stores its event
in one of MAP_SIDES BPF hash maps, keyed by (TS_NS, CPU), with a per-CPU
sequence number. Every FLUSH_MS an interval probe moves probes on to the next
map and prints "QSPAN-FLUSH TS_NS SIDE"; qspan then empties map SIDE itself
with one batch syscall (bpfmaps.py). Probes move on to a map only once qspan
has emptied it (a sentinel entry, taken out with the events, says so), so a
slow reader makes the dumps bigger, not lossy; a full map loses events, and
they are counted: a gap in a CPU's sequence numbers. A printf per event costs
the traced thread a perf-buffer write and a wake-up of bpftrace's reader, and
bpftrace's own map printing costs four syscalls per entry (both measured by
bench/probe_cost.py and bench/overhead.py); the map store costs neither.
Transport "printf" prints each event as it happens.
Either way, what the rest of qspan sees (and records) is one line per event:

    CODE TS_NS TID ARG0 ARG1 ARG2 ARG3

all decimal (cheaper to format and to parse than hex), CODE being the event's
code from events.txt. node.name lines carry two strings and are printed once
per block node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qspan.catalogue import Catalogue, EventSpec, ProbeSpec, Profile
from qspan.errors import TracerError
from qspan.output.overhead import first_instruction_kind, hit_kind

BEGIN_MARK = "QSPAN-ATTACHED"
FLUSH_MARK = "QSPAN-FLUSH"
TRANSPORTS = ("maps", "printf")
# How often the maps are dumped: bounds the added delay (freshness) and, with
# MAP_CAPACITY, the event rate a dump can hold (131072 per 50 ms = 2.6 M/s).
FLUSH_MS = 25
MAP_CAPACITY = 65536
MAP_SIDES = ("@qspan_ev0", "@qspan_ev1", "@qspan_ev2", "@qspan_ev3")
# Sampling (maps transport): time is cut into windows of WINDOW_MS; one window
# in (@qspan_skip + 1) is traced, the others store nothing. qspan writes
# @qspan_skip itself (bpfmaps.EventMaps.set_skip), so the factor changes
# without reloading probes. Windows, not single requests, because a request's
# events are spread over coroutines and threads that BPF cannot tie together
# cheaply; a window keeps whole requests and what ran beside them.
WINDOW_MS = 100
SKIP_MAP = "@qspan_skip"
WINDOW_EVENT = "trace.window"
# Events without which there are no request spans.
REQUIRED_EVENTS = ("co.switch", "req.submit")


@dataclass(frozen=True)
class ProgramInput:
    """What the generator needs to know about a target; built from target.Target."""

    pid: int
    probe_path: str
    version: tuple[int, int]
    version_text: str
    symbols: frozenset[str]
    usdt: bool
    watched_tids: tuple[int, ...]
    library_path: str | None = None  # the profile's shared object, as bpftrace opens it
    # uprobe targets -> "emulated" or "stepped": how the kernel runs their first instruction
    entry_kinds: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Program:
    text: str
    probes: tuple[ProbeSpec, ...]
    skipped: tuple[str, ...]  # why catalogue lines were left out (symbol not exported, ...)
    transport: str = "maps"
    probe_kinds: dict[str, list[str]] = field(default_factory=dict)  # event -> costs.txt hit kinds of its probes


def _filter(kind: str, inp: ProgramInput) -> str:
    watched = inp.watched_tids or (inp.pid,)
    if kind == "proc":
        return f"pid == {inp.pid}"
    if kind == "watched":
        return " || ".join(f"tid == {t}" for t in watched)
    if kind == "switch":
        return " || ".join(f"args->prev_pid == {t} || args->next_pid == {t}" for t in watched)
    if kind == "wakee":
        return " || ".join(f"args->pid == {t}" for t in watched)
    if kind == "workers":
        return f"pid == {inp.pid}" + "".join(f" && tid != {t}" for t in watched)
    raise ValueError(kind)


def _attach_point(p: ProbeSpec, inp: ProgramInput, in_library: bool = False) -> str:
    if in_library:
        return f"usdt:{inp.library_path}:{p.target}"
    if p.source == "uprobe":
        return f"uprobe:{inp.probe_path}:{p.target}"
    if p.source == "usdt":
        return f"usdt:{inp.probe_path}:qemu:{p.target}"
    return f"tracepoint:{p.target}"


def _store(side: str, code: int, args: tuple[str, ...]) -> str:
    vals = ", ".join(["$s", "(int64)tid", str(code)] + [f"(int64)({a})" for a in args])
    return f"{side}[nsecs, cpu] = ({vals});"


def _action(p: ProbeSpec, spec: EventSpec, transport: str = "maps") -> str:
    if spec.has_strings:
        key = p.args[0]
        fmt = ["%d", "%llu", "%d", "%lld"] + ["%s" if a.startswith("str:") else "%lld" for a in p.args[1:]]
        vals = ["nsecs", "tid", "$k"] + [f"str({a[4:]})" if a.startswith("str:") else a for a in p.args[1:]]
        return (
            f"$k = {key}; if (@qspan_named[$k] == 0) {{ @qspan_named[$k] = 1; "
            f'printf("{" ".join(fmt)}\\n", {spec.code}, {", ".join(vals)}); }}'
        )
    if transport == "printf":
        return f'printf("{spec.code} %llu %d %lld %lld %lld %lld\\n", nsecs, tid, {", ".join(p.args)});'
    # (nsecs, cpu) is unique per event, so two probes racing on one CPU's
    # sequence number (an interrupt-time tracepoint) still store both events.
    # @qspan_off: a sampling window is closed (see WINDOW_MS); the probe stores nothing.
    return "if (@qspan_off == 0) { " + _numbered_store(spec.code, p.args) + " }"


def _numbered_store(code: int, args: tuple[str, ...]) -> str:
    return "$s = @qspan_seq[cpu] + 1; @qspan_seq[cpu] = $s; $side = @qspan_side; " + _by_side(
        [_store(m, code, args) for m in MAP_SIDES])


def _by_side(actions: list[str], var: str = "$side") -> str:
    """if (var == 0) { a0 } else { if (var == 1) { a1 } else { ... } }"""
    if len(actions) == 1:
        return actions[0]
    return f"if ({var} == {len(MAP_SIDES) - len(actions)}) {{ {actions[0]} }} else {{ {_by_side(actions[1:], var)} }}"


def _flush_probes(window_code: int, clear_named: bool = True) -> list[str]:
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
    window = _numbered_store(window_code, ("1 - $off", f"{SKIP_MAP} + 1", "0", "0"))
    return [
        f"// every {FLUSH_MS} ms: move probes on to the next map if qspan has emptied it,",
        "// and tell qspan to empty the one they left; every",
        f"// {WINDOW_MS} ms: open or close the sampling window ({SKIP_MAP} + 1: one window in that many is traced)",
        f"interval:ms:{FLUSH_MS} {{ $left = @qspan_side; $next = ($left + 1) % {n}; "
        f"{_by_side(pending, '$next')} if ($busy == 0) {{ @qspan_side = $next; "
        f"{_by_side(mark_left, '$left')} {mark} }} "
        f"$w = nsecs / {WINDOW_MS * 1_000_000}; if ($w != @qspan_window) {{ @qspan_window = $w; "
        f"$off = 0; if ($w % ({SKIP_MAP} + 1) != 0) {{ $off = 1; }} "
        f"if ($off != @qspan_off) {{ @qspan_off = $off; {window} }} }} }}",
        "",
        # qspan empties every map once bpftrace has exited (it holds the maps open)
        f"END {{ $left = @qspan_side; {mark}{' clear(@qspan_named);' if clear_named else ''} "
        f"clear(@qspan_seq); clear(@qspan_side); clear(@qspan_window); clear(@qspan_off); clear({SKIP_MAP}); }}",
    ]


def begin_probe(transport: str) -> str:
    # the maps transport's sampling state starts "everything traced"
    return f'BEGIN {{ printf("{BEGIN_MARK}\\n");{f" {SKIP_MAP} = 0; @qspan_off = 0;" if transport == "maps" else ""} }}'


def select_probes(cat: Catalogue, inp: ProgramInput) -> tuple[list[ProbeSpec], list[str]]:
    sources = ("usdt", "uprobe", "tracepoint") if inp.usdt else ("uprobe", "tracepoint")
    chosen, skipped = [], []
    candidates = cat.select(inp.version, sources)
    # A USDT probe of an event replaces the uprobes of the same event.
    usdt_events = {p.event for p in candidates if p.source == "usdt"}
    for p in candidates:
        if p.source == "uprobe" and p.event in usdt_events:
            continue
        if p.source == "uprobe" and p.target not in inp.symbols:
            skipped.append(f"{p.where}: {p.event}: {p.target} is not exported by this binary")
            continue
        chosen.append(p)
    have = {p.event for p in chosen}
    missing = [e for e in REQUIRED_EVENTS if e not in have]
    if missing:
        raise TracerError(
            f"QEMU {inp.version_text}: no usable probe for {', '.join(missing)}; "
            "this build cannot be traced (see tracers/probes.txt)"
        )
    return chosen, skipped


def generate(cat: Catalogue, inp: ProgramInput, profile: Profile | None = None, transport: str = "maps") -> Program:
    if transport not in TRANSPORTS:
        raise TracerError(f"unknown transport {transport!r} (one of {', '.join(TRANSPORTS)})")
    probes, skipped = select_probes(cat, inp)
    if profile and profile.probes and not inp.library_path:
        raise TracerError(f"profile {profile.name} needs {profile.library} mapped in QEMU PID {inp.pid}; it is not")
    out = [
        "// generated by qspan from tracers/events.txt and tracers/probes.txt: do not edit",
        f"// target: pid {inp.pid}, {inp.probe_path}, QEMU {inp.version_text}",
        f"// profile: {profile.name if profile else 'stock'}"
        + (f" ({profile.library} at {inp.library_path})" if profile and profile.library else ""),
        f"// watched threads: {', '.join(map(str, inp.watched_tids)) or 'none'}",
        (f"// transport maps: events kept in BPF maps, dumped every {FLUSH_MS} ms (see program.py)"
         if transport == "maps" else "// transport printf: CODE TS_NS TID ARG0 ARG1 ARG2 ARG3 (decimal), one line per event"),
        "",
        begin_probe(transport),
        "",
    ]
    kinds: dict[str, list[str]] = {}
    for p in list(probes) + list(profile.probes if profile else ()):
        kinds.setdefault(p.event, []).append(hit_kind(p.source, inp.entry_kinds.get(p.target)))
    for p in probes:
        spec = cat.events[p.event]
        entry = inp.entry_kinds.get(p.target) if p.source == "uprobe" else None
        how = {"emulated": " (first instruction emulated)", "stepped": " (first instruction single-stepped)"}.get(entry or "", "")
        out.append(f"// {p.event} <- {p.where}{how}")
        out.append(f"{_attach_point(p, inp)} /{_filter(p.filter, inp)}/ {{ {_action(p, spec, transport)} }}")
    for p in profile.probes if profile else ():
        spec = cat.events[p.event]
        out.append(f"// {p.event} <- profiles/{p.where}")
        out.append(f"{_attach_point(p, inp, in_library=True)} /{_filter(p.filter, inp)}/ {{ {_action(p, spec, transport)} }}")
    out.append("")
    # @qspan_named exists only when a probe names nodes (bpftrace rejects unknown maps)
    named = any(cat.events[p.event].has_strings for p in probes + list(profile.probes if profile else ()))
    if transport == "maps":
        out += _flush_probes(cat.events[WINDOW_EVENT].code, named)
    elif named:
        out.append("END { clear(@qspan_named); }")
    out.append("")
    return Program("\n".join(out), tuple(probes) + (profile.probes if profile else ()), tuple(skipped), transport, kinds)


def choose_profile(cat: Catalogue, target, name: str | None = None) -> Profile:
    """The named profile, or the first whose library the target has mapped, or "stock"."""
    if name:
        if name not in cat.profiles:
            raise TracerError(f"no profile {name!r} (have: {', '.join(sorted(cat.profiles))})")
        prof = cat.profiles[name]
        if prof.library and not target.library(prof.library):
            raise TracerError(f"profile {name} needs {prof.library} mapped in QEMU PID {target.pid}; it is not")
        return prof
    for prof in cat.profiles.values():
        if prof.library and target.library(prof.library):
            return prof
    return cat.profiles["stock"]


def program_input(target, profile: Profile | None = None, cat: Catalogue | None = None) -> ProgramInput:
    from qspan.target import entry_bytes

    names = {p.target for p in (cat.probes if cat else ()) if p.source == "uprobe"}
    code = entry_bytes(f"/proc/{target.pid}/exe", names) if names else {}
    return ProgramInput(
        entry_kinds={name: first_instruction_kind(b) for name, b in code.items()},
        library_path=target.library(profile.library) if profile and profile.library else None,
        pid=target.pid,
        probe_path=target.probe_path,
        version=target.version_tuple,
        version_text=target.version or "unknown",
        symbols=target.symbols,
        usdt=bool(target.usdt_probes),
        watched_tids=tuple(target.watched_tids),
    )
