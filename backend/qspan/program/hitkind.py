"""What kind of probe hit a probe site is: the key into tracers/costs.txt.

A uprobe whose first instruction the kernel can emulate (push, call, jmp, jcc,
nop) is ~4x cheaper than one whose instruction must be single-stepped out of
line (bench/probe_cost.py measures both).
"""

from __future__ import annotations

EMULATED_OPCODES = {0xE8, 0xE9, 0xEB, 0x90} | set(range(0x50, 0x58)) | set(range(0x70, 0x80))


def first_instruction_kind(code: bytes) -> str:
    """'emulated' or 'stepped': how the kernel handles a uprobe on the instruction at code[0]."""
    if not code:
        return "stepped"
    op = code[0]
    if op == 0x41 and len(code) > 1 and 0x50 <= code[1] <= 0x57:  # push %r8..%r15
        return "emulated"
    if op == 0x0F and len(code) > 1 and 0x80 <= code[1] <= 0x8F:  # jcc rel32
        return "emulated"
    return "emulated" if op in EMULATED_OPCODES else "stepped"


def hit_kind(source: str, entry: str | None) -> str:
    """The costs.txt kind of one probe: its source and, for uprobes, its first instruction."""
    if source == "site":  # placed at an instruction the kernel emulates (sites.txt)
        return "hit.uprobe-emulated"
    if source == "uprobe":
        return "hit.uprobe-" + ("emulated" if entry == "emulated" else "stepped")
    return f"hit.{source}"
