"""Multi-VM benchmark: what each additional traced VM costs one host's qspan, and how far it scales.

Boots --vms lab VMs (vm-1 .. vm-N) and one `qspan serve`, then for k = 1 .. N attaches a
session to one more VM and measures, with all k traced VMs:

- idle (--idle-s, no guest I/O): qspan's CPU (the server process and every bpftrace, from
  /proc) in cores, and its memory (PSS of the server and of each bpftrace: shared pages split);
- loaded (--load-s): every traced guest writes at --rate requests/s (qd 2) at once; qspan's
  CPU per request (us; in all, and above the idle cost), the requests/s the guests reached,
  spans the server made of them, lost events.

Then prints the cost of each additional VM (the step from k-1 to k: idle cores, MiB,
us per request) and what one host's qspan could follow: requests/s per core of qspan at the
measured cost, and the VM count a given memory budget allows. One run, one machine: a
shared 2-core VM under TCG, where the guests' own vCPUs compete with qspan for the cores;
read the steps and ratios, not the absolute numbers.

    .venv/bin/python bench/multi_vm.py [--vms 4] [--rate 200] [--load-s 20] [--idle-s 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from qspanlab import lab
from qspanlab.harness import ServerProcess, bpftraces_of
from qspan.target import process_cpu_s


def pss_mib(pid: int) -> float:
    """Proportional set size: shared pages (bpftrace's LLVM, libc) split among the processes that
    map them, so N bpftraces add up to what they really take (RSS would count LLVM N times)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def bpftraces_for(qemu_pids: set[int]) -> dict[int, int]:
    """qemu PID -> the bpftrace tracing it."""
    return {pid: found[0] for pid in qemu_pids if (found := bpftraces_of(pid))}


def qspan_cpu_s(server_pid: int, bpf: dict[int, int]) -> float:
    return process_cpu_s(server_pid) + sum(process_cpu_s(p) for p in bpf.values())


def spans_of(server: ServerProcess, sids: list[str]) -> tuple[int, int]:
    spans = lost = 0
    for sid in sids:
        st = server.get(f"/api/sessions/{sid}")[1]["status"]
        spans += st["spans"]
        lost += st["lost_events"]
    return spans, lost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vms", type=int, default=4)
    ap.add_argument("--rate", type=int, default=200, help="writes/s each traced guest asks for")
    ap.add_argument("--load-s", type=int, default=20)
    ap.add_argument("--idle-s", type=float, default=10.0)
    ap.add_argument("--out", help="also write the figures as JSON")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qspan-multivm-"))
    vms = []
    server = None
    rows = []
    try:
        for i in range(1, args.vms + 1):
            print(f"booting vm-{i}", flush=True)
            vms.append(lab.up(work / f"vm-{i}", name=f"vm-{i}"))
        server = ServerProcess().wait_ready()
        sids: list[str] = []
        for k in range(1, args.vms + 1):
            sids.append(server.attach(vms[k - 1].pid))
            traced = vms[:k]
            time.sleep(2)  # bpftrace's start-up CPU is not the idle cost
            bpf = bpftraces_for({v.pid for v in traced})
            c0, t0 = qspan_cpu_s(server.proc.pid, bpf), time.monotonic()
            time.sleep(args.idle_s)
            idle_cores = (qspan_cpu_s(server.proc.pid, bpf) - c0) / (time.monotonic() - t0)
            mem = {"server_mib": pss_mib(server.proc.pid), "bpftrace_mib": [pss_mib(p) for p in bpf.values()]}

            spans0, lost0 = spans_of(server, sids)
            c0, t0 = qspan_cpu_s(server.proc.pid, bpf), time.monotonic()
            results = {}
            threads = [threading.Thread(target=lambda v=v: results.__setitem__(v.pid, lab.load(
                v, f"--op write --qd 2 --duration {args.load_s} --rate {args.rate}", timeout_s=args.load_s + 300)))
                for v in traced]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            time.sleep(2)  # the last spans through the server
            wall = time.monotonic() - t0
            cpu = qspan_cpu_s(server.proc.pid, bpf) - c0
            spans1, lost1 = spans_of(server, sids)
            requests = sum(r.summary.get("requests", 0) for r in results.values())
            row = {"traced_vms": k, "idle_cores": round(idle_cores, 4), **mem,
                   "guest_requests": requests, "guest_req_per_s": round(requests / args.load_s, 1),
                   "spans": spans1 - spans0, "lost_events": lost1 - lost0,
                   "qspan_cores_loaded": round(cpu / wall, 3),
                   "qspan_us_per_request": round(cpu / max(1, requests) * 1e6, 1),
                   # what the requests themselves cost, above the idle cost of following k VMs
                   "marginal_us_per_request": round(max(0.0, cpu / wall - idle_cores) * wall / max(1, requests) * 1e6, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if server:
            server.stop()
        for i in range(1, args.vms + 1):
            lab.down(work / f"vm-{i}")

    print(f"\n{'VMs':>4} {'idle cores':>11} {'server MiB':>11} {'bpftrace MiB each':>18} {'req/s':>8} "
          f"{'spans':>7} {'lost':>6} {'cores':>6} {'us/req':>7} {'above idle':>10}")
    for r in rows:
        each = sum(r["bpftrace_mib"]) / max(1, len(r["bpftrace_mib"]))
        print(f"{r['traced_vms']:>4} {r['idle_cores']:>11.4f} {r['server_mib']:>11.1f} {each:>18.1f} "
              f"{r['guest_req_per_s']:>8.0f} {r['spans']:>7} {r['lost_events']:>6} {r['qspan_cores_loaded']:>6.3f} "
              f"{r['qspan_us_per_request']:>7.1f} {r['marginal_us_per_request']:>10.1f}")
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        n = last["traced_vms"] - first["traced_vms"]
        per_vm = {
            "idle_cores": round((last["idle_cores"] - first["idle_cores"]) / n, 4),
            "memory_mib": round((last["server_mib"] + sum(last["bpftrace_mib"])
                                 - first["server_mib"] - sum(first["bpftrace_mib"])) / n, 1),
        }
        us = last["marginal_us_per_request"]
        scale = {"requests_per_s_per_qspan_core": round(1e6 / us) if us else None,
                 "vms_per_gib_of_qspan_memory": round(1024 / per_vm["memory_mib"]) if per_vm["memory_mib"] > 0 else None}
        print(f"\neach additional traced VM, idle: {per_vm['idle_cores']} cores, {per_vm['memory_mib']} MiB "
              f"(PSS: server and its bpftrace); loaded: {us} us of qspan CPU a request above that, with {last['traced_vms']} VMs")
        print(f"so one core of qspan follows ~{scale['requests_per_s_per_qspan_core']} requests/s across VMs, "
              f"and 1 GiB of qspan memory ~{scale['vms_per_gib_of_qspan_memory']} traced VMs")
    else:
        per_vm = scale = None
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "per_vm": per_vm, "scale": scale,
                                              "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
