"""bpftrace's own parser and compiler as a check of the generated program (golden files: tests/unit/test_program.py)."""

import shutil
import subprocess
from dataclasses import replace

import pytest

from helpers import offsets_for, require_tracing
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
        opt_in=frozenset({"req.acct"}),  # its probe compiled too
        offsets=offsets_for((7, 2)),  # node.name's string reads compiled too
    )
    prog = program.generate(cat, inp)
    src = tmp_path / "p.bt"
    src.write_text(prog.text)
    proc = subprocess.run(["bpftrace", "--emit-elf", str(tmp_path / "p.o"), str(src)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p.o").stat().st_size > 0


def _binary(build: str) -> str:
    from qspanlab import lab

    _wrapper, argv = lab.qemu_command(build)  # 10.0: fetched and unpacked if it is not yet
    return shutil.which(argv[0]) or argv[0]


@pytest.mark.parametrize("build", ["7.2", "10.0"])
def test_every_probe_site_matches_the_lab_qemu(build):
    """sites.txt's patterns match Debian's binaries: else the costliest probes fall back to entries."""
    from qspan.program import sites
    from qspan.target.elf import function_code

    cat = catalogue.load()
    code = function_code(_binary(build), set(cat.sites))
    found = sites.resolve(cat.sites, code)
    assert set(found) == set(cat.sites), f"no site matches in QEMU {build}: {sorted(set(cat.sites) - set(found))}"


@pytest.mark.parametrize("build", ["7.2", "10.0", "7.2-dtrace"])
def test_struct_offsets_are_read_off_each_lab_qemu_s_accessors(build):
    """tracers/offsets.txt's patterns match each build: node names need no offset per version."""
    from qspan.catalogue.offsets import derive
    from qspan.target.elf import function_code

    cat = catalogue.load()
    functions = {s.function for specs in cat.offsets.values() for s in specs}
    found = derive(cat.offsets, function_code(_binary(build), functions))
    assert found == offsets_for((10, 0) if build == "10.0" else (7, 2)), found


def test_bpftrace_compiles_the_program_with_probe_sites(tmp_path):
    """The anchor qspan writes is a file bpftrace accepts uprobes on, and reg() reads compile."""
    require_tracing()
    from qspan.program import sites
    from qspan.target.elf import function_code
    from qspan.transport import sites as site_transport

    cat = catalogue.load()
    anchor = tmp_path / "anchor.elf"
    site_transport.write_anchor(str(anchor))
    found = sites.resolve(cat.sites, function_code(_binary("7.2"), set(cat.sites)))
    inp = program.ProgramInput(
        pid=4242, probe_path="/usr/bin/qemu-system-x86_64", version=(7, 2), version_text="7.2.22",
        symbols=frozenset(p.target for p in cat.probes if p.source in ("uprobe", "site")), usdt=False,
        watched_tids=(4242, 4244), sites=found, anchor_path=str(anchor), opt_in=frozenset({"req.acct"}),
        offsets=offsets_for((7, 2)),
    )
    # co.switch and co.wake by their site lines (the callers of the switch, aio_co_enter's queueing
    # branch); and, where those do not match, by the uprobes they replace, at those functions' sites
    fallback = {f: s for f, s in found.items() if f not in ("qemu_aio_coroutine_enter", "qemu_coroutine_yield",
                                                              "aio_co_enter")}
    for name, sites_given, used in (
            ("sites", found, set(cat.sites) - {"qemu_coroutine_switch", "aio_co_wake"}),
            ("fallback", fallback, set(fallback))):
        prog = program.generate(cat, replace(inp, sites=sites_given))
        assert {s.function for s in prog.sites} == used, name
        src = tmp_path / f"{name}.bt"
        src.write_text(prog.text)
        proc = subprocess.run(["bpftrace", "--emit-elf", str(tmp_path / f"{name}.o"), str(src)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (name, proc.stderr)
