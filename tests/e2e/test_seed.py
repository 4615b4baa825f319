"""The seed scenario with known ground truth: driver O over B on real QEMU 7.2.

With the replica delay R and B's CPU time per write C set as knobs of driver
O, the spans must report a replication phase of at least R (and close to it),
attribute to B's coroutines a share of the ack waits that follows C, and show
it drop when C = 0 or with the mitigation on. The guest verifies its data
through O, and B and the replica hold what it wrote.

The replication phase is checked against driver O's own measure of the same
write (its timing file: from handing the copy to the replica thread until that
thread calls back), not against R: how late the replica thread wakes is the
machine's (on this 2-core VM, beside TCG's vCPU thread, the iothread spinning
for C and bpftrace, its median was 60-210 us over R in benchmarks and 360 us in
one CI run), while qspan must report what happened. The phase starts at O's
yield, a few us after O timed the submission, and ends at the callback's probe,
just after O timed it: measured here over 4 runs of the 3 cases, the median
gap between the two was 3.7-5.5 us (p90 5.7-12.4 us); REPLICA_ERROR_US bounds
the median at 4.5 times the largest. The phase can never be below R: the driver starts the delay
after the probe that opens the phase fires.
"""

from __future__ import annotations

import json
import struct

import pytest

from helpers import guest_requests, require_tracing, run_qspan
from qspanlab.seed import run_case

pytestmark = pytest.mark.e2e

R_US = 200
C_US = 600
REPLICA_ERROR_US = 25
MAGIC = struct.pack("<Q", 0x7173706E6C6F6164)  # qspan-load's block pattern starts with it


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    require_tracing()
    work = tmp_path_factory.mktemp("seed")
    return {
        (scenario, c): run_case(scenario, R_US, c, count=300, rate=300, qd=4, workdir=work)
        for scenario, c in [("seed", 0), ("seed", C_US), ("seed-mitigated", C_US)]
    }


def test_every_guest_write_is_a_span_across_o_the_replica_callback_and_b(runs):
    for (scenario, c), run in runs.items():
        s = run.summary
        assert s["verify"] == "ok" and run.guest.rc == 0
        assert s["write_spans"] == s["guest_requests"] == 300
        guest = guest_requests(run.guest.output)
        longer = []
        for span in (x for x in run.spans["spans"] if x["op"] == "write"):
            names = [p["name"] for p in span["phases"]]
            # (the profile leaves drv.ack out: the last phase runs from the resume to the ack)
            assert names[-5:] == ["O", "replication", "callback", "handoff", "complete"], names
            assert names[:-5] in (["submit"], ["kick", "submit"]), names
            assert sum(p["dur_ns"] for p in span["phases"]) == span["dur_ns"]
            if span["dur_ns"] > guest[("write", span["offset"])]:
                longer.append((span["id"], span["dur_ns"], guest[("write", span["offset"])],
                               [(p["name"], p["dur_ns"]) for p in span["phases"]]))
            (h,) = span["handoffs"]
            assert h["cross_thread"] and h["signal"] == "co.schedule"
            (b,) = span["children"]  # B's write: linked, not awaited
            assert b["role"] == "B" and b["offset"] == span["offset"] and b["end_ns"] > b["start_ns"]
            assert [n["node"] for n in span["nodes"]] == ["o", "b"]
        # A host span should fit inside the latency the guest measured for the same request.
        # One CI run here saw one seed span (of 900) 0.8 ms longer than its guest latency, not
        # reproduced since: allow at most 1 %, and print them (kick attribution is suspected).
        print(f"{scenario} C={c}: host spans longer than the guest's latency: {longer}")
        assert len(longer) <= 3, (scenario, c, longer)


def test_replication_phase_is_the_replica_delay(runs):
    for run in runs.values():
        s = run.summary
        print(f"{s['scenario']} C={s['b_cpu_us']}: replication p50 {s['replication_p50_us']:.1f} us, O's own"
              f" {s['replica_true_p50_us']:.1f} us; the phase against O's own, p50 {s['replication_error_p50_us']:.1f} us,"
              f" p90 {s['replication_error_p90_us']:.1f} us")
        assert s["replication_min_us"] >= R_US  # never shorter than the device's latency
        assert s["replica_timed"] == s["write_spans"], s  # O timed every write qspan saw
        assert s["replication_error_p50_us"] <= REPLICA_ERROR_US, s


def test_ack_waits_attributed_to_b_track_b_cpu_time(runs):
    idle = runs[("seed", 0)].summary["spawned_mean_us"]
    busy = runs[("seed", C_US)].summary["spawned_mean_us"]
    mitigated = runs[("seed-mitigated", C_US)].summary["spawned_mean_us"]
    # C = 0: B's coroutines only run the block layer's few microseconds
    assert idle < 0.1 * C_US, (idle, busy, mitigated)
    # C = 600 us: each ack waits behind B's work; the replica (R = 200 us) hides part of it
    assert busy >= 0.4 * C_US, (idle, busy, mitigated)
    # mitigation: B's work runs after acks, in 25 us slices: the ack waits lose most of it
    assert mitigated <= 0.25 * busy, (idle, busy, mitigated)


def test_b_and_the_replica_hold_what_the_guest_wrote(runs):
    for run in runs.values():
        for (op, offset), _lat in guest_requests(run.guest.output).items():
            block = run.disk[offset: offset + 4096]
            assert block[:8] == MAGIC, f"B lacks the guest's data at {offset}"
            assert run.replica[offset: offset + 4096] == block, f"replica differs from B at {offset}"


def test_compare_says_the_mitigation_took_b_off_the_ack_path(runs, tmp_path, output_dir):
    """qspan compare, seed (A) against seed-mitigated (B): the handoff is what moved, and its
    spawned part moved by exactly what the two runs' own summaries say B's share fell by."""
    files = []
    for key in (("seed", C_US), ("seed-mitigated", C_US)):
        f = tmp_path / f"{key[0]}.json"
        f.write_text(json.dumps(runs[key].spans))
        files.append(f)
    out = output_dir / "compare-seed-mitigated.json"
    r = run_qspan("compare", *map(str, files), "--out", str(out))
    assert r.returncode == 0, r.stderr
    (output_dir / "compare-seed-mitigated.txt").write_text(r.stdout)
    w = json.loads(out.read_text())["groups"]["write"]
    assert w["a"]["requests"] == w["b"]["requests"] == 300
    busy = runs[("seed", C_US)].summary["spawned_mean_us"]
    mitigated = runs[("seed-mitigated", C_US)].summary["spawned_mean_us"]
    spawned = next(p for p in w["mean"]["parts"] if p["part"] == "handoff/spawned")
    # one handoff a write, split by what ran instead: the part is the summary's mean to rounding
    assert spawned["a_us"] == pytest.approx(busy, abs=0.01) and spawned["b_us"] == pytest.approx(mitigated, abs=0.01)
    for key in ("mean", "p50"):
        assert w[key]["delta_us"] < 0 and w[key]["explains"]["phase"] == "handoff", (key, w[key]["explains"], r.stdout)
