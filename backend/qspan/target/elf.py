"""What qspan reads from a QEMU binary's ELF file: exported functions, USDT notes, build-id, entry bytes."""

from __future__ import annotations

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from qspan.errors import TargetError


def elf_facts(path: str) -> tuple[frozenset[str], int, str]:
    """Exported function names, number of qemu USDT probes, and GNU build-id of an ELF file."""
    symbols: set[str] = set()
    usdt = 0
    build_id = ""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            dynsym = elf.get_section_by_name(".dynsym")
            if dynsym is not None:
                for sym in dynsym.iter_symbols():
                    if sym["st_info"]["type"] == "STT_FUNC" and sym["st_shndx"] != "SHN_UNDEF":
                        symbols.add(sym.name)
            for section in elf.iter_sections():
                if section["sh_type"] != "SHT_NOTE":
                    continue
                for note in section.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID":
                        build_id = note["n_desc"]
                    elif note["n_name"] == "stapsdt" and note["n_type"] == 3:
                        # desc: pc, base, semaphore (3 addresses), then "provider\0name\0args\0"
                        desc = note["n_desc"]
                        raw = desc if isinstance(desc, bytes) else desc.encode("latin-1")
                        if raw[24:].split(b"\0", 1)[0] == b"qemu":
                            usdt += 1
    except (OSError, ELFError) as err:
        raise TargetError(f"{path}: cannot read the QEMU binary: {err}") from err
    return frozenset(symbols), usdt, build_id


def function_code(path: str, names: set[str], n: int = 256) -> dict[str, tuple[int, bytes]]:
    """Each exported function in `names`: its offset in the file and its first `n` bytes.

    The file offset is what a uprobe is attached at (the kernel's uprobes are
    inode + offset); the bytes say how the kernel handles a probe on an
    instruction there (hitkind.py) and whether a probe site matches (sites.txt).
    """
    out: dict[str, tuple[int, bytes]] = {}
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            dynsym = elf.get_section_by_name(".dynsym")
            if dynsym is None:
                return out
            addrs = {sym.name: sym["st_value"] for sym in dynsym.iter_symbols()
                     if sym.name in names and sym["st_info"]["type"] == "STT_FUNC" and sym["st_shndx"] != "SHN_UNDEF"}
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

