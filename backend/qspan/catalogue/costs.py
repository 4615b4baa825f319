"""tracers/costs.txt: what one probe hit of each kind costs the thread it hits, in microseconds."""

from __future__ import annotations

from importlib.resources.abc import Traversable
from pathlib import Path

from qspan import resources
from qspan.catalogue.reader import data_lines
from qspan.errors import CatalogueError


def load(path: Traversable | Path | None = None) -> dict[str, float]:
    """KIND -> microseconds per hit (measured by bench/probe_cost.py)."""
    path = path if path is not None else resources.tracers() / "costs.txt"
    costs = {}
    for where, line in data_lines(path, inline_comments=True):
        parts = line.split(None, 2)
        try:
            costs[parts[0]] = float(parts[1])
        except (IndexError, ValueError):
            raise CatalogueError(f"{where}: expected KIND MICROSECONDS [what]") from None
    return costs
