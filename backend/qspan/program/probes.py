"""The parts of a program every transport shares: which probes, where they attach, what they filter.

Only entry probes are used: never uretprobes, since QEMU coroutines switch
stacks (the kernel kills QEMU with SIGILL once two requests are in flight).
"""

from __future__ import annotations

from dataclasses import replace

from qspan.catalogue import Catalogue, EventSpec, ProbeSpec, offsets
from qspan.errors import TracerError
from qspan.program.model import ProgramInput

BEGIN_MARK = "QSPAN-ATTACHED"
# Events without which there are no request spans.
REQUIRED_EVENTS = ("co.switch", "req.submit")
# Events traced only when asked for (ProgramInput.opt_in): each costs a probe hit a request
# that the spans' phases do not need.
OPT_IN_EVENTS = {
    "req.acct": "QEMU's own accounting interval on each span (--qemu-accounting)",
}


def select_probes(cat: Catalogue, inp: ProgramInput) -> tuple[list[ProbeSpec], list[str]]:
    """The catalogue's probes for this target, and why the others were left out."""
    sources = ("usdt", "uprobe", "site", "tracepoint") if inp.usdt else ("uprobe", "site", "tracepoint")
    chosen, skipped = [], []
    candidates = cat.select(inp.version, sources)
    candidates = [p for p in candidates if p.event not in OPT_IN_EVENTS or p.event in inp.opt_in]
    # A USDT probe of an event replaces the uprobes of the same event.
    usdt_events = {p.event for p in candidates if p.source == "usdt"}
    # An event's site lines (probes inside functions, at their sites.txt patterns) replace its
    # uprobes when every one of them is placed in this binary; otherwise they are all left out.
    site_lines: dict[str, list[ProbeSpec]] = {}
    for p in candidates:
        if p.source == "site":
            site_lines.setdefault(p.event, []).append(p)
    placed = {e for e, lines in site_lines.items()
              if all(p.target in inp.sites and p.target in inp.symbols for p in lines)}
    used_slots: set[tuple[str, str, str]] = set()
    for p in candidates:
        if p.slot in used_slots:
            continue  # a fallback line of a slot already probed
        if p.source in ("uprobe", "site") and p.event in usdt_events:
            continue
        if p.source == "site" and p.event not in placed:
            missing = [q.target for q in site_lines[p.event] if q.target not in inp.sites]
            skipped.append(f"{p.where}: {p.event}: no site in use for {', '.join(missing)} (its tracers/sites.txt "
                           f"pattern does not match this binary's code, or --probe-sites off), so {p.event} "
                           "keeps its uprobes")
            continue
        if p.source == "uprobe" and p.event in placed:
            continue
        if p.source == "uprobe" and p.target not in inp.symbols:
            skipped.append(f"{p.where}: {p.event}: {p.target} is not exported by this binary")
            continue
        fields = [f for a in p.args for f in offsets.fields_of(a)]
        unknown = [f for f in dict.fromkeys(fields) if f not in inp.offsets]
        if unknown:
            fallback = any(q.slot == p.slot and q is not p and candidates.index(q) > candidates.index(p)
                           for q in candidates)
            skipped.append(f"{p.where}: {p.event}: offset of {', '.join(unknown)} unknown (its accessor's code "
                           "does not match tracers/offsets.txt)" + ("; the slot's next line is used" if fallback
                                                                    else ""))
            continue
        if fields:
            p = replace(p, args=tuple(offsets.substitute(a, inp.offsets) for a in p.args))
        for q in cat.not_for(inp.version, p):
            skipped.append(f"{q.where}: {q.event}: written for QEMU {q.qemu.text} only; this build "
                           f"({inp.version_text}) gets {p.where}'s, without what that line adds")
        used_slots.add(p.slot)
        chosen.append(p)
    have = {p.event for p in chosen}
    missing = [e for e in REQUIRED_EVENTS if e not in have]
    if missing:
        raise TracerError(
            f"QEMU {inp.version_text}: no usable probe for {', '.join(missing)}; "
            "this build cannot be traced (see tracers/probes.txt)"
        )
    return chosen, skipped


# The threads whose scheduling is traced, a BPF hash map (tid -> 1) rather than tids written into
# the filters: qspan adds an iothread created after attach without reloading the program
# (transport/follow.py). bpftrace 0.17's tid is 64-bit; the tracepoints' pids are cast to match.
WATCH_MAP = "@qspan_watch"


def watched_tids(inp: ProgramInput) -> tuple[int, ...]:
    """The threads watched from attach on: the event loops where coroutines run (target.watched_tids)."""
    return inp.watched_tids or (inp.pid,)


def watch_init(inp: ProgramInput) -> str:
    """BEGIN's statements that fill WATCH_MAP with the threads watched from attach on."""
    return " ".join(f"{WATCH_MAP}[(uint64){t}] = 1;" for t in watched_tids(inp))


def predicate(kind: str, inp: ProgramInput) -> str:
    """The bpftrace filter of a probe's FILTER column (catalogue.FILTERS)."""
    if kind == "proc":
        return f"pid == {inp.pid}"
    if kind == "watched":
        return f"{WATCH_MAP}[tid]"
    if kind == "switch":
        return f"{WATCH_MAP}[(uint64)args->prev_pid] || {WATCH_MAP}[(uint64)args->next_pid]"
    if kind == "wakee":
        return f"{WATCH_MAP}[(uint64)args->pid]"
    if kind == "vcpus":
        return f"pid == {inp.pid}" + (f" && ({' || '.join(f'tid == {t}' for t in inp.vcpu_tids)})" if inp.vcpu_tids else "")
    if kind == "workers":
        return f"pid == {inp.pid} && {WATCH_MAP}[tid] == 0"
    if kind == "submit":
        return f"pid == {inp.pid}"
    raise ValueError(kind)


def filter_action(kind: str) -> str:
    """What a FILTER column does besides filtering: "submit" watches the thread that submits a
    guest request from then on (a disk on the main loop in a VM that also has iothreads: the
    main loop was not among the threads watched from attach). One map lookup a request; the
    correlator starts the thread's timeline at its first watched event (threads.py _watch)."""
    if kind == "submit":
        return f"if ({WATCH_MAP}[tid] == 0) {{ {WATCH_MAP}[tid] = 1; }}"
    return ""


def attach_point(p: ProbeSpec, inp: ProgramInput, in_library: bool = False) -> str:
    if in_library:
        return f"usdt:{inp.library_path}:{p.target}"
    if p.source in ("uprobe", "site"):
        return f"uprobe:{inp.probe_path}:{p.target}"
    if p.source == "usdt":
        return f"usdt:{inp.probe_path}:qemu:{p.target}"
    return f"tracepoint:{p.target}"


def print_once(p: ProbeSpec, spec: EventSpec) -> str:
    """An event with strings (a node's name) is printed, once per key (ARG0), by every transport."""
    key = p.args[0]
    fmt = ["%d", "%llu", "%d", "%lld"] + ["%s" if a.startswith("str:") else "%lld" for a in p.args[1:]]
    vals = ["nsecs", "tid", "$k"] + [f"str({a[4:]})" if a.startswith("str:") else a for a in p.args[1:]]
    return (
        f"$k = {key}; if (@qspan_named[$k] == 0) {{ @qspan_named[$k] = 1; "
        f'printf("{" ".join(fmt)}\\n", {spec.code}, {", ".join(vals)}); }}'
    )
