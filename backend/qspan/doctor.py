"""`qspan doctor PID`: what qspan can see of one QEMU, what it cannot, and what would work instead.

Never a guess: every line comes from the binary (its symbol tables, USDT notes,
build-id, the code at each probed function), the process (threads, QMP), the
catalogue and the program qspan would generate, or this machine (bpftrace,
root, tracefs). A binary qspan cannot trace gets the reason and the builds
that would work; a traceable one gets each semantic event with how it would
be observed, and what each gap costs the spans.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from qspan import catalogue, pipeline, target
from qspan.errors import NotQemu, QspanError
from qspan.program.probes import OPT_IN_EVENTS
from qspan.target import elf

# What the spans lose without an event (docs/events.md says what each one is).
WITHOUT = {
    "co.switch": "no request can be followed: the build cannot be traced",
    "req.submit": "no request starts: the build cannot be traced",
    "req.ack": "spans end when the request's coroutine does, not at the ack to the guest",
    "node.io": "spans have no block-node visits and no thread-pool hop",
    "node.name": "node visits show the node's address instead of its name",
    "co.schedule": "cross-thread wake-ups (aio_co_schedule) are not seen: the handoff is not split",
    "co.wake": "wake-ups inside coroutines are not seen: the handoff is not split",
    "kick.read": "no kick phase: spans start at the submission",
    "notify": "no kick phase: spans start at the submission",
    "req.acct": "no QEMU accounting interval on spans: qspan crosscheck cannot run",
    "loop.poll": "coroutine ends are inferred later (at the next event), runs look longer",
    "sched.switch": "no what-ran-instead (asleep, runnable) on the watched threads",
    "sched.wakeup": "asleep and runnable are not told apart in what ran instead",
    "sys.io": "no worker-thread syscall in the pool hop",
    "sys.io_done": "no worker-thread syscall in the pool hop",
}


@dataclass
class Finding:
    level: str  # ok, note, warn, fail
    text: str


@dataclass
class Report:
    pid: int
    exe: str = ""
    verdict: str = ""
    traceable: bool = False
    binary: list[Finding] = field(default_factory=list)
    machine: list[Finding] = field(default_factory=list)
    process: list[Finding] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (event, level, how or what is lost)
    instead: list[str] = field(default_factory=list)  # what would work where qspan cannot

    def render(self) -> str:
        mark = {"ok": "ok  ", "note": "note", "warn": "WARN", "fail": "FAIL"}
        out = [f"PID {self.pid} ({self.exe or '?'}): what qspan can trace of it"]
        for title, items in (("binary", self.binary), ("process", self.process), ("this machine", self.machine)):
            if items:
                out.append(f"{title}:")
                out += [f"  {mark[f.level]}  {f.text}" for f in items]
        if self.events:
            out.append("events (tracers/events.txt), as they would be observed:")
            width = max(len(e) for e, _, _ in self.events)
            out += [f"  {mark[level]}  {e:<{width}}  {how}" for e, level, how in self.events]
        out.append(f"verdict: {self.verdict}")
        if self.instead:
            out.append("what would work instead:")
            out += [f"  - {line}" for line in self.instead]
        return "\n".join(out)


def _machine() -> list[Finding]:
    found = []
    bpftrace = shutil.which("bpftrace")
    found.append(Finding("ok", f"bpftrace at {bpftrace}") if bpftrace else
                 Finding("fail", "no bpftrace on PATH (Debian: apt-get install bpftrace)"))
    found.append(Finding("ok", "running as root") if os.geteuid() == 0 else
                 Finding("fail", "not root: BPF and uprobes need root"))
    tracefs = Path("/sys/kernel/tracing/events")
    found.append(Finding("ok", "tracefs mounted") if tracefs.is_dir() else
                 Finding("warn", "tracefs not mounted at /sys/kernel/tracing (qspan mounts it when it traces)"))
    return found


def _binary(pid: int, rep: Report) -> elf.BinaryTables | None:
    exe_link = f"/proc/{pid}/exe"
    try:
        tables = elf.binary_tables(exe_link)
    except QspanError as err:
        rep.binary.append(Finding("fail", str(err)))
        return None
    symtab = (f"{tables.symtab_functions:,} functions in .symtab" if tables.symtab_functions is not None
              else "no .symtab (stripped)")
    rep.binary.append(Finding("ok" if tables.dynsym_functions or tables.symtab_functions else "warn",
                              f"{tables.dynsym_functions:,} exported functions (.dynsym), {symtab}"))
    rep.binary.append(Finding("ok" if tables.qemu_usdt else "note",
                              f"{tables.qemu_usdt:,} qemu USDT probes" if tables.qemu_usdt else
                              "no qemu USDT probes (not built with --enable-trace-backends=dtrace): uprobes by name"))
    if tables.debug_file:
        rep.binary.append(Finding("ok", f"build-id {tables.build_id}; separate debug info read from "
                                        f"{tables.debug_file}: {tables.debug_functions or 0:,} functions in its "
                                        ".symtab (bpftrace finds the same file)"))
    elif tables.build_id:
        rep.binary.append(Finding("note", f"build-id {tables.build_id}; no separate debug info at "
                                          f"{elf.debug_path(tables.build_id)}"))
    else:
        rep.binary.append(Finding("note", "no GNU build-id note"))
    return tables


def diagnose(pid: int) -> Report:
    rep = Report(pid)
    rep.machine = _machine()
    try:
        rep.exe = os.readlink(f"/proc/{pid}/exe")
    except OSError as err:
        rep.verdict = f"cannot read PID {pid}: {err.strerror} (no such process, or not root)"
        return rep
    try:
        plan = pipeline.plan(pid, accounting=True)  # the opt-in events too: how they would be observed
    except NotQemu as err:
        rep.verdict = f"cannot trace: {err}"
        return rep
    except QspanError as err:
        tables = _binary(pid, rep)
        rep.verdict = f"cannot trace: {err}"
        if tables is not None and "qemu_coroutine_switch" not in tables.functions and not tables.qemu_usdt:
            rep.instead = [
                "QEMU built with --enable-trace-backends=dtrace (Fedora and RHEL ship it so): its qemu:* USDT "
                "probes give coroutine enter, yield and terminate",
                "the same build unstripped, or with --enable-modules (which exports its functions): qspan "
                "probes functions by name from .dynsym or .symtab",
            ]
            if tables.build_id and not tables.debug_file:
                rep.instead.insert(0, f"this binary's separate debug info (Debian: its -dbgsym package; Fedora: "
                                      f"-debuginfo) installed at {elf.debug_path(tables.build_id)}: qspan and "
                                      "bpftrace read function names from its .symtab")
        return rep
    _binary(pid, rep)
    t, cat, prog = plan.target, plan.catalogue, plan.program
    roles: dict[str, list[str]] = {}
    for th in t.threads:
        roles.setdefault(th.role, []).append(f"{th.name or th.comm} ({th.tid})")
    rep.process.append(Finding("ok", f"QEMU {t.version or '?'}; threads: "
                                     + "; ".join(f"{r}: {', '.join(v)}" for r, v in sorted(roles.items()))))
    rep.process.append(Finding("ok", f"QMP at {t.qmp_path}: roles and block nodes from QEMU itself") if t.qmp_path else
                       Finding("ok", f"QMP through libvirt (virsh qemu-monitor-command {t.libvirt_domain}): roles and "
                                     "block nodes from QEMU itself") if t.libvirt_domain and t.nodes else
                       Finding("warn", "no QMP socket found on the command line: roles from thread names "
                                       "(-name debug-threads=on), node names only from QEMU's memory"))
    if not t.watched_tids:
        rep.process.append(Finding("warn", "no iothread or main loop found: no what-ran-instead"))
    rep.process.append(Finding("ok", f"profile {plan.profile.name}"))
    for note in t.notes:
        rep.process.append(Finding("note", note))
    sites = {s.function: s for s in prog.sites}
    for name, spec in cat.events.items():
        probes = [p for p in prog.probes if p.event == name]
        if not probes:
            lost = WITHOUT.get(name)
            if lost is None:
                continue  # a driver profile's event, or the sampling window: not the binary's to give
            rep.events.append((name, "warn", f"not probed: {lost}"))
            continue
        hows = []
        for kind, p in zip(prog.probe_kinds.get(name, []), probes):
            site = sites.get(p.target) if p.source in ("uprobe", "site") else None
            where = f"{p.target} +{site.offset:#x}" if site else p.target
            how = {"hit.uprobe-emulated": " (emulated)", "hit.uprobe-stepped": " (single-stepped)"}.get(kind, "")
            hows.append(f"{p.source}:{where}{how}")
        stepped = any(k.endswith("stepped") for k in prog.probe_kinds.get(name, []))
        opt_in = f" (opt-in: {OPT_IN_EVENTS[name]})" if name in OPT_IN_EVENTS else ""
        rep.events.append((name, "note" if stepped else "ok", ", ".join(dict.fromkeys(hows)) + opt_in))
    stepped = [e for e, level, _ in rep.events if level == "note"]
    missing = [e for e, level, _ in rep.events if level == "warn"]
    rep.traceable = True
    rep.verdict = "traceable" + (f"; not probed: {', '.join(missing)} (see above)" if missing else ", every event") + (
        f"; single-stepped probes (~5 us a hit, against ~1.2 emulated): {', '.join(stepped)}" if stepped else "")
    if stepped:
        rep.instead.append("the single-stepped functions have no tracers/sites.txt pattern for this build's code; "
                           "a dtrace build gives USDT probes for the coroutine events")
    for why in prog.skipped:
        rep.process.append(Finding("note", f"catalogue line left out: {why}"))
    return rep


def run(pid: int) -> tuple[str, int]:
    """The report's text, and the exit code: 0 traceable, 1 not."""
    if not target.process_alive(pid):
        return f"no process {pid}", 1
    rep = diagnose(pid)
    return rep.render(), 0 if rep.traceable else 1
