"""The seed question on the lab: driver O over B, with and without B's CPU work and the mitigation.

For each case it boots the seed lab with replica delay R and B CPU time C,
attaches qspan by PID, drives guest writes with several in flight, and prints
what the spans say: the replication phase against R and against driver O's own
measure of the replica (replica_true_p50_us; replication_error_p50_us is the
median gap between the two per write), and how much of the ack's handoff wait
went to B's coroutines, against C.

    .venv/bin/python bench/seed_scenarios.py [--count 300] [--rate 300] [--qd 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from qspanlab import lab  # noqa: E402
from qspanlab.seed import run_case  # noqa: E402

CASES = [
    ("seed", 200, 0),
    ("seed", 200, 300),
    ("seed", 200, 600),
    ("seed-mitigated", 200, 600),
]


def main() -> None:
    lab.sigterm_takes_lab_down()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--rate", type=int, default=300)
    ap.add_argument("--qd", type=int, default=4)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="qspan-seed-") as tmp:
        for scenario, r, c in CASES:
            print(f"running {scenario} R={r} us C={c} us ...", file=sys.stderr, flush=True)
            rows.append(run_case(scenario, r, c, args.count, args.rate, args.qd, Path(tmp)).summary)
    cols = ["scenario", "replica_us", "b_cpu_us", "write_spans", "guest_requests", "verify", "guest_p50_us",
            "span_p50_us", "replication_min_us", "replication_p50_us", "replication_p90_us", "replica_true_p50_us",
            "replication_error_p50_us", "handoff_mean_us",
            "spawned_mean_us", "spawned_share"]
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in cols))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
