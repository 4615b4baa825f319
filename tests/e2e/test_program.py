"""bpftrace's own parser and compiler as a check of the generated program (golden files: tests/unit/test_program.py)."""

import subprocess

import pytest

from helpers import require_tracing
from qspan import catalogue
from qspan import program

pytestmark = pytest.mark.e2e


def test_bpftrace_compiles_the_generated_program(tmp_path):
    """bpftrace itself parses and compiles the program for the installed QEMU (nothing attached)."""
    require_tracing()
    cat = catalogue.load()
    inp = program.ProgramInput(
        pid=4242, probe_path="/usr/bin/qemu-system-x86_64", version=(7, 2), version_text="7.2.22",
        symbols=frozenset(p.target for p in cat.probes if p.source == "uprobe"), usdt=False, watched_tids=(4242, 4244),
    )
    prog = program.generate(cat, inp)
    src = tmp_path / "p.bt"
    src.write_text(prog.text)
    proc = subprocess.run(["bpftrace", "--emit-elf", str(tmp_path / "p.o"), str(src)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p.o").stat().st_size > 0
