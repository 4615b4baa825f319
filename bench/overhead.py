"""Overhead benchmark: guest-visible write latency with qspan attached vs not, alternating.

Boots the lab (stock or seed scenario), then for --rounds rounds runs the same
guest workload twice — once with nothing attached, once with `qspan record`
attached — and prints the guest's own p50/p99 latency and IOPS for each, the
added latency per request, and how many probe events the tracer saw per
request. One run, one machine: compare the ratios, not the absolute numbers
(TCG and a shared 2-core VM).

    .venv/bin/python bench/overhead.py [--scenario stock] [--rounds 3] [--count 2000] [--qd 4] [--rate 0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backend"))

from qspan import lab, recording  # noqa: E402
from qspan.clirun import start_traced  # noqa: E402


def main() -> None:
    lab.sigterm_takes_lab_down()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="stock", choices=lab.SCENARIOS)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--qd", type=int, default=4)
    ap.add_argument("--rate", type=int, default=0, help="guest requests/s (0: as fast as it can)")
    args = ap.parse_args()
    load = f"--op write --qd {args.qd} --count {args.count}" + (f" --rate {args.rate}" if args.rate else "")
    rows = []
    with tempfile.TemporaryDirectory(prefix="qspan-bench-") as tmp:
        d = Path(tmp) / "lab"
        info = lab.up(d, scenario=args.scenario)
        try:
            lab.load(info, load)  # warm-up: page cache, thread pool workers
            for r in range(args.rounds):
                base = lab.load(info, load).summary
                rec = Path(tmp) / f"r{r}.qspan"
                proc = start_traced("record", "--pid", str(info.pid), "--duration", "600", "--out", str(rec))
                traced = lab.load(info, load).summary
                proc.send_signal(2)
                proc.communicate(timeout=120)
                events = recording.read(rec)
                per_req = len(events.events) / max(1, traced["requests"])
                rows.append((base, traced, per_req, sum(x.count for x in events.lost)))
                print(f"round {r + 1}: off p50 {base['p50_us']:.0f} us, on p50 {traced['p50_us']:.0f} us", file=sys.stderr)
        finally:
            lab.down(d)
    print(f"scenario {args.scenario}, guest: {load}")
    print(f"{'round':<6}{'off p50':>9}{'on p50':>9}{'off p99':>9}{'on p99':>9}{'off IOPS':>10}{'on IOPS':>9}{'events/req':>12}{'lost':>6}")
    for i, (b, t, e, lost) in enumerate(rows, 1):
        print(f"{i:<6}{b['p50_us']:>9.0f}{t['p50_us']:>9.0f}{b['p99_us']:>9.0f}{t['p99_us']:>9.0f}"
              f"{b['iops']:>10.0f}{t['iops']:>9.0f}{e:>12.1f}{lost:>6}")
    added = statistics.median(t["p50_us"] - b["p50_us"] for b, t, _, _ in rows)
    ratio = statistics.median(t["p50_us"] / b["p50_us"] for b, t, _, _ in rows)
    iops = statistics.median(t["iops"] / b["iops"] for b, t, _, _ in rows)
    print(f"median added guest p50: {added:.0f} us per request ({ratio:.2f}x); IOPS on/off: {iops:.2f}")


if __name__ == "__main__":
    main()
