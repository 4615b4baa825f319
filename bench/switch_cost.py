"""Switch-cost benchmark: what observing QEMU's coroutine switches costs the iothread, by probe site.

qspan's co.switch event comes from a uprobe on `qemu_coroutine_switch`, whose
first instruction (`sub $0x18,%rsp`) the kernel must single-step: every guest
write hits it four times (enter, yield, enter, terminate) on the iothread.
This benchmark boots the stock lab and, in alternating rounds of the same
guest workload, measures the iothread's on-CPU time per write (from
/proc/PID/task/TID/schedstat) with:

- off: nothing attached;
- stepped: bpftrace on `qemu_coroutine_switch` (4 hits per write);
- emulated: bpftrace on `qemu_aio_coroutine_enter` and `qemu_coroutine_yield`,
  which start with a push the kernel emulates (3 hits per write; terminate
  is not seen there);
- event: a tracefs uprobe event on the first `call` inside
  `qemu_coroutine_switch` (emulated, with from/to/action still in %rax/%rdi/%edx),
  recorded by `perf record` into a ring buffer (4 hits per write, every switch
  with its action). Needs `perf` (Debian's linux-perf); skipped with a message
  when missing or when the function does not start with the expected prologue.

Every probe's action is only a count (bpftrace) or a sample (perf): the
figures are the probe sites' own cost, not qspan's. The tracefs event is
removed when the benchmark ends, however it ends.

    .venv/bin/python bench/switch_cost.py [--rounds 3] [--count 2000] [--rate 1000] [--qemu 7.2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from qspan import target
from qspanlab import lab

UPROBE_EVENTS = Path("/sys/kernel/tracing/uprobe_events")
EVENT = "qspan_bench/co_switch"
# The prologue both Debian 7.2 and bookworm-backports' 10.0 compile qemu_coroutine_switch to:
# from (%rdi) saved in %rax, to (%rsi) moved to %rdi for set_current(to), action (%edx) spilled;
# then `call set_current`, an instruction the kernel emulates.
PROLOGUE = ["sub $0x18,%rsp", "mov %rdi,%rax", "mov %rsi,%rdi", "mov %rsi,(%rsp)", "xor %esi,%esi", "mov %edx,0xc(%rsp)"]


def iothread_tid(pid: int) -> int:
    for task in Path(f"/proc/{pid}/task").iterdir():
        if (task / "comm").read_text().strip().startswith("IO iothread"):
            return int(task.name)
    raise SystemExit(f"QEMU PID {pid} has no iothread")


def on_cpu_ns(pid: int, tid: int) -> int:
    return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])


def switch_call_offset(binary: str) -> int | None:
    """File offset of the emulated `call` after qemu_coroutine_switch's known prologue, or None."""
    out = subprocess.run(["nm", "-D", binary], capture_output=True, text=True).stdout
    m = re.search(r"^([0-9a-f]+) T qemu_coroutine_switch$", out, re.M)
    if not m:
        return None
    start = int(m.group(1), 16)
    dis = subprocess.run(["objdump", "-d", f"--start-address={start:#x}", f"--stop-address={start + 40:#x}", binary],
                         capture_output=True, text=True).stdout
    insns = [(int(a, 16), " ".join(i.split())) for a, i in re.findall(r"^\s+([0-9a-f]+):\s+(?:[0-9a-f]{2} )+\s+(.*)$", dis, re.M)]
    if [i for _, i in insns[:len(PROLOGUE)]] != PROLOGUE or not insns[len(PROLOGUE)][1].startswith("call"):
        return None
    vaddr = insns[len(PROLOGUE)][0]
    for line in subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True).stdout.splitlines():
        f = line.split()
        if f[:1] == ["LOAD"] and "E" in f[6:-1]:
            offset, seg_vaddr = int(f[1], 16), int(f[2], 16)
            return vaddr - seg_vaddr + offset
    return None


def tracefs_write(line: str) -> None:
    """Add or remove a uprobe event (one write, no seek: Python's append mode seeks, tracefs refuses)."""
    fd = os.open(UPROBE_EVENTS, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def bpftrace_counting(pid: int, binary: str, functions: list[str]) -> subprocess.Popen:
    prog = "BEGIN { printf(\"attached\\n\"); }\n" + "".join(
        f"uprobe:{binary}:{fn} /pid == {pid}/ {{ @hits[cpu] = count(); }}\n" for fn in functions)
    path = Path(tempfile.mkdtemp(prefix="qspan-bench-")) / "count.bt"
    path.write_text(prog)
    proc = subprocess.Popen(["bpftrace", "-p", str(pid), str(path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # "Attaching N probes...", then our own line
        if line.strip() == "attached":
            return proc
    proc.wait()
    raise SystemExit(f"bpftrace did not attach (exit status {proc.returncode})")


def perf_recording(pid: int, out: Path) -> subprocess.Popen:
    proc = subprocess.Popen(["perf", "record", "-q", "-e", EVENT.replace("/", ":"), "-p", str(pid), "-m", "1024",
                             "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(3)  # perf prints nothing when it is ready: give it time to open the event on every thread
    return proc


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    lab.sigterm_takes_lab_down()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", type=int, default=2000, help="guest 4 KiB writes per round and mode (qd 4)")
    ap.add_argument("--rate", type=int, default=1000, help="guest writes per second")
    ap.add_argument("--qemu", default="7.2", choices=lab.QEMU_BUILDS)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="qspan-switch-") as tmp:
        d = Path(tmp) / "lab"
        info = lab.up(d, qemu=args.qemu)
        event_made = False
        try:
            binary = target.inspect(info.pid).probe_path
            tid = iothread_tid(info.pid)
            modes = {"off": None, "stepped": (["qemu_coroutine_switch"], 4),
                     "emulated": (["qemu_aio_coroutine_enter", "qemu_coroutine_yield"], 3)}
            offset = switch_call_offset(binary)
            if not shutil.which("perf"):
                print("event: skipped, perf is not installed (apt-get install linux-perf)")
            elif offset is None:
                print("event: skipped, qemu_coroutine_switch does not start with the known prologue")
            else:
                tracefs_write(f"p:{EVENT} {os.path.realpath(binary)}:{offset:#x} from=%ax:u64 to=%di:u64 action=%dx:u32")
                event_made = True
                modes["event"] = ("perf", 4)
            load = f"--op write --qd 4 --count {args.count} --rate {args.rate}"
            rows: dict[str, list[float]] = {m: [] for m in modes}
            for r in range(1, args.rounds + 1):
                for mode, how in modes.items():
                    proc = None
                    if how and how[0] == "perf":
                        proc = perf_recording(info.pid, Path(tmp) / "perf.data")
                    elif how:
                        proc = bpftrace_counting(info.pid, binary, how[0])
                    t0 = on_cpu_ns(info.pid, tid)
                    n = lab.load(info, load).summary["requests"]
                    us = (on_cpu_ns(info.pid, tid) - t0) / max(1, n) / 1000
                    if proc:
                        stop(proc)
                    rows[mode].append(us)
                    print(f"round {r} {mode}: iothread {us:.1f} us per write", flush=True)
        finally:
            if event_made:
                tracefs_write(f"-:{EVENT}")
            lab.down(d)
    off = statistics.median(rows["off"])
    print(f"\nstock lab, QEMU {args.qemu}, {args.count} writes at {args.rate}/s per round and mode, {args.rounds} rounds")
    print(f"{'mode':<10}{'iothread us/write (median)':>28}{'added':>9}{'hits/write':>12}{'us per hit':>12}")
    for mode, how in modes.items():
        med = statistics.median(rows[mode])
        hits = how[1] if how else 0
        per_hit = f"{(med - off) / hits:.1f}" if hits else "-"
        print(f"{mode:<10}{med:>28.1f}{med - off:>+9.1f}{hits:>12}{per_hit:>12}")


if __name__ == "__main__":
    main()
