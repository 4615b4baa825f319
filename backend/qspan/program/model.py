"""What the program generator takes (ProgramInput) and gives (Program)."""

from __future__ import annotations

from dataclasses import dataclass, field

from qspan.catalogue import ProbeSpec
from qspan.program.sites import ANCHOR_PATH, Site


@dataclass(frozen=True)
class ProgramInput:
    """What the generator needs to know about a target; built from target.Target (program_input)."""

    pid: int
    probe_path: str
    version: tuple[int, int]
    version_text: str
    symbols: frozenset[str]
    usdt: bool
    watched_tids: tuple[int, ...]
    vcpu_tids: tuple[int, ...] = ()  # QMP's vCPU threads (their eventfd writes may be guest kicks)
    library_path: str | None = None  # the profile's shared object, as bpftrace opens it
    # uprobe targets -> "emulated" or "stepped": how the kernel runs their first instruction
    entry_kinds: dict[str, str] = field(default_factory=dict)
    # uprobe targets probed at a site inside them instead (program/sites.py), and the anchor
    # file bpftrace attaches their programs to first (transport/sites.py writes it)
    sites: dict[str, Site] = field(default_factory=dict)
    anchor_path: str = ANCHOR_PATH
    opt_in: frozenset[str] = frozenset()  # probes.OPT_IN_EVENTS asked for
    offsets: dict[str, int] = field(default_factory=dict)  # struct.field -> offset (catalogue/offsets.py)


@dataclass(frozen=True)
class Transport:
    """How events leave the kernel: a program module (ring.py, maps.py, printf.py) describes itself with one.

    `batched`: events come in map dumps, each with a watermark (the runner drains
    the maps; the live path needs no reorder buffer for them). `sampling`:
    windows can be opened and closed in BPF (`--sample-every`). `heartbeat`:
    bpftrace writes to stdout while it traces, so it ends on a closed pipe if
    qspan dies; without, only its parent-death signal ends it (bpftrace.py).
    """

    name: str
    batched: bool
    sampling: bool
    heartbeat: bool = True


@dataclass(frozen=True)
class Program:
    text: str
    probes: tuple[ProbeSpec, ...]
    skipped: tuple[str, ...]  # why catalogue lines were left out (symbol not exported, ...)
    transport: Transport
    probe_kinds: dict[str, list[str]] = field(default_factory=dict)  # event -> costs.txt hit kinds of its probes
    sites: tuple[Site, ...] = ()  # the sites whose anchor probes qspan attaches inside QEMU after bpftrace started
    watched: tuple[int, ...] = ()  # the threads its WATCH_MAP holds from attach on (probes.watched_tids)
