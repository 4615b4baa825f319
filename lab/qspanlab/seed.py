"""Run a seed-scenario experiment on the lab: boot with knobs, trace by PID, drive writes, summarize.

Shared by bench/seed_scenarios.py (prints the table for docs/seed-answer.md)
and tests/e2e/test_seed.py (checks the attribution against the known knobs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qspanlab import lab
from qspanlab.harness import start_traced
from qspan.errors import QspanError
from qspan.output.report import percentile


@dataclass
class SeedRun:
    summary: dict
    spans: dict  # the spans JSON document
    guest: lab.LoadResult
    disk: bytes  # B's file, read before the lab went down
    replica: bytes  # the replica file


def run_case(scenario: str, replica_us: int, b_cpu_us: int, count: int, rate: int, qd: int, workdir: Path) -> SeedRun:
    d = workdir / f"{scenario}-{replica_us}-{b_cpu_us}"
    info = lab.up(d, scenario=scenario, knobs=lab.SeedKnobs(replica_us, b_cpu_us))
    try:
        out = d / "spans.json"
        proc = start_traced("attach", "--pid", str(info.pid), "--duration", str(count / rate + 8), "--out", str(out))
        guest = lab.load(info, f"--op write --qd {qd} --count {count} --rate {rate} --verify --log")
        _, err = proc.communicate(timeout=300)
        if proc.returncode != 0:
            raise QspanError(f"qspan attach failed: {err.strip()[-500:]}")
        doc = json.loads(out.read_text())
        disk = (d / "disk.img").read_bytes()
        replica = Path(info.replica).read_bytes() if info.replica else b""
    finally:
        lab.down(d)
    return SeedRun(summarize(doc, guest, replica_us, b_cpu_us, scenario, replica_times(d)), doc, guest, disk, replica)


def replica_times(d: Path) -> dict[int, int]:
    """Driver O's own measure of each write's replica latency, offset -> ns from its submission
    to the replica thread's callback (lab/driver-o: timing=, written when QEMU quits)."""
    path = lab.o_timing_path(d)
    if not path.exists():
        raise QspanError(f"driver O wrote no timing file ({path}): did QEMU quit cleanly?")
    out = {}
    for line in path.read_text().splitlines():
        offset, submit_ns, callback_ns = map(int, line.split())
        out[offset] = callback_ns - submit_ns
    return out


def summarize(doc: dict, guest, replica_us: int, b_cpu_us: int, scenario: str, truth: dict[int, int]) -> dict:
    writes = [s for s in doc["spans"] if s["op"] == "write"]
    rep_of = {s["offset"]: next(p["dur_ns"] for p in s["phases"] if p["name"] == "replication") for s in writes}
    rep = sorted(rep_of.values())
    # qspan's replication phase against what O measured for the same write: the phase runs from
    # O's yield (a few us after it timed the submission) to the callback's probe (just after)
    error = sorted(abs(rep_of[o] - truth[o]) for o in rep_of if o in truth)
    true = sorted(truth[o] for o in rep_of if o in truth)
    spawned = [sum(h["instead_ns"].get("spawned", 0) for h in s["handoffs"]) for s in writes]
    handoff = [sum(p["dur_ns"] for p in s["phases"] if p["name"] == "handoff") for s in writes]
    durs = sorted(s["dur_ns"] for s in writes)
    n = len(writes) or 1
    return {
        "scenario": scenario, "replica_us": replica_us, "b_cpu_us": b_cpu_us,
        "guest_requests": guest.summary["requests"], "write_spans": len(writes), "verify": guest.summary["verify"],
        "guest_p50_us": guest.summary["p50_us"], "span_p50_us": percentile(durs, 50) / 1000,
        "replication_min_us": rep[0] / 1000 if rep else 0, "replication_p50_us": percentile(rep, 50) / 1000,
        "replication_p90_us": percentile(rep, 90) / 1000,
        "replica_true_p50_us": percentile(true, 50) / 1000 if true else None, "replica_timed": len(true),
        "replication_error_p50_us": percentile(error, 50) / 1000 if error else None,
        "replication_error_p90_us": percentile(error, 90) / 1000 if error else None,
        "handoff_mean_us": sum(handoff) / n / 1000, "spawned_mean_us": sum(spawned) / n / 1000,
        "spawned_share": sum(spawned) / max(1, sum(handoff)),
    }


