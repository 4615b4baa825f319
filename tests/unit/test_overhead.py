"""The tracer's self-estimate (pure): instruction kinds, costs file, per-request estimate."""

import subprocess

import pytest

from helpers import REPO
from qspan.output import overhead
from qspan.program import hitkind
from qspan.target import elf
from qspan.catalogue import costs
from qspan.errors import CatalogueError


@pytest.mark.parametrize("code,kind", [
    (b"\x41\x57\x41\x56", "emulated"),  # push %r15 (bdrv_co_pwritev_part)
    (b"\x53\x48\x89\xfb", "emulated"),  # push %rbx
    (b"\xe8\x00\x00\x00", "emulated"),  # call
    (b"\x0f\x84\x00\x00", "emulated"),  # je rel32
    (b"\x48\x83\xec\x18", "stepped"),  # sub $0x18,%rsp (qemu_coroutine_switch)
    (b"\x48\x89\xfe\x48", "stepped"),  # mov %rdi,%rsi (aio_co_wake)
    (b"\x80\x7f\x08\x00", "stepped"),  # cmpb (event_notifier_set)
    (b"", "stepped"),
], ids=lambda v: v.hex() or "empty" if isinstance(v, bytes) else v)
def test_first_instruction_kind(code, kind):
    assert hitkind.first_instruction_kind(code) == kind


def test_costs_file_parses_and_rejects_garbage(tmp_path):
    per_hit = costs.load()
    assert per_hit["hit.uprobe-stepped"] > per_hit["hit.uprobe-emulated"] > per_hit["hit.tracepoint"]
    bad = tmp_path / "costs.txt"
    bad.write_text("hit.usdt one\n")
    with pytest.raises(CatalogueError, match="costs.txt:1"):
        costs.load(bad)


def test_estimate_per_request():
    costs = {"hit.uprobe-stepped": 5.0, "hit.uprobe-emulated": 1.0, "hit.tracepoint": 0.5, "store.maps": 1.0}
    per_event = overhead.event_costs({"co.switch": ["hit.uprobe-stepped"], "sys.io": ["hit.tracepoint"],
                                      "req.submit": ["hit.uprobe-emulated", "hit.uprobe-stepped"]}, "maps", costs)
    assert per_event == {"co.switch": 6.0, "sys.io": 1.5, "req.submit": 6.0}  # the costliest probe of an event
    est = overhead.estimate({"co.switch": 40, "sys.io": 20, "req.submit": 10}, per_event, requests=10)
    assert est["events_per_request"] == 7.0
    assert est["est_us_per_request"] == (40 * 6 + 20 * 1.5 + 10 * 6) / 10
    assert overhead.estimate({}, per_event, 0)["est_us_per_request"] is None


def test_function_code_reads_the_binary(tmp_path):
    exe = tmp_path / "probe_target"
    subprocess.run(["gcc", "-O2", "-rdynamic", "-o", str(exe), str(REPO / "bench" / "probe_target.c")], check=True)
    code = {name: b for name, (_off, b) in elf.function_code(str(exe), {"cal_push", "cal_sub", "nonexistent"}).items()}
    assert set(code) == {"cal_push", "cal_sub"}
    assert hitkind.first_instruction_kind(code["cal_push"]) == "emulated"
    assert hitkind.first_instruction_kind(code["cal_sub"]) == "stepped"


def test_measured_cost_is_per_request_and_in_cores():
    m = overhead.measured(server_cpu_s=0.3, bpftrace_cpu_s=0.1, requests=20_000, wall_s=10.0)
    assert m["us_per_request"] == 20.0 and m["cores"] == 0.04
    assert m["server_cpu_s"] == 0.3 and m["bpftrace_cpu_s"] == 0.1
    none = overhead.measured(0.1, 0.0, requests=0, wall_s=0.0)
    assert none["us_per_request"] is None and none["cores"] is None  # nothing to divide by yet
