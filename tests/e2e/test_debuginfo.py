"""A stripped QEMU whose debug info is installed apart, by build-id, as distributions ship it.

Real parts: the dtrace-built QEMU 7.2 with its .symtab and USDT notes stripped and its debug
info split into a file of its own (qspanlab.lab.build_qemu_stripped, objcopy), booting the lab
guest. Without that file qspan refuses the binary and `qspan doctor` says which file would make
it traceable; with it installed at /usr/lib/debug/.build-id/xx/yyyy.debug (in a mount namespace
of qspan's own, tests/support/with_debug_info.sh: the host is left alone), qspan and bpftrace
read the function names from it and every guest write is a span.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from helpers import QSPAN, REPO, guest_requests, one_clear_error, require_tracing, run_qspan
from qspan.target import elf
from qspanlab import lab
from qspanlab.harness import start_traced

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    require_tracing()
    d = tmp_path_factory.mktemp("lab")
    info = lab.up(d, qemu="7.2-stripped")
    yield info
    lab.down(d)


def _debug_file() -> Path:
    return lab.build_qemu_stripped().with_suffix(".debug")


def _in_namespace(scratch: Path) -> tuple[str, ...]:
    return ("unshare", "--mount", "--propagation", "private",
            "bash", str(REPO / "tests/support/with_debug_info.sh"), str(_debug_file()), str(scratch))


def test_without_its_debug_info_qspan_says_which_file_would_do(vm, tmp_path):
    tables = elf.binary_tables(f"/proc/{vm.pid}/exe")
    assert tables.symtab_functions is None and tables.qemu_usdt == 0 and tables.build_id
    assert "qemu_coroutine_switch" not in tables.functions and tables.debug_file is None
    wanted = elf.debug_path(tables.build_id)
    r = run_qspan("attach", "--pid", str(vm.pid), "--duration", "2", "--out", str(tmp_path / "spans.json"))
    one_clear_error(r, "no qemu_coroutine_switch", wanted)
    r = run_qspan("doctor", "--pid", str(vm.pid))
    assert r.returncode == 1, r.stdout
    assert f"no separate debug info at {wanted}" in r.stdout
    assert f"separate debug info (Debian: its -dbgsym package; Fedora: -debuginfo) installed at {wanted}" in r.stdout


def test_with_its_debug_info_installed_every_guest_write_is_a_span(vm, tmp_path, output_dir):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = output_dir / "debuginfo-spans.json"
    proc = start_traced("attach", "--pid", str(vm.pid), "--duration", "15", "--out", str(out),
                        wrapper=_in_namespace(scratch))
    res = lab.load(vm, "--op write --qd 4 --count 500 --verify --log")
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert res.rc == 0 and res.summary["verify"] == "ok" and res.summary["errors"] == 0, res.output[-500:]
    guest = guest_requests(res.output)
    doc = json.loads(out.read_text())
    assert doc["trace"]["end"]["lost_events"] == 0
    writes = [s for s in doc["spans"] if s["op"] == "write"]
    assert len(writes) == len(guest) == 500 and {("write", s["offset"]) for s in writes} == set(guest)
    assert all(s["complete"] and [n["node"] for n in s["nodes"]] == ["disk0"] for s in writes)
    assert all(len(s["handoffs"]) == 1 and s["handoffs"][0]["instead_ns"]["unwatched"] == 0 for s in writes)
    assert lab.status(Path(vm.dir)) is not None  # QEMU and its guest unharmed
    # the host's /usr/lib never saw the file
    assert not Path(elf.debug_path(elf.binary_tables(f"/proc/{vm.pid}/exe").build_id)).exists()


def test_doctor_reads_the_debug_info_where_installed(vm, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    r = subprocess.run([*_in_namespace(scratch), *QSPAN, "doctor", "--pid", str(vm.pid)],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "separate debug info read from /usr/lib/debug/.build-id/" in r.stdout
    assert "verdict: traceable" in r.stdout
