"""The probe catalogue: semantic events and the probes that observe them, as data.

tracers/events.txt names the events the correlator understands;
tracers/probes.txt maps each event to concrete probes per probe source and
QEMU version; tracers/profiles/*.txt bind a driver's own probes to the
correlator's roles. All are parsed once into validated objects by the one
reader (reader.py); every error names the file and line. The aggregate
probes and the probe costs are read by the same reader (aggregate.py,
costs.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from importlib.resources.abc import Traversable
from pathlib import Path

from qspan import resources
from qspan.catalogue.reader import data_lines
from qspan.errors import CatalogueError

SOURCES = ("uprobe", "site", "usdt", "tracepoint")
FILTERS = ("proc", "watched", "switch", "wakee", "workers", "vcpus", "submit")
N_ARGS = 4


@dataclass(frozen=True)
class EventSpec:
    name: str
    code: int
    arg_names: tuple[str, ...]
    description: str
    where: str
    # its probes print strings ("str:" arguments in probes.txt): printed, never batched
    has_strings: bool = False


@dataclass(frozen=True)
class VersionMatch:
    """A QEMU version constraint: "*", "7.2", ">=8.0" or "<8.2" (major.minor)."""

    op: str  # "*", "==", ">=", "<"
    version: tuple[int, int]

    @classmethod
    def parse(cls, text: str, where: str) -> "VersionMatch":
        if text == "*":
            return cls("*", (0, 0))
        m = re.fullmatch(r"(>=|<)?(\d+)\.(\d+)", text)
        if not m:
            raise CatalogueError(f"{where}: bad QEMU version constraint {text!r} (use *, 7.2, >=8.0 or <8.2)")
        return cls(m.group(1) or "==", (int(m.group(2)), int(m.group(3))))

    def matches(self, version: tuple[int, int]) -> bool:
        if self.op == "*":
            return True
        if self.op == "==":
            return version == self.version
        if self.op == ">=":
            return version >= self.version
        return version < self.version

    @property
    def text(self) -> str:
        if self.op == "*":
            return "*"
        return ("" if self.op == "==" else self.op) + f"{self.version[0]}.{self.version[1]}"

    @property
    def specificity(self) -> int:
        return {"*": 0, ">=": 1, "<": 1, "==": 2}[self.op]


@dataclass(frozen=True)
class ProbeSpec:
    event: str
    source: str
    qemu: VersionMatch
    target: str
    filter: str
    args: tuple[str, ...]  # bpftrace expressions, "0" when unused; "str:" prefix for strings
    where: str

    @property
    def slot(self) -> tuple[str, str, str]:
        """Lines with the same slot are alternatives for different QEMU versions."""
        return (self.event, self.source, self.target)


@dataclass(frozen=True)
class Profile:
    """Binds the correlator's roles (driver, hop, spawn) to a driver's own probes.

    A profile whose `library` is mapped in the traced QEMU applies to it; its
    probes target USDT sites in that shared object (TARGET is provider:name).
    """

    name: str
    describe: str
    library: str | None
    roles: dict[str, str]
    probes: tuple[ProbeSpec, ...]
    where: str

    def header(self) -> dict:
        return {"name": self.name, "library": self.library, "roles": self.roles}


ROLES = ("driver", "hop", "spawn")
DEFAULT_ROLES = {"driver": "-", "hop": "thread-pool", "spawn": "-"}


@dataclass(frozen=True)
class Catalogue:
    events: dict[str, EventSpec]
    probes: tuple[ProbeSpec, ...]
    profiles: dict[str, Profile] = field(default_factory=dict)
    sites: dict[str, tuple] = field(default_factory=dict)  # function -> its sites.SiteSpec patterns
    offsets: dict[str, tuple] = field(default_factory=dict)  # struct.field -> its offsets.OffsetSpec patterns

    def by_code(self) -> dict[int, EventSpec]:
        return {e.code: e for e in self.events.values()}

    def select(self, version: tuple[int, int], sources: tuple[str, ...]) -> list[ProbeSpec]:
        """The probes that apply to a QEMU `version`, for the given probe sources.

        For each slot (event, source, target) the most specific matching lines win: several
        when they are equally specific, in file order (the first whose struct offsets this
        binary gives is used; the next ones are its fallbacks, program/probes.py).
        """
        best: dict[tuple[str, str, str], int] = {}
        for p in self.probes:
            if p.source in sources and p.qemu.matches(version):
                best[p.slot] = max(best.get(p.slot, -1), p.qemu.specificity)
        return [p for p in self.probes if p.qemu.matches(version) and best.get(p.slot) == p.qemu.specificity
                and p.source in sources]

    def not_for(self, version: tuple[int, int], chosen: ProbeSpec) -> list[ProbeSpec]:
        """Lines of chosen's slot written for other QEMU versions only, more specific than chosen:
        what this version does without (an unknown version gets the general line)."""
        return [p for p in self.probes if p.slot == chosen.slot and not p.qemu.matches(version)
                and p.qemu.specificity > chosen.qemu.specificity]


def parse_events(path: Traversable | Path) -> dict[str, EventSpec]:
    events: dict[str, EventSpec] = {}
    for where, line in data_lines(path):
        parts = line.split(None, 2)
        if len(parts) < 3:
            raise CatalogueError(f"{where}: expected NAME ARGS DESCRIPTION")
        name, args, description = parts
        if not re.fullmatch(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)*", name):
            raise CatalogueError(f"{where}: bad event name {name!r}")
        if name in events:
            raise CatalogueError(f"{where}: event {name} defined twice (first at {events[name].where})")
        arg_names = tuple(args.split(","))
        if len(arg_names) != N_ARGS:
            raise CatalogueError(f"{where}: event {name} must list {N_ARGS} argument names (use - for unused)")
        events[name] = EventSpec(name, len(events) + 1, arg_names, description, where)
    return events


def _probe(where: str, parts: list[str], events: dict[str, EventSpec], in_profile: bool = False) -> ProbeSpec:
    if len(parts) != 5 + N_ARGS:
        cols = "EVENT SOURCE TARGET FILTER" if in_profile else "EVENT SOURCE QEMU TARGET FILTER"
        raise CatalogueError(f"{where}: expected {cols} and {N_ARGS} args, got {len(parts) - in_profile} columns")
    event, source, qemu, target, filt, *args = parts
    if event not in events:
        raise CatalogueError(f"{where}: unknown event {event!r} (not in events.txt)")
    if source not in SOURCES:
        raise CatalogueError(f"{where}: unknown probe source {source!r} (one of {', '.join(SOURCES)})")
    if filt not in FILTERS:
        raise CatalogueError(f"{where}: unknown filter {filt!r} (one of {', '.join(FILTERS)})")
    if in_profile and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*:[A-Za-z_][A-Za-z0-9_]*", target):
        raise CatalogueError(f"{where}: a profile probe's target is provider:name, got {target!r}")
    if source == "tracepoint" and not re.fullmatch(r"[a-z_0-9]+:[a-z_0-9]+", target):
        raise CatalogueError(f"{where}: tracepoint target must be category:name, got {target!r}")
    if source != "tracepoint" and not in_profile and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", target):
        raise CatalogueError(f"{where}: bad symbol or probe name {target!r}")
    exprs = tuple("0" if a == "-" else a for a in args)
    if exprs[0].startswith("str:") or exprs[3].startswith("str:"):
        # the event line's layout (transport/text.py): ARG0 is the key, strings only in ARG1 and ARG2
        raise CatalogueError(f"{where}: string arguments go in ARG1 and ARG2 only (ARG0 is the event's key)")
    return ProbeSpec(event, source, VersionMatch.parse(qemu, where), target, filt, exprs, where)


def parse_profile(path: Traversable | Path, events: dict[str, EventSpec]) -> Profile:
    fields: dict[str, str] = {}
    roles = dict(DEFAULT_ROLES)
    probes = []
    for where, line in data_lines(path):
        key, _, rest = line.partition(" ")
        rest = rest.strip()
        if key in ("name", "describe", "library"):
            fields[key] = rest
        elif key == "role":
            role, _, value = rest.partition(" ")
            if role not in ROLES or not value.strip():
                raise CatalogueError(f"{where}: expected 'role ROLE NAME' with ROLE one of {', '.join(ROLES)}")
            roles[role] = value.strip()
        elif key == "probe":
            parts = rest.split()
            probes.append(_probe(where, parts[:2] + ["*"] + parts[2:], events, in_profile=True))
        else:
            raise CatalogueError(f"{where}: unknown profile line {key!r} (name, describe, library, role, probe)")
    stem = path.name.removesuffix(".txt")
    if fields.get("name") != stem:
        raise CatalogueError(f"{path.name}:1: profile must be named after its file ('name {stem}')")
    if probes and not fields.get("library"):
        raise CatalogueError(f"{path.name}: a profile with probes needs a 'library' line")
    return Profile(stem, fields.get("describe", ""), fields.get("library"), roles, tuple(probes), path.name)


def parse_probes(path: Traversable | Path, events: dict[str, EventSpec], also_mapped: set[str] = frozenset()) -> tuple[ProbeSpec, ...]:
    probes = []
    for where, line in data_lines(path):
        parts = line.split()
        if len(parts) != 5 + N_ARGS:
            raise CatalogueError(
                f"{where}: expected EVENT SOURCE QEMU TARGET FILTER and {N_ARGS} args, got {len(parts)} columns"
            )
        probes.append(_probe(where, parts, events))
    # trace.*: qspan's own program; drv.*: what a driver profile may map, each one optional (docs/profiles.md)
    mapped = {p.event for p in probes} | set(also_mapped) | {n for n in events if n.startswith(("trace.", "drv."))}
    for name, spec in events.items():
        if name not in mapped:
            raise CatalogueError(f"{spec.where}: event {name} has no probe in {path.name} or a profile")
    return tuple(probes)


def _with_strings(events: dict[str, EventSpec], probes: list[ProbeSpec]) -> dict[str, EventSpec]:
    """Mark the events whose probes print strings; every probe of an event must agree."""
    strings: dict[str, tuple[bool, str]] = {}
    for p in probes:
        has = any(a.startswith("str:") for a in p.args)
        first = strings.setdefault(p.event, (has, p.where))
        if first[0] != has:
            raise CatalogueError(f"{p.where}: {p.event} has string arguments here but not at {first[1]} (or the reverse)")
    return {name: replace(e, has_strings=strings.get(name, (False, ""))[0]) for name, e in events.items()}


def load(directory: Traversable | Path | None = None) -> Catalogue:
    """The catalogue shipped with qspan (or the one in `directory`: tests, a user's own)."""
    directory = directory if directory is not None else resources.tracers()
    events = parse_events(directory / "events.txt")
    profiles = {}
    folder = directory / "profiles"
    for path in sorted(folder.iterdir() if folder.is_dir() else (), key=lambda p: p.name):
        if path.name.endswith(".txt"):
            prof = parse_profile(path, events)
            profiles[prof.name] = prof
    mapped = {p.event for prof in profiles.values() for p in prof.probes}
    probes = parse_probes(directory / "probes.txt", events, mapped)
    events = _with_strings(events, [*probes, *(p for prof in profiles.values() for p in prof.probes)])
    from qspan.catalogue import sites  # here: sites.py uses program.hitkind, whose package imports this one

    site_file = directory / "sites.txt"
    patterns = sites.load(site_file) if site_file.is_file() else {}
    entry_lines = {p.target: p for p in probes if p.source == "uprobe"}
    for p in probes:
        if p.source == "site" and p.target not in patterns:
            raise CatalogueError(f"{p.where}: a site probe needs a pattern for {p.target} in sites.txt")
        if p.source == "site" and p.target in entry_lines:
            # the uprobe line would move to the same site, reading its REGS as its own arguments
            raise CatalogueError(f"{p.where}: {p.target} has a site line and a uprobe line "
                                 f"({entry_lines[p.target].where}): one function, one way to probe it")
    from qspan.catalogue import offsets

    offset_file = directory / "offsets.txt"
    fields = offsets.load(offset_file) if offset_file.is_file() else {}
    for p in probes:
        unknown = [f for a in p.args for f in offsets.fields_of(a) if f not in fields]
        if unknown:
            raise CatalogueError(f"{p.where}: {{{unknown[0]}}} is not in offsets.txt")
    return Catalogue(events, probes, profiles, patterns, fields)
