"""The one reader of qspan's data files (tracers/*.txt): lines with their file:line.

Every catalogue file has the same shape: one record per line, columns split
by whitespace, `#` starting a comment line. Errors name the place the reader
gives each line, so a typo in any of them reads "probes.txt:42: ...".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib.resources.abc import Traversable
from pathlib import Path

from typing import TypeVar

from qspan.errors import CatalogueError

R = TypeVar("R")


def data_lines(path: Traversable | Path, inline_comments: bool = False) -> Iterator[tuple[str, str]]:
    """(where, line) for each record line of a catalogue file; `where` is "name:lineno".

    With `inline_comments`, text after a `#` anywhere on a line is a comment too
    (costs.txt); elsewhere `#` may appear inside a bpftrace expression.
    """
    try:
        text = path.read_text()
    except OSError as err:
        raise CatalogueError(f"{path}: cannot read catalogue file: {err.strerror}") from err
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = (raw.split("#", 1)[0] if inline_comments else raw).strip()
        if line and not line.startswith("#"):
            yield f"{path.name}:{lineno}", line


def grouped(path: Traversable | Path, parse: Callable[[str, str], R],
            key: Callable[[R], str]) -> dict[str, tuple[R, ...]]:
    """The records of a file of alternatives (sites.txt, offsets.txt), `parse(where, line)` each,
    grouped by `key`, in file order within a group: the first one that matches a binary is used."""
    out: dict[str, list[R]] = {}
    for where, line in data_lines(path, inline_comments=True):
        rec = parse(where, line)
        out.setdefault(key(rec), []).append(rec)
    return {k: tuple(v) for k, v in out.items()}
