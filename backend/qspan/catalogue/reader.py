"""The one reader of qspan's data files (tracers/*.txt): lines with their file:line.

Every catalogue file has the same shape: one record per line, columns split
by whitespace, `#` starting a comment line. Errors name the place the reader
gives each line, so a typo in any of them reads "probes.txt:42: ...".
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.resources.abc import Traversable
from pathlib import Path

from qspan.errors import CatalogueError


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
