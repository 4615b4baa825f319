"""Overhead benchmark: what attaching qspan costs the traced QEMU and its guest.

Boots the lab (stock or seed scenario), then for --rounds rounds runs the same
guest workload once with nothing attached and once per transport with
`qspan record` attached (alternating, so drift hits every mode alike), and
prints for each mode:

- the guest's own p50/p99 write latency and IOPS (what the guest sees);
- on-CPU time per request of QEMU's threads, by thread kind (iothread, vCPU,
  thread-pool workers, other), from /proc/PID/task/*/schedstat: probe traps and
  BPF programs run on the thread that hits the probe, so the difference to
  "off" is the tracer's cost on QEMU itself, and far less noisy than latency;
- on-CPU time per request of the tracer (bpftrace + qspan), which runs on the
  same two cores;
- events per request and lost events;
- with --baseline PYTHON: one more mode, "baseline", `qspan record` of the qspan
  that interpreter imports, with its own default transport and probes (e.g. a
  venv with an older commit installed: `git worktree add /tmp/old COMMIT &&
  python3 -m venv /tmp/old/.venv && /tmp/old/.venv/bin/pip install /tmp/old`),
  so that a change's effect is measured against the code before it on the same
  machine in the same run, not against figures taken elsewhere;
- with --self-cost: every guest request is logged, and the traced rounds' latencies
  less each span's calibrated probe cost (`qspan_ns`, tracers/costs.txt) are set
  against the untraced rounds' (p50, p99): how far qspan's self-accounting gets.

One run, one machine: compare the ratios, not the absolute numbers (TCG and a
shared 2-core VM). Under TCG the guest's latency also moves with whatever
competes with the vCPU thread for a core, the tracer included.

    .venv/bin/python bench/overhead.py [--scenario stock] [--qemu 7.2] [--rounds 3] [--count 2000] [--qd 4] [--rate 0]
                                       [--transports ring,maps,printf,aggregate] [--self-cost]
                                       [--baseline /tmp/old/.venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from qspan import program  # noqa: E402
from qspan.correlate import correlate  # noqa: E402
from qspan.output import recording  # noqa: E402
from qspanlab import lab  # noqa: E402
from qspanlab.harness import start_traced  # noqa: E402


def thread_kind(comm: str) -> str:
    if comm.startswith("IO iothread") or comm.startswith("IO "):
        return "iothread" if "iothread" in comm and "mon" not in comm else "other"
    if comm.startswith("CPU "):
        return "vcpu"
    if comm == "worker":
        return "workers"
    return "other"


def cpu_ns(pid: int, by_kind: bool = False) -> dict[str, int]:
    """On-CPU nanoseconds of every thread of `pid` (threads that exited are not counted)."""
    out: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ns = int((task / "schedstat").read_text().split()[0])
            comm = (task / "comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            continue
        key = thread_kind(comm) if by_kind else "all"
        out[key] = out.get(key, 0) + ns
    return out


def tracer_pids(pid: int) -> list[int]:
    """The qspan process and its children (bpftrace)."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return [pid, *map(int, kids)]


def measure(info, load: str, tracer_pid: int | None) -> dict:
    q0 = cpu_ns(info.pid, by_kind=True)
    pids = tracer_pids(tracer_pid) if tracer_pid else []
    t0 = sum(cpu_ns(p)["all"] for p in pids)
    res = lab.load(info, load)
    summary = res.summary
    q1 = cpu_ns(info.pid, by_kind=True)
    t1 = sum(cpu_ns(p)["all"] for p in pids)
    n = max(1, summary["requests"])
    qemu = {k: (q1.get(k, 0) - q0.get(k, 0)) / n / 1000 for k in ("iothread", "vcpu", "workers", "other")}
    return {**summary, "qemu_us": qemu, "qemu_total_us": sum(qemu.values()), "tracer_us": (t1 - t0) / n / 1000,
            "guest": {off: lat for op, off, lat in res.requests if op == "write"}}  # with load --log


def stop(proc, what: str) -> None:
    """SIGINT a tracer and wait for it. One that does not end in 120 s is killed and said so: the
    round's measurement was taken before the stop, and one hung stop must not lose the run
    (it did once, in round 13 of 16)."""
    proc.send_signal(2)
    try:
        proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        print(f"WARNING: {what}: the tracer (PID {proc.pid}) did not stop within 120 s of SIGINT; killed",
              file=sys.stderr)
        proc.kill()
        proc.communicate(timeout=30)


def corrected(guest: dict[int, int], rec_path: Path) -> tuple[list[int], float]:
    """Each traced guest write's latency less what qspan's probes cost its span (qspan_ns), and
    the mean qspan_ns (us)."""
    rec = recording.read(rec_path)
    out, own = [], []
    for s in correlate([*rec.events, *rec.lost], rec.header).spans:
        if s.op == "write" and s.offset in guest and s.qspan_ns is not None:
            out.append(guest[s.offset] - s.qspan_ns)
            own.append(s.qspan_ns)
    return sorted(out), (sum(own) / len(own) / 1000 if own else float("nan"))


def pct(values: list[int], p: float) -> float:
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] / 1000 if values else float("nan")


def main() -> None:
    lab.sigterm_takes_lab_down()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="stock", choices=lab.SCENARIOS)
    ap.add_argument("--qemu", default="7.2", choices=lab.QEMU_BUILDS,
                    help="the lab's QEMU build (7.2-dtrace: coroutine events from USDT probes)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--qd", type=int, default=4)
    ap.add_argument("--rate", type=int, default=0, help="guest requests/s (0: as fast as it can)")
    ap.add_argument("--transports", default="ring,maps,printf,aggregate",
                    help="comma-separated, from: " + ", ".join(program.TRANSPORTS) + ", aggregate (qspan aggregate); "
                         "TRANSPORT-entry: function-entry probes only (record --probe-sites off)")
    ap.add_argument("--self-cost", action="store_true",
                    help="log every guest request (every round) and compare the traced rounds' latencies less each "
                         "span's calibrated probe cost (qspan_ns) with the untraced rounds'")
    ap.add_argument("--baseline", metavar="PYTHON",
                    help="also run mode 'baseline': qspan record of the qspan this interpreter imports "
                         "(another build, e.g. an older commit's venv), with its defaults")
    args = ap.parse_args()
    transports = [t for t in args.transports.split(",") if t] + (["baseline"] if args.baseline else [])
    for t in transports:
        if t.removesuffix("-entry") not in program.TRANSPORTS and t not in ("aggregate", "baseline"):
            ap.error(f"unknown transport {t!r}")
    modes = ["off", *transports]
    load = (f"--op write --qd {args.qd} --count {args.count}" + (f" --rate {args.rate}" if args.rate else "")
            + (" --log" if args.self_cost else ""))
    rows: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="qspan-bench-") as tmp:
        d = Path(tmp) / "lab"
        info = lab.up(d, scenario=args.scenario, qemu=args.qemu)
        try:
            lab.load(info, load)  # warm-up: page cache, thread pool workers
            for r in range(args.rounds):
                for mode in modes:
                    if mode == "off":
                        row = measure(info, load, None)
                        row.update(events_per_req=0.0, lost=0)
                    elif mode == "aggregate":
                        out = Path(tmp) / f"r{r}-agg.json"
                        proc = start_traced("aggregate", "--pid", str(info.pid), "--duration", "600", "--out", str(out))
                        row = measure(info, load, proc.pid)
                        stop(proc, f"round {r + 1} {mode}")
                        # (no file when a hung aggregate had to be killed: nothing counted)
                        counted = (json.loads(out.read_text())["total"].get("write", {}).get("requests", 0)
                                   if out.exists() else 0)
                        # no events leave the kernel: "lost" here is guest writes the histograms did not count
                        row.update(events_per_req=0.0, lost=row["requests"] - counted)
                    else:
                        rec = Path(tmp) / f"r{r}-{mode}.qspan"
                        record = ("record", "--pid", str(info.pid), "--duration", "600", "--out", str(rec))
                        if mode == "baseline":  # its own defaults: it may know none of today's options
                            proc = start_traced(*record, python=args.baseline)
                        else:
                            # MODE-entry: the same transport with function-entry probes only (--probe-sites off)
                            proc = start_traced(*record, "--transport", mode.removesuffix("-entry"),
                                                "--probe-sites", "off" if mode.endswith("-entry") else "on")
                        row = measure(info, load, proc.pid)
                        stop(proc, f"round {r + 1} {mode}")
                        events = recording.read(rec)
                        row.update(events_per_req=len(events.events) / max(1, row["requests"]),
                                   lost=sum(x.count for x in events.lost))
                        if args.self_cost and mode != "baseline":
                            row["corrected"], row["qspan_us"] = corrected(row["guest"], rec)
                    rows[mode].append(row)
                    print(f"round {r + 1} {mode}: p50 {row['p50_us']:.0f} us, QEMU CPU {row['qemu_total_us']:.0f} us/req",
                          file=sys.stderr)
        finally:
            lab.down(d)

    print(f"scenario {args.scenario} on QEMU {args.qemu}, guest: {load}, {args.rounds} rounds, modes alternating: {', '.join(modes)}")
    print("per request: guest latency (us), QEMU on-CPU time by thread (us), tracer on-CPU time (us)")
    head = f"{'mode':<7}{'round':>6}{'p50':>7}{'p99':>8}{'IOPS':>7}{'iothr':>7}{'vcpu':>7}{'workr':>7}{'other':>7}{'QEMU':>7}{'tracer':>8}{'ev/req':>8}{'lost':>6}"
    print(head)
    for mode in modes:
        for i, x in enumerate(rows[mode], 1):
            q = x["qemu_us"]
            print(f"{mode:<7}{i:>6}{x['p50_us']:>7.0f}{x['p99_us']:>8.0f}{x['iops']:>7.0f}{q['iothread']:>7.1f}{q['vcpu']:>7.1f}"
                  f"{q['workers']:>7.1f}{q['other']:>7.1f}{x['qemu_total_us']:>7.1f}{x['tracer_us']:>8.1f}"
                  f"{x['events_per_req']:>8.1f}{x['lost']:>6}")
    print()
    off = rows["off"]
    med = statistics.median
    for mode in transports:
        on = rows[mode]
        pairs = list(zip(off, on))
        added = med(t["p50_us"] - b["p50_us"] for b, t in pairs)
        ratio = med(t["p50_us"] / b["p50_us"] for b, t in pairs)
        iops = med(t["iops"] / b["iops"] for b, t in pairs)
        io_added = med(t["qemu_us"]["iothread"] - b["qemu_us"]["iothread"] for b, t in pairs)
        qemu_added = med(t["qemu_total_us"] - b["qemu_total_us"] for b, t in pairs)
        tracer = med(t["tracer_us"] for t in on)
        print(f"{mode}: guest p50 +{added:.0f} us/request ({ratio:.2f}x), IOPS on/off {iops:.2f}; "
              f"QEMU CPU +{qemu_added:.1f} us/request (iothread +{io_added:.1f}); tracer {tracer:.1f} us CPU/request; "
              f"{med(t['events_per_req'] for t in on):.1f} events/request, {sum(t['lost'] for t in on)} lost")
        if args.self_cost and all(t.get("corrected") for t in on):
            # the guest's own latencies, untraced vs traced less each span's calibrated qspan_ns
            for p in (50, 99):
                raw = med(pct(sorted(t["guest"].values()), p) / pct(sorted(b["guest"].values()), p) for b, t in pairs)
                fixed = med(pct(t["corrected"], p) / pct(sorted(b["guest"].values()), p) for b, t in pairs)
                print(f"{mode}: guest p{p} on/off {raw:.2f}x; less each span's qspan_ns (self-accounting, "
                      f"mean {med(t['qspan_us'] for t in on):.1f} us) {fixed:.2f}x of the untraced guest's")


if __name__ == "__main__":
    main()
