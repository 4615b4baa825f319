"""Guest stall watch: does the lab guest keep writing at full rate, with or without qspan?

Boots the lab, optionally attaches qspan (the live server through its API, or
`qspan record`), starts the guest's full-rate write loop and watches the
guest's progress from QEMU's own counter (QMP `query-blockstats`), not from
qspan. When no write completes for --stall-s seconds it writes a dump to
--out: every QEMU thread's state, wait channel and kernel stack, gdb's
backtrace of every thread, the vCPU's local APIC and registers, the
virtqueue's indices (QMP `x-query-virtio-queue-status`), and the guest's own
view (its `diag` command: requests in flight in its block layer, interrupt
counts, each task's state and wait channel). With qspan attached it then
detaches and says whether the guest resumed. Prints one line per run and a
total:

    .venv/bin/python bench/guest_stall.py --runs 3 --duration 240 --mode none
    .venv/bin/python bench/guest_stall.py --runs 3 --duration 240 --mode live
    .venv/bin/python bench/guest_stall.py --runs 3 --duration 120 --max-cpus 1   # the lab before the fix

What it found (docs/performance.md, "The guest stall"): QEMU 7.2's TCG drops a
single-vCPU guest's memory barriers, and virtio's notification handshake with
the iothread then loses an interrupt; the lab now boots with maxcpus=2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qspanlab import lab
from qspanlab.harness import ServerProcess
from qspan.target.qmp import QMPClient


def writes(info: lab.LabInfo) -> int:
    with QMPClient(info.qmp) as q:
        return sum(dev["stats"]["wr_operations"] for dev in q.execute("query-blockstats"))


def dump(info: lab.LabInfo, path: Path, status: dict | None) -> None:
    """Everything that says where a stalled guest and its QEMU are (see the module's docstring)."""
    with open(path, "w") as f:
        for task in sorted(os.listdir(f"/proc/{info.pid}/task"), key=int):
            base = Path(f"/proc/{info.pid}/task/{task}")
            try:
                comm = (base / "comm").read_text().strip()
                state = (base / "stat").read_text().rsplit(") ", 1)[1].split()[0]
                f.write(f"== thread {task} {comm} state={state} wchan={(base / 'wchan').read_text()}\n"
                        f"{(base / 'stack').read_text()}\n")
            except OSError:
                continue  # a thread that ended meanwhile
        gdb = subprocess.run(["gdb", "-p", str(info.pid), "-batch", "-ex", "thread apply all bt 12"],
                             capture_output=True, text=True, timeout=120)
        f.write(gdb.stdout)
        with QMPClient(info.qmp) as q:
            for command in ("info lapic", "info registers"):
                f.write(f"--- {command}\n{q.execute('human-monitor-command', **{'command-line': command})}\n")
            for dev in q.execute("x-query-virtio"):
                f.write(f"--- virtqueue 0 of {dev['path']}\n"
                        f"{q.execute('x-query-virtio-queue-status', path=dev['path'], queue=0)}\n")
        cmd_id, start = lab.send_command(info, "diag")
        f.write("--- the guest's diag\n" + lab.wait_command(info, cmd_id, start, 30)[1])
        if status is not None:
            f.write("--- qspan's session\n" + json.dumps(status, indent=1) + "\n")


def run_once(n: int, args, out: Path) -> dict:
    d = Path(tempfile.mkdtemp(prefix="qspan-bench-stall-"))
    info = lab.up(d / "lab", max_cpus=args.max_cpus)
    server = recorder = None
    sid = None
    result = {"run": n, "mode": args.mode, "stalled_at_s": None, "resumed_after_detach": None}
    try:
        if args.mode == "live":
            server = ServerProcess()
            server.wait_ready()
            sid = server.attach(info.pid)
        elif args.mode == "record":
            recorder = subprocess.Popen(
                [sys.executable, "-m", "qspan.cli", "record", "--pid", str(info.pid),
                 "--duration", str(args.duration + 60), "--out", str(d / "trace.qspan")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(10)  # attached by then (bpftrace takes 3-5 s here)
        lab.send_command(info, "loop --op write --qd 4 --duration 10")
        t0 = last_change = time.monotonic()
        last = writes(info)
        while time.monotonic() - t0 < args.duration:
            time.sleep(1)
            now = writes(info)
            if now != last:
                last, last_change = now, time.monotonic()
            elif time.monotonic() - last_change > args.stall_s:
                result["stalled_at_s"] = round(last_change - t0, 1)
                path = out / f"stall-run{n}-{args.mode}.txt"
                status = server.get(f"/api/sessions/{sid}")[1]["status"] if server else None
                dump(info, path, status)
                result["dump"] = str(path)
                if server:
                    server.request("DELETE", f"/api/sessions/{sid}")
                    time.sleep(10)
                    result["resumed_after_detach"] = writes(info) != last
                break
        result["writes"] = last
        result["writes_per_s"] = round(last / (time.monotonic() - t0))
    finally:
        if server:
            server.stop()
        if recorder:
            recorder.terminate()
            recorder.wait()
        lab.down(d / "lab")
        shutil.rmtree(d, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=240, help="seconds of full-rate writes per run")
    ap.add_argument("--mode", choices=("none", "live", "record"), default="none", help="what is attached")
    ap.add_argument("--max-cpus", type=int, default=lab.MAX_CPUS,
                    help="the lab's -smp maxcpus (1: QEMU 7.2's TCG drops the guest's barriers)")
    ap.add_argument("--stall-s", type=float, default=5.0, help="no write completed for this long: a stall")
    ap.add_argument("--out", default="test-output/guest-stall", help="where dumps go")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stalls = 0
    for n in range(1, args.runs + 1):
        r = run_once(n, args, out)
        stalls += r["stalled_at_s"] is not None
        print(json.dumps(r), flush=True)
    print(f"guest stalls: {stalls} of {args.runs} runs of {args.duration} s at full rate, qspan: {args.mode}, "
          f"maxcpus={args.max_cpus}")


if __name__ == "__main__":
    main()
