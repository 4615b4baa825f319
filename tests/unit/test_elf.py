"""What qspan reads from ELF files, checked on real binaries against binutils' readelf.

Debian's own /usr/bin/python3.11 carries SystemTap SDT notes (provider "python"), so the
USDT note parser is tested on a real binary on every machine qspan is set up on (setup
installs python3 and binutils). A self-built binary that is not stripped keeps its static
functions in `.symtab` only: a small one is compiled here.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from qspan.errors import TargetError
from qspan.target import elf

PYTHON = Path("/usr/bin/python3.11")  # Debian 12's python3.11-minimal, built with dtrace probes


def _readelf_notes(path: Path) -> tuple[list[tuple[str, str, int, int, str]], str]:
    """(provider, name, pc, semaphore, args) of every stapsdt note, and the build-id, as readelf says."""
    out = subprocess.run(["readelf", "-n", "--wide", str(path)], capture_output=True, text=True, check=True).stdout
    probes = re.findall(r"Provider: (\S+)\s+Name: (\S+)\s+Location: (0x[0-9a-f]+), Base: 0x[0-9a-f]+, "
                        r"Semaphore: (0x[0-9a-f]+)\s+Arguments: ?([^\n]*)", out)
    build_id = re.search(r"Build ID: ([0-9a-f]+)", out)
    return ([(p, n, int(pc, 16), int(sem, 16), args.strip()) for p, n, pc, sem, args in probes],
            build_id.group(1) if build_id else "")


def test_usdt_notes_and_build_id_match_readelf_on_a_real_binary():
    expected, expected_id = _readelf_notes(PYTHON)
    assert len(expected) >= 5 and expected_id, "readelf found no SDT notes: is this Debian's python3.11?"
    with open(PYTHON, "rb") as f:
        got = elf.usdt_probes(ELFFile(f))
        build_id = elf.build_id(ELFFile(f))
    assert [(p.provider, p.name, p.pc, p.semaphore, p.args) for p in got] == expected
    # pyelftools calls a stapsdt note's type NT_GNU_BUILD_ID: the build-id must not be taken from one
    assert build_id == expected_id


def test_elf_facts_counts_only_qemu_probes_and_keeps_the_gnu_build_id():
    symbols, usdt, build_id = elf.elf_facts(str(PYTHON))
    assert usdt == 0  # python's probes are not QEMU's
    assert build_id == _readelf_notes(PYTHON)[1]
    assert "Py_Initialize" in symbols


SOURCE_A = """
static int __attribute__((noinline)) twice(int x) { return 2 * x + 1; }
static int __attribute__((noinline)) only_here(int x) { return x ^ 7; }
int exported_a(int x) { return twice(x) + only_here(x); }
"""
SOURCE_B = """
static int __attribute__((noinline)) twice(int x) { return 2 * x + 3; }
int exported_a(int);
int main(int argc, char **argv) { (void)argv; return twice(argc) + exported_a(argc); }
"""


def test_functions_come_from_symtab_too_and_an_ambiguous_name_is_left_out(tmp_path):
    """A self-built QEMU keeps its static functions in .symtab only. `twice` is static in two
    files: a probe by that name could land in either, so qspan does not offer it."""
    (tmp_path / "a.c").write_text(SOURCE_A)
    (tmp_path / "b.c").write_text(SOURCE_B)
    exe = tmp_path / "prog"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(tmp_path / "a.c"), str(tmp_path / "b.c")], check=True)
    symbols, usdt, _ = elf.elf_facts(str(exe))
    assert {"only_here", "exported_a", "main"} <= symbols
    assert "twice" not in symbols
    code = elf.function_code(str(exe), {"only_here", "twice"})
    assert set(code) == {"only_here"}
    offset, head = code["only_here"]
    assert exe.read_bytes()[offset:offset + len(head)] == head
    # stripped, it has no .symtab: only what it exports (nothing here, it is no -rdynamic build)
    subprocess.run(["strip", str(exe)], check=True)
    assert "only_here" not in elf.elf_facts(str(exe))[0]


def test_a_file_that_is_no_elf_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"not an ELF file at all")
    with pytest.raises(TargetError, match="cannot read the QEMU binary"):
        elf.elf_facts(str(junk))
