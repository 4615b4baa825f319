"""tracers/offsets.txt: struct field offsets read off the binary's own accessor functions.

A probe line may read a field of a QEMU struct (`{bs.node_name}` in an argument expression).
Rather than trusting a constant per QEMU version, qspan reads the offset from an exported
function that returns or dereferences that field, whose code is short and stable (for
bdrv_get_node_name, `lea OFFSET(%rdi),%rax; ret`). `derive` matches each pattern against the
binary's code at the function's entry and takes the displacement it captures; a field whose
accessor does not match stays unknown, and the probe lines that need it are left out and say so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

from qspan import resources
from qspan.catalogue.reader import grouped
from qspan.errors import CatalogueError

# a field in an argument expression: {struct.field}
PLACEHOLDER = re.compile(r"\{([a-z_]+\.[a-z_]+)\}")
_CAPTURE = {"<s8>": 1, "<s32>": 4}  # a signed little-endian displacement of that many bytes


@dataclass(frozen=True)
class OffsetSpec:
    name: str  # struct.field
    function: str
    code: tuple[int | None | str, ...]  # bytes; None: any; "<s8>"/"<s32>": the captured displacement
    value: int | None  # the offset when the pattern captures none (the field at +0: no displacement)
    where: str

    def match(self, code: bytes) -> int | None:
        """The offset, if the binary's code at the function's entry is this pattern."""
        pos, got = 0, self.value
        for want in self.code:
            if isinstance(want, str):
                size = _CAPTURE[want]
                if pos + size > len(code):
                    return None
                got = int.from_bytes(code[pos:pos + size], "little", signed=True)
                pos += size
                continue
            if pos >= len(code) or (want is not None and code[pos] != want):
                return None
            pos += 1
        return got


def _spec(where: str, line: str) -> OffsetSpec:
    parts = line.split()
    if len(parts) not in (3, 4):
        raise CatalogueError(f"{where}: expected NAME FUNCTION CODE [VALUE], got {len(parts)} columns")
    name, function, code_text = parts[:3]
    if not re.fullmatch(r"[a-z_]+\.[a-z_]+", name):
        raise CatalogueError(f"{where}: bad field name {name!r} (struct.field)")
    code: list[int | None | str] = []
    for token in re.findall(r"<s8>|<s32>|\?\?|[0-9a-f]{2}|\.|.", code_text):
        if token in _CAPTURE or token == "??":
            code.append(None if token == "??" else token)
        elif token == ".":
            continue  # instruction boundaries are for the reader
        elif re.fullmatch(r"[0-9a-f]{2}", token):
            code.append(int(token, 16))
        else:
            raise CatalogueError(f"{where}: bad CODE {code_text!r} (hex bytes, ??, <s8> or <s32>)")
    captures = sum(1 for c in code if isinstance(c, str))
    value = int(parts[3], 0) if len(parts) == 4 else None
    if captures > 1 or (captures == 0) == (value is None):
        raise CatalogueError(f"{where}: CODE must capture one displacement (<s8>, <s32>), or else give VALUE")
    return OffsetSpec(name, function, tuple(code), value, where)


def load(path: Traversable | Path | None = None) -> dict[str, tuple[OffsetSpec, ...]]:
    """struct.field -> its patterns, in file order (the first that matches a binary is used)."""
    return grouped(path if path is not None else resources.tracers() / "offsets.txt", _spec, lambda s: s.name)


def derive(specs: dict[str, tuple[OffsetSpec, ...]], code: dict[str, tuple[int, bytes]]) -> dict[str, int]:
    """struct.field -> its offset in this binary, for the fields whose accessor's code matches."""
    found = {}
    for name, alternatives in specs.items():
        for spec in alternatives:
            if spec.function in code and (off := spec.match(code[spec.function][1])) is not None:
                found[name] = off
                break
    return found


def fields_of(expr: str) -> list[str]:
    return PLACEHOLDER.findall(expr)


def substitute(expr: str, offsets: dict[str, int]) -> str:
    """An argument expression with each {struct.field} replaced by its offset (all must be known)."""
    return PLACEHOLDER.sub(lambda m: hex(offsets[m.group(1)]), expr)
