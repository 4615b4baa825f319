"""Soak: hours of attach/detach and crashes on a guest writing at full rate, and what they left behind.

Boots the stock lab and a `qspan serve`, then until --hours have passed: the guest runs
back-to-back segments of full-rate writes, each verifying its own data at the end
(`qspan-load --duration --verify`), while a cycle every --cycle-s seconds attaches a
session through the API, traces, and ends it one of four ways, in turn:

- detach  through the API (most cycles);
- bpftrace SIGKILLed mid-trace (the session must end, QEMU unharmed);
- the server SIGKILLed mid-trace, then started again (its bpftrace must not outlive it);
- QEMU SIGKILLed mid-trace, then the lab booted again (the session ends: qemu-exited).

A watchdog reads QEMU's own request counters (QMP query-blockstats) every second; when the
guest has a segment running and no request completes for --stall-s seconds it dumps every
QEMU thread's state, kernel stack and gdb backtrace, the vCPU's APIC, the virtqueue and the
guest's own view (bench/guest_stall.py's dump) into --out. After every cycle: no bpftrace
of qspan's left, no BPF program or uprobe left in the kernel beyond what was there before
the soak (/proc/*/fdinfo prog ids, bpffs pins, /sys/kernel/tracing/uprobe_events).

Run it alone on the host: another qspan following every QEMU would trace the soak's VM too
(what the leak check looks for). Other tracers of other processes are told apart and ignored.

Prints a line per cycle and the totals (hours, cycles, kills by kind, stalls, lost events,
leaked probes, guest segments verified), and writes them to OUT/soak.json:

    .venv/bin/python bench/soak.py --hours 2                 # the issue's soak
    .venv/bin/python bench/soak.py --hours 0.2 --cycle-s 20  # a short one
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

from guest_stall import dump  # bench/guest_stall.py: every QEMU thread, the vCPU, the virtqueue, the guest
from qspanlab import lab
from qspanlab.harness import ServerProcess, bpftrace_targets, bpftraces_of
from qspan.errors import QspanError
from qspan.target.qmp import QMPClient, QMPError

KINDS = ("detach", "kill-bpftrace", "detach", "kill-server", "detach", "kill-qemu")


def requests_done(info: lab.LabInfo) -> int:
    """Reads and writes QEMU completed (the verify pass reads): the watchdog's progress counter."""
    with QMPClient(info.qmp) as q:
        return sum(d["stats"]["wr_operations"] + d["stats"]["rd_operations"] for d in q.execute("query-blockstats"))


# A session whose bpftrace or QEMU is killed ends once it has correlated what was traced up
# to then (~4 s at full rate here: bench/soak.py's first runs); not within this: a leak.
ENDED_WITHIN_S = 30.0


def ended(server: ServerProcess, sid: str) -> tuple[dict, float]:
    """The session's status once it has ended (or after ENDED_WITHIN_S), and how long that took."""
    t = time.monotonic()
    while True:
        status = server.get(f"/api/sessions/{sid}")[1]["status"]
        took = round(time.monotonic() - t, 1)
        if status["state"] not in ("attaching", "attached") or took > ENDED_WITHIN_S:
            return status, took
        time.sleep(0.2)


def kernel_probes(ours: set[int]) -> dict:
    """BPF programs held by any process, pinned programs, and text uprobes: what a leak would add to.
    Programs of a bpftrace that traces a process the soak did not start (`ours`: every QEMU it
    booted, killed ones too) are someone else's, a test or a user tracing another VM on this
    host, and are not counted, at the baseline either."""
    others = {b for b, traced in bpftrace_targets().items() if traced not in ours}
    progs = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in others:
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fdinfo"):
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    for line in f:
                        if line.startswith("prog_id:"):
                            progs.add(int(line.split()[1]))
        except OSError:
            continue  # gone meanwhile, or a kernel thread
    pinned = sum(len(files) for _, _, files in os.walk("/sys/fs/bpf")) if os.path.isdir("/sys/fs/bpf") else 0
    try:
        uprobes = len(Path("/sys/kernel/tracing/uprobe_events").read_text().splitlines())
    except OSError:
        uprobes = 0
    return {"bpf_programs": len(progs), "pinned": pinned, "uprobe_events": uprobes}


class Guest:
    """The guest's write segments, back to back in a thread; each verifies what it wrote."""

    def __init__(self, info: lab.LabInfo, segment_s: int):
        self.info, self.segment_s = info, segment_s
        self.verified = self.failed = self.cut = 0
        self.running = False  # a segment is in the guest now (the watchdog counts only then)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.running = True
            try:
                res = lab.load(self.info, f"--op write --qd 4 --duration {self.segment_s} --verify",
                               timeout_s=self.segment_s + 600)
                if res.summary.get("verify") == "ok" and res.summary.get("errors") == 0:
                    self.verified += 1
                else:
                    self.failed += 1
                    print(f"  guest segment FAILED: {res.summary}", flush=True)
            except lab.LabError as err:
                if self._stop.is_set() or not lab.process_alive(self.info.pid):
                    self.cut += 1  # QEMU killed under it
                    break
                self.failed += 1
                print(f"  guest segment FAILED: {err}", flush=True)
            finally:
                self.running = False

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.segment_s + 660)


class Watchdog:
    """QEMU's request counter every second; a dump when the guest is writing and it stands still."""

    def __init__(self, out: Path, stall_s: float):
        self.out, self.stall_s = out, stall_s
        self.info: lab.LabInfo | None = None
        self.guest: Guest | None = None
        self.stalls: list[str] = []
        self.paused = True
        self._last = (-1, time.monotonic())
        threading.Thread(target=self._run, daemon=True).start()

    def watch(self, info: lab.LabInfo, guest: Guest) -> None:
        self.info, self.guest, self._last, self.paused = info, guest, (-1, time.monotonic()), False

    def _run(self) -> None:
        while True:
            time.sleep(1)
            info, guest = self.info, self.guest
            if self.paused or info is None or guest is None:
                continue
            try:
                n = requests_done(info)
            except (QMPError, OSError):
                continue  # QEMU being restarted
            last, since = self._last
            if n != last or not guest.running:
                self._last = (n, time.monotonic())
            elif time.monotonic() - since > self.stall_s:
                path = self.out / f"stall-{len(self.stalls) + 1}.txt"
                try:
                    dump(info, path, None)
                except (QspanError, OSError, lab.LabError) as err:
                    path.write_text(f"dump failed: {err}\n")
                self.stalls.append(str(path))
                print(f"  STALL: no request completed for {self.stall_s:.0f} s; dump in {path}", flush=True)
                self._last = (n, time.monotonic())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--cycle-s", type=float, default=40.0, help="one attach and its end every this many seconds")
    ap.add_argument("--segment-s", type=int, default=60, help="seconds of full-rate writes per guest segment")
    ap.add_argument("--stall-s", type=float, default=20.0)
    ap.add_argument("--out", default="test-output/soak")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="qspan-soak-"))
    ours: set[int] = set()  # every QEMU the soak booted: a tracer of a killed one left behind is a leak
    totals = {"cycles": 0, "kills": {k: 0 for k in KINDS if k != "detach"}, "detaches": 0, "lost_events": 0,
              "sessions_failed_unexpectedly": 0, "leaks": [], "qemu_boots": 1, "ended_after_kill_s": [],
              "bpftrace_gone_after_server_kill_s": []}
    watchdog = Watchdog(out, args.stall_s)
    info = lab.up(d / "lab")
    ours.add(info.pid)
    baseline = kernel_probes(ours)
    guest = Guest(info, args.segment_s)
    watchdog.watch(info, guest)
    server = ServerProcess().wait_ready()
    t0 = time.monotonic()
    deadline = t0 + args.hours * 3600
    verified_before = failed_before = cut_before = 0
    # Ctrl-C or a SIGTERM ends the cycle under way as planned and then the soak, so the lab is
    # taken down and the totals so far are still written (the run is marked as stopped early).
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda n, _f: (print(f"signal {n}: stopping after this cycle", flush=True), stop.set()))
    try:
        while time.monotonic() < deadline and not stop.is_set():
            kind = KINDS[totals["cycles"] % len(KINDS)]
            totals["cycles"] += 1
            started = time.monotonic()
            note = ""
            try:
                sid = server.attach(info.pid)
            except QspanError as err:
                print(f"cycle {totals['cycles']}: attach failed: {err}", flush=True)
                totals["sessions_failed_unexpectedly"] += 1
                stop.wait(args.cycle_s)
                continue
            stop.wait(args.cycle_s / 2)
            if kind == "detach":
                server.request("DELETE", f"/api/sessions/{sid}")
                status = server.get(f"/api/sessions/{sid}")[1]["status"]
                totals["detaches"] += 1
                totals["lost_events"] += status["lost_events"]
                note = f"{status['spans']} spans, {status['lost_events']} lost"
            elif kind == "kill-bpftrace":
                for p in bpftraces_of(info.pid):
                    os.kill(p, signal.SIGKILL)
                status, took = ended(server, sid)
                totals["ended_after_kill_s"].append(took)
                note = f"session {status['state']} ({status['reason']}) {took} s after the kill"
                if status["state"] not in ("failed", "detached"):
                    totals["leaks"].append(f"cycle {totals['cycles']}: session still {status['state']} "
                                           f"{ENDED_WITHIN_S} s after its bpftrace was killed")
                    server.request("DELETE", f"/api/sessions/{sid}")
            elif kind == "kill-server":
                server.proc.kill()
                server.proc.wait()
                server.stop()
                t = time.monotonic()  # its bpftrace is told by the kernel (setpriv --pdeathsig) or its heartbeat
                while bpftraces_of(info.pid) and time.monotonic() - t < ENDED_WITHIN_S:
                    time.sleep(0.2)
                took = round(time.monotonic() - t, 1)
                totals["bpftrace_gone_after_server_kill_s"].append(took)
                note = f"its bpftrace gone {took} s after; server started again"
                server = ServerProcess().wait_ready()
            elif kind == "kill-qemu":
                watchdog.paused = True
                os.kill(info.pid, signal.SIGKILL)
                guest.stop()
                verified_before += guest.verified
                failed_before += guest.failed
                cut_before += guest.cut
                status, took = ended(server, sid)
                totals["ended_after_kill_s"].append(took)
                note = f"session {status['state']} ({status['reason']}) {took} s after the kill"
                if status["reason"] != "qemu-exited":
                    totals["leaks"].append(f"cycle {totals['cycles']}: session {status['state']} "
                                           f"({status['reason']}) {ENDED_WITHIN_S} s after QEMU was killed")
                lab.down(d / "lab")
                info = lab.up(d / "lab")
                ours.add(info.pid)
                totals["qemu_boots"] += 1
                guest = Guest(info, args.segment_s)
                watchdog.watch(info, guest)
            if kind != "detach":
                totals["kills"][kind] += 1
            time.sleep(5)  # whatever was going away is gone by now
            left = sorted(b for b, traced in bpftrace_targets().items() if traced in ours)
            probes = kernel_probes(ours)
            leaked = {k: v - baseline[k] for k, v in probes.items() if v > baseline[k]}
            if left or leaked:
                totals["leaks"].append(f"cycle {totals['cycles']} ({kind}): bpftrace left {left}, kernel {leaked}")
            print(f"cycle {totals['cycles']} {kind}: {note}; {time.monotonic() - started:.0f} s; "
                  f"guest segments verified {verified_before + guest.verified}; leaks {len(totals['leaks'])}; "
                  f"stalls {len(watchdog.stalls)}", flush=True)
            write_totals(out, totals, t0, watchdog, guest, verified_before, failed_before, cut_before, baseline)
            stop.wait(max(0.0, args.cycle_s - (time.monotonic() - started)))
    finally:
        watchdog.paused = True
        guest.stop()
        server.stop()
        lab.down(d / "lab")
    totals["stopped_early"] = stop.is_set()
    write_totals(out, totals, t0, watchdog, guest, verified_before, failed_before, cut_before, baseline)
    print(json.dumps({k: v for k, v in totals.items() if k != "kernel_baseline"}))


def write_totals(out: Path, totals: dict, t0: float, watchdog: Watchdog, guest: Guest,
                 verified_before: int, failed_before: int, cut_before: int, baseline: dict) -> None:
    """OUT/soak.json, rewritten after every cycle: a soak cut short by anything still leaves its figures."""
    totals.update(hours=round((time.monotonic() - t0) / 3600, 2), stalls=watchdog.stalls,
                  guest_segments_verified=verified_before + guest.verified,
                  guest_segments_failed=failed_before + guest.failed,
                  guest_segments_cut_by_qemu_kills=cut_before + guest.cut, kernel_baseline=baseline)
    (out / "soak.json").write_text(json.dumps(totals, indent=1))


if __name__ == "__main__":
    main()
