"""Probe sites inside functions (tracers/sites.txt): matching, argument registers, the anchor file.

The code bytes below were read off Debian's QEMU 7.2 binary (objdump -d); the
e2e suite checks the patterns against the real 7.2 and 10.0 binaries.
"""

import io
import os

import pytest
from elftools.elf.elffile import ELFFile

from qspan import catalogue, program
from qspan.catalogue import sites as site_catalogue
from qspan.errors import CatalogueError
from qspan.program import sites
from qspan.transport import sites as site_transport
from helpers import GOLDEN, offsets_for

REGEN = os.environ.get("QSPAN_REGEN") == "1"

# function -> (file offset, first bytes) as in Debian's 7.2 (1:7.2+dfsg-7+deb12u*)
CODE_7_2 = {
    "qemu_coroutine_switch": (0x981B90, bytes.fromhex("4883ec184889f84889f74889342431f68954240ce897feffff488d7868")),
    "aio_co_wake": (0x97ED30, bytes.fromhex("4889fe488b7f28e9f4feffff0f1f4000")),
    "blk_aio_pwritev": (0x861210, bytes.fromhex("4883ec08488b42204885c0781e415141")),
    "blk_aio_preadv": (0x8611C0, bytes.fromhex("4883ec08488b42204885c0781e415141")),
    "blk_aio_flush": (0x8612F0, bytes.fromhex("4883ec084531c94c8d057208000031c95231d2")),
    "block_acct_done": (0x85A270, bytes.fromhex("31d2e979faffff")),
    # the sites of probes.txt's `site` lines, after branches (up to a few bytes past the site)
    "qemu_aio_coroutine_enter": (0x9805E0, bytes.fromhex(
        "41574156415541544989fc55534889f34883ec4864488b042528000000488944243831c04c8d6c2410e822160000"
        "48c74338000000004889c5488d433848895c24104889442418eb0c0f1f8000000000488b5c24104885db0f8442"
        "0200004c8b7330488b442410488b503848895424104885d20f84070100008b3569f4830048c740380000000085"
        "f60f85010100004d85f60f855d02000048837b10000f857b02000048896b104c896328ba030000004889de4889"
        "efe8f514000048837b4000")),
    "qemu_coroutine_yield": (0x9809A0, bytes.fromhex(
        "4155415455534883ec2864488b042528000000488944241831c0e871120000488b68104889c38b05fcf0830085c0"
        "75404885ed0f84ad00000048c7431000000000488b44241864482b0425280000000f858c0000004883c4284889ee"
        "4889dfba010000005b5d415c415de98111000090")),
    "aio_co_enter": (0x97EC30, bytes.fromhex(
        "415541544989fc554889f5534883ec08e82bf0ffff4889c34885c074634939dc741e4883c4084889ee4c89e75b5d"
        "415c415de939fdffff660f1f840000000000e8eb2f000084c0744fe8b22f00004839c5")),
}


def test_every_site_of_the_catalogue_matches_qemu_7_2_at_its_offset():
    found = sites.resolve(catalogue.load().sites, CODE_7_2)
    assert {f: (s.offset, s.file_offset) for f, s in found.items()} == {
        "qemu_coroutine_switch": (0x14, 0x981BA4),  # the call of the TLS setter: from rax, to rdi, action rdx
        "aio_co_wake": (0x7, 0x97ED37),  # the tail call of aio_co_enter, the coroutine in rsi
        "blk_aio_pwritev": (0xB, 0x86121B),
        "blk_aio_preadv": (0xB, 0x8611CB),
        "blk_aio_flush": (0x10, 0x861300),
        "qemu_aio_coroutine_enter": (0xB6, 0x980696),  # the call of qemu_coroutine_switch(from, to, 3)
        "qemu_coroutine_yield": (0x6A, 0x980A0A),  # its tail call of qemu_coroutine_switch(self, caller, 1)
        "aio_co_enter": (0x49, 0x97EC79),  # in the branch taken inside a coroutine
        "block_acct_done": (0x2, 0x85A272),  # its tail jump, the cookie still in rsi
    }
    assert sorted(s.index for s in found.values()) == list(range(9))  # one anchor symbol each


def test_code_that_differs_keeps_the_entry_probe():
    changed = dict(CODE_7_2)
    off, code = changed["qemu_coroutine_switch"]
    changed["qemu_coroutine_switch"] = (off, code[:5] + b"\x90" + code[6:])  # one byte before the site
    found = sites.resolve(catalogue.load().sites, changed)
    assert "qemu_coroutine_switch" not in found and "aio_co_wake" in found
    short = {"blk_aio_flush": (0x8612F0, CODE_7_2["blk_aio_flush"][1][:10])}  # code ends before the site
    assert sites.resolve(catalogue.load().sites, short) == {}


def test_arguments_are_read_from_their_registers_at_the_site():
    s = sites.resolve(catalogue.load().sites, CODE_7_2)
    assert sites.at_site("arg0", s["qemu_coroutine_switch"], "x") == 'reg("ax")'
    assert sites.at_site("*(uint64*)(arg2+32)", s["blk_aio_pwritev"], "x") == '*(uint64*)(reg("dx")+32)'
    assert sites.at_site("arg0", s["aio_co_wake"], "x") == 'reg("si")'
    assert sites.at_site("$arg1 + @arg1[0] + my_arg1", s["aio_co_wake"], "x") == "$arg1 + @arg1[0] + my_arg1"
    with pytest.raises(CatalogueError, match="sargN is not known"):
        sites.at_site("sarg0", s["aio_co_wake"], "probes.txt:9")
    with pytest.raises(CatalogueError, match="arg1 is not known at the site of aio_co_wake"):
        sites.at_site("arg1", s["aio_co_wake"], "probes.txt:9")


def test_the_program_probes_the_anchor_and_says_where_the_site_is():
    cat = catalogue.load()
    inp = program.ProgramInput(
        pid=4242, probe_path="/usr/bin/qemu-system-x86_64", version=(7, 2), version_text="7.2.22",
        symbols=frozenset(p.target for p in cat.probes if p.source in ("uprobe", "site")), usdt=False,
        watched_tids=(4242, 4244),
        entry_kinds={"qemu_coroutine_switch": "stepped"}, sites=sites.resolve(cat.sites, CODE_7_2),
        offsets=offsets_for((7, 2)),
    )
    prog = program.generate(cat, inp)
    golden = GOLDEN / "program-7.2-sites.bt"
    if REGEN:
        golden.write_text(prog.text)
    assert prog.text == golden.read_text(), "program-7.2-sites.bt changed; rerun with QSPAN_REGEN=1 if intended"
    # the site lines of co.switch and co.wake replace their uprobes (qemu_coroutine_switch, aio_co_wake)
    # (block_acct_done's req.acct is opt-in)
    assert {s.function for s in prog.sites} == set(CODE_7_2) - {"qemu_coroutine_switch", "aio_co_wake",
                                                                "block_acct_done"}
    assert "qemu_coroutine_switch" not in prog.text.replace("qemu_coroutine_switch(", "")
    assert "uprobe:/run/qspan/site-anchor-v1.elf:qspan_site_" in prog.text
    assert prog.probe_kinds["co.switch"] == ["hit.uprobe-emulated"] * 2  # what the overhead estimate charges


def test_an_event_keeps_its_uprobes_unless_every_site_line_is_placed():
    cat = catalogue.load()
    code = dict(CODE_7_2)
    off, yield_code = code["qemu_coroutine_yield"]
    code["qemu_coroutine_yield"] = (off, yield_code[:4] + b"\x90" + yield_code[5:])  # a build whose code differs
    inp = program.ProgramInput(
        pid=4242, probe_path="/usr/bin/qemu-system-x86_64", version=(7, 2), version_text="7.2.22",
        symbols=frozenset(p.target for p in cat.probes if p.source in ("uprobe", "site")), usdt=False,
        watched_tids=(4242,), sites=sites.resolve(cat.sites, code),
    )
    prog = program.generate(cat, inp)
    switch = {p.target for p in prog.probes if p.event == "co.switch"}
    assert switch == {"qemu_coroutine_switch"}  # the enter site alone would miss yields: neither is used
    assert any("no site in use for qemu_coroutine_yield" in s for s in prog.skipped)
    assert {p.target for p in prog.probes if p.event == "co.wake"} == {"aio_co_enter"}  # its own site matched
    off_sites = program.generate(cat, program.ProgramInput(**{**inp.__dict__, "sites": {}}))
    assert {p.target for p in off_sites.probes if p.event in ("co.switch", "co.wake")} == {
        "qemu_coroutine_switch", "aio_co_wake"}  # --probe-sites off: entries only, as before


@pytest.mark.parametrize("line,message", [
    ("f 4883ec18.4889f8 ax", "is not one the kernel emulates"),  # the site is a mov
    ("f 4883ec18.e8zz ax", "bad instruction"),
    ("f 4883ec18.???????? ax", "bad instruction"),  # an unknown opcode: its length is unknown
    ("f 4883ec18.e8??00???? ax", "bad instruction"),  # ?? only in an instruction's last bytes
    ("f 4883ec18.e8???????? ax,bogus", "unknown register 'bogus'"),
    ("f 4883ec18", "expected FUNCTION CODE REGS"),
])
def test_sites_file_errors_name_the_line(tmp_path, line, message):
    path = tmp_path / "sites.txt"
    path.write_text("# a comment\n" + line + "\n")
    with pytest.raises(CatalogueError, match=f"sites.txt:2: .*{message}" if "expected" not in message else message):
        site_catalogue.load(path)


def test_the_anchor_is_an_elf_file_whose_symbols_sit_at_their_offsets():
    elf = ELFFile(io.BytesIO(site_transport.anchor_elf()))
    assert elf["e_type"] == "ET_DYN" and elf["e_machine"] == "EM_X86_64"
    syms = {s.name: s["st_value"] for s in elf.get_section_by_name(".symtab").iter_symbols() if s.name}
    assert len(syms) == sites.ANCHOR_SYMBOLS
    for i in range(sites.ANCHOR_SYMBOLS):
        assert syms[sites.ANCHOR_SYMBOL.format(i)] == site_transport.anchor_offset(i)
    (load,) = [seg for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD"]
    assert load["p_vaddr"] == load["p_offset"] == 0  # an address is its file offset


def test_the_catalogue_has_no_more_sites_than_the_anchor_has_symbols():
    assert len(catalogue.load().sites) <= sites.ANCHOR_SYMBOLS


def test_a_site_whose_program_bpftrace_did_not_attach_is_a_clear_error(tmp_path):
    """No perf event of the tracer probes the anchor (here: this process has none): nothing is
    attached inside QEMU, and the error names the site."""
    from qspan.errors import TracerError

    anchor = tmp_path / "anchor.elf"
    anchor.write_bytes(site_transport.anchor_elf())
    site = sites.resolve(catalogue.load().sites, CODE_7_2)["qemu_coroutine_switch"]
    with pytest.raises(TracerError, match=r"attached nothing at .*anchor.elf:qspan_site_\d+ \(the program for qemu_coroutine_switch\)"):
        site_transport.attach((site,), os.getpid(), str(anchor), os.getpid())
    assert site_transport.attach((), os.getpid(), str(anchor), os.getpid()) == []  # no sites: nothing to do
