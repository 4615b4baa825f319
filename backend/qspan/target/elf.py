"""What qspan reads from a QEMU binary's ELF file: its functions, USDT notes, build-id, entry bytes."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from qspan.errors import TargetError


FUNCTION_TABLES = (".dynsym", ".symtab")
# Where separate debug info is looked up by build-id: Debian's -dbgsym and Fedora's -debuginfo
# packages install it there, and bpftrace (through bcc) resolves a uprobe's function name there
# too when the binary itself lacks it; qspan reads the same file, in its own (and bpftrace's)
# mount namespace.
DEBUG_ROOT = "/usr/lib/debug/.build-id"


def debug_path(build_id: str) -> str:
    return f"{DEBUG_ROOT}/{build_id[:2]}/{build_id[2:]}.debug"


def _function_tables(elf: ELFFile, found: dict[str, int] | None = None,
                     ambiguous: set[str] | None = None) -> tuple[dict[str, int], dict[str, int]]:
    """Defined functions by name -> address, and how many each table of FUNCTION_TABLES holds
    (a table the file lacks is not counted).

    `.dynsym` is what a binary exports, `.symtab` where the binary keeps one (a self-built
    QEMU without modules exports few functions but keeps all ~10,000 there; Debian's is
    stripped and exports ~9,400). A name defined at two addresses (static functions of two
    files) is left out: a probe by name would take either. `found`/`ambiguous`: what another
    file of the same build (its separate debug info) already gave."""
    found = {} if found is None else found
    ambiguous = set() if ambiguous is None else ambiguous
    counts: dict[str, int] = {}
    for name in FUNCTION_TABLES:
        table = elf.get_section_by_name(name)
        if table is None or table["sh_type"] == "SHT_NOBITS":
            continue
        counts[name] = 0
        for sym in table.iter_symbols():
            if sym["st_info"]["type"] != "STT_FUNC" or sym["st_shndx"] == "SHN_UNDEF":
                continue
            counts[name] += 1
            addr = sym["st_value"]
            if sym.name and found.setdefault(sym.name, addr) != addr:
                ambiguous.add(sym.name)
    for name in ambiguous:
        found.pop(name, None)
    return found, counts


def _with_debug_file(elf: ELFFile) -> tuple[dict[str, int], dict[str, int], str | None]:
    """The binary's functions, and those of its separate debug info where installed for its build-id:
    (functions, counts per table, the debug file read). A debug file of another build-id is not read."""
    ambiguous: set[str] = set()
    found, counts = _function_tables(elf, {}, ambiguous)
    bid = build_id(elf)
    path = debug_path(bid) if len(bid) > 2 else None
    if path is None or not os.path.exists(path):
        return found, counts, None
    try:
        with open(path, "rb") as f:
            dbg = ELFFile(f)
            if build_id(dbg) != bid:
                return found, counts, None
            _, dbg_counts = _function_tables(dbg, found, ambiguous)
    except (OSError, ELFError, struct.error):
        return found, counts, None
    counts["debug .symtab"] = dbg_counts.get(".symtab", 0)
    return found, counts, path


def _functions(elf: ELFFile) -> dict[str, int]:
    return _with_debug_file(elf)[0]


def _notes(elf: ELFFile):
    """Every ELF note of the file (pyelftools' parsed notes), section after section."""
    for section in elf.iter_sections():
        if section["sh_type"] == "SHT_NOTE":
            yield from section.iter_notes()


@dataclass(frozen=True)
class UsdtProbe:
    """One SystemTap SDT probe site (a `.note.stapsdt` entry): what bpftrace's usdt: probes attach to."""

    provider: str
    name: str
    pc: int
    semaphore: int
    args: str


def _note_bytes(desc) -> bytes:
    return desc if isinstance(desc, bytes) else str(desc).encode("latin-1")


def usdt_probes(elf: ELFFile) -> list[UsdtProbe]:
    """Every SDT probe of the file, in note order.

    Matched by the note's owner, "stapsdt", never by its type: pyelftools 0.33 names type 3
    (NT_STAPSDT) "NT_GNU_BUILD_ID", the GNU owner's type 3, and hands over its descriptor as
    bytes. Descriptor: pc, link-time base, semaphore (3 words), then provider, name and
    argument string, each NUL-terminated."""
    probes: list[UsdtProbe] = []
    for note in _notes(elf):
        if note["n_name"] != "stapsdt":
            continue
        raw = _note_bytes(note["n_desc"])
        pc, _base, semaphore = struct.unpack_from("<QQQ", raw)
        provider, name, args = (raw[24:].split(b"\0") + [b"", b""])[:3]
        probes.append(UsdtProbe(provider.decode(errors="replace"), name.decode(errors="replace"), pc, semaphore,
                                args.decode(errors="replace")))
    return probes


def build_id(elf: ELFFile) -> str:
    """The GNU build-id, hex ("" if none): the GNU owner's note only (see usdt_probes)."""
    for note in _notes(elf):
        if note["n_name"] == "GNU" and note["n_type"] == "NT_GNU_BUILD_ID":
            return str(note["n_desc"])
    return ""


@dataclass(frozen=True)
class BinaryTables:
    """What a binary offers a tracer: functions by name, where they come from, USDT probes, build-id."""

    functions: frozenset[str]  # probe-able by name (see _function_tables)
    dynsym_functions: int  # exported
    symtab_functions: int | None  # None: no .symtab (stripped)
    qemu_usdt: int
    build_id: str
    debug_file: str | None = None  # separate debug info read for the build-id (DEBUG_ROOT), if installed
    debug_functions: int | None = None  # functions in its .symtab


def binary_tables(path: str) -> BinaryTables:
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            functions, counts, debug = _with_debug_file(elf)
            return BinaryTables(frozenset(functions), counts.get(".dynsym", 0), counts.get(".symtab"),
                                sum(1 for p in usdt_probes(elf) if p.provider == "qemu"), build_id(elf),
                                debug, counts.get("debug .symtab"))
    except (OSError, ELFError, struct.error) as err:
        raise TargetError(f"{path}: cannot read the QEMU binary: {err}") from err


def elf_facts(path: str) -> tuple[frozenset[str], int, str]:
    """Function names a probe can name, number of qemu USDT probes, and GNU build-id of an ELF file."""
    t = binary_tables(path)
    return t.functions, t.qemu_usdt, t.build_id


def function_code(path: str, names: set[str], n: int = 256) -> dict[str, tuple[int, bytes]]:
    """Each function in `names` (exported, in `.symtab`, or in the separate debug info's): its offset
    in the file and its first `n` bytes.

    The file offset is what a uprobe is attached at (the kernel's uprobes are
    inode + offset); the bytes say how the kernel handles a probe on an
    instruction there (hitkind.py) and whether a probe site matches (sites.txt).
    """
    out: dict[str, tuple[int, bytes]] = {}
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            addrs = {name: addr for name, addr in _functions(elf).items() if name in names}
            for seg in elf.iter_segments():
                if seg["p_type"] != "PT_LOAD" or not seg["p_flags"] & 1:  # executable segments only
                    continue
                lo, hi = seg["p_vaddr"], seg["p_vaddr"] + seg["p_filesz"]
                for name, addr in addrs.items():
                    if lo <= addr < hi:
                        offset = seg["p_offset"] + addr - lo
                        f.seek(offset)
                        out[name] = (offset, f.read(min(n, hi - addr)))
    except (OSError, ELFError):
        return {}
    return out

