"""tracers/aggregate.txt: the two probe sites per request of aggregate-only mode."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

from qspan import resources
from qspan.catalogue import VersionMatch
from qspan.catalogue.reader import data_lines
from qspan.errors import CatalogueError


@dataclass(frozen=True)
class AggProbe:
    role: str  # start: the request reaches a block node; end: the device model completes it
    qemu: VersionMatch
    function: str
    key: str  # bpftrace expression naming the request at both ends
    op: int | None  # 1 read, 2 write (start lines only)
    where: str


def load(path: Traversable | Path | None = None) -> list[AggProbe]:
    path = path if path is not None else resources.tracers() / "aggregate.txt"
    out = []
    for where, line in data_lines(path):
        parts = line.split()
        if len(parts) != 5 or parts[0] not in ("start", "end"):
            raise CatalogueError(f"{where}: expected ROLE(start|end) QEMU FUNCTION KEY OP")
        role, qemu, fn, key, op = parts
        if role == "start" and op not in ("1", "2"):
            raise CatalogueError(f"{where}: a start line needs OP 1 (read) or 2 (write)")
        out.append(AggProbe(role, VersionMatch.parse(qemu, where), fn, key, int(op) if op != "-" else None, where))
    return out
