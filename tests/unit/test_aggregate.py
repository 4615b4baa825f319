"""Aggregate-only mode, pure parts: its catalogue, its program, bpftrace's histogram text."""

import gzip

from helpers import DATA
from qspan.output import histogram
from qspan.program import aggregate
from qspan import catalogue
from qspan import program


def _input():
    cat = catalogue.load()
    symbols = frozenset(p.target for p in cat.probes if p.source == "uprobe")
    return program.ProgramInput(pid=4242, probe_path="/usr/bin/qemu-system-x86_64", version=(7, 2), version_text="7.2.22",
                                symbols=symbols, usdt=False, watched_tids=(4242,))


def test_program_has_two_hits_per_request_and_no_per_event_output():
    text = aggregate.generate(_input())
    probes = [ln for ln in text.splitlines() if ln.startswith("uprobe:")]
    assert [p.split(":")[2].split()[0] for p in probes] == ["bdrv_co_preadv_part", "bdrv_co_pwritev_part", "virtqueue_push"]
    assert all("printf" not in p and "uretprobe" not in p for p in probes)
    assert "lhist(" in text and "delete(@qspan_t0[$k])" in text


def test_histograms_from_real_bpftrace_output():
    # bpftrace 0.17 printing lhist() maps (tests/support/data: captured, not written by hand)
    reader = histogram.HistogramReader()
    done = None
    with gzip.open(DATA / "aggregate-lhist.txt.gz", "rt") as f:
        for line in f:
            got = reader.line(line.rstrip("\n"))
            done = got if got is not None else done
    assert done == {"read": {50: 1}, "write": {120: 2, **{lo: 0 for lo in range(130, 10000, 10) if lo != 480}, 480: 1, 10000: 1}}
    s = histogram.summary(done["write"])
    assert s["requests"] == 4 and s["p50_us"] == 125 and s["p99_us"] == 10000  # the >= 10 ms bucket


def test_merge_and_empty_summary():
    total = {}
    histogram.merge(total, {"write": {120: 2}})
    histogram.merge(total, {"write": {120: 1, 130: 1}, "read": {50: 1}})
    assert total == {"write": {120: 3, 130: 1}, "read": {50: 1}}
    assert histogram.summary({}) == {"requests": 0}
