"""tracers/sites.txt: probe sites inside exported functions, as code patterns.

A site replaces a function's entry probe where the entry's instruction would be
single-stepped: `match` finds the site's offset in a binary's code only if the
code from the entry up to it is what the pattern says, byte for byte (but for
the '??' bytes), so the offset is an instruction boundary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

from qspan import resources
from qspan.catalogue.reader import grouped
from qspan.errors import CatalogueError
from qspan.program.hitkind import first_instruction_kind

REGISTERS = ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


@dataclass(frozen=True)
class SiteSpec:
    function: str
    code: tuple[tuple[int | None, ...], ...]  # instructions; None: a byte that may differ
    regs: tuple[str | None, ...]  # arg0, arg1, ... at the site (None: clobbered)
    where: str

    @property
    def offset(self) -> int:
        """The site's offset from the function's entry."""
        return sum(len(i) for i in self.code[:-1])

    def matches(self, code: bytes) -> bool:
        """Whether a binary's code at the function's entry is this pattern."""
        flat = [b for i in self.code for b in i]
        return len(code) >= len(flat) and all(want is None or want == got for want, got in zip(flat, code))


def _instruction(text: str, where: str) -> tuple[int | None, ...]:
    # '??' only in an instruction's last bytes (its displacement or immediate): its opcode and
    # operand bytes are what make the instruction's length, and so the site's offset, certain
    if not text or len(text) % 2 or not re.fullmatch(r"([0-9a-f]{2})+(\?\?)*", text):
        raise CatalogueError(f"{where}: bad instruction {text!r} in CODE (hex byte pairs, then ?? for "
                             "a displacement or immediate)")
    return tuple(None if text[i:i + 2] == "??" else int(text[i:i + 2], 16) for i in range(0, len(text), 2))


def _site(where: str, line: str) -> SiteSpec:
    parts = line.split()
    if len(parts) != 3:
        raise CatalogueError(f"{where}: expected FUNCTION CODE REGS, got {len(parts)} columns")
    function, code_text, regs_text = parts
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", function):
        raise CatalogueError(f"{where}: bad function name {function!r}")
    code = tuple(_instruction(t, where) for t in code_text.split("."))
    # Instructions before the site may branch: decoding runs straight from the entry whatever
    # the branches do, so the site is an instruction boundary (the safety of the probe). That
    # REGS hold the arguments on every path to the site is read off the listed builds' code.
    site = code[-1]
    opcode = site[:2] if site[0] in (0x0F, 0x41) else site[:1]  # a two-byte jcc or push %r8..%r15
    if None in opcode or first_instruction_kind(bytes(b or 0 for b in site)) != "emulated":
        raise CatalogueError(f"{where}: the site instruction {code_text.split('.')[-1]} is not one the kernel emulates")
    regs = tuple(None if r == "-" else r for r in regs_text.split(","))
    bad = [r for r in regs if r is not None and r not in REGISTERS]
    if bad:
        raise CatalogueError(f"{where}: unknown register {bad[0]!r} (one of {', '.join(REGISTERS)})")
    return SiteSpec(function, code, regs, where)


def load(path: Traversable | Path | None = None) -> dict[str, tuple[SiteSpec, ...]]:
    """FUNCTION -> its site patterns, in file order (the first that matches a binary is used)."""
    return grouped(path if path is not None else resources.tracers() / "sites.txt", _site, lambda s: s.function)
