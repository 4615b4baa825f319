"""Probe cost calibration: what one probe hit costs the traced thread, by kind.

Builds bench/probe_target.c (functions whose first instruction the kernel
emulates for a uprobe, `push`, or must single-step, `sub`; and a syscall for a
tracepoint), calls each in a timed loop with nothing attached, then with a
qspan-generated probe attached through qspan's own tracer session, and prints
the added nanoseconds per call for:

- empty: the probe with an empty action (the trap or tracepoint itself);
- ring: qspan's default transport (a perf record in qspan's own rings, no wake-up);
- maps: the maps transport (store in a BPF hash map; drained in batches);
- printf: the printf transport (one perf-buffer record per event, bpftrace woken);
- ring+watch: ring with the "submit" filter's action before it (tracers/probes.txt: the
  thread is added to the watched-thread map unless there; what each req.submit hit pays).

Each runs twice: back to back (gap 0) and with the thread spinning GAP us
between calls, as QEMU does other work between probe hits: a printf then pays
for waking bpftrace's reader on every event. One run on a shared machine:
compare within the table.

    .venv/bin/python bench/probe_cost.py [--calls 100000] [--gap-us 20]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from qspan import catalogue, program  # noqa: E402
from qspan.transport import bpftrace as tracer  # noqa: E402
from qspan.catalogue import ProbeSpec, VersionMatch  # noqa: E402
from qspan.program.probes import filter_action  # noqa: E402


class Target:
    def __init__(self, exe: Path):
        self.proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout and self.proc.stdin
        self.pid = int(self.proc.stdout.readline().split()[1])

    def run(self, fn: str, n: int, gap_ns: int) -> float:
        self.proc.stdin.write(f"{fn} {n} {gap_ns}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.write("q\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=10)


def program_text(exe: Path, pid: int, site: str, action: str) -> str:
    cat = catalogue.load()
    spec = cat.events["co.switch"]
    if site == "syscall":
        attach, flt, args = "tracepoint:syscalls:sys_enter_getppid", f"pid == {pid}", ("args->__syscall_nr", "0", "0", "0")
    else:
        attach, flt, args = f"uprobe:{exe}:cal_{site}", f"pid == {pid}", ("arg0", "arg1", "arg2", "0")
    probe = ProbeSpec("co.switch", "uprobe", VersionMatch("*", (0, 0)), site, "proc", args, "bench")
    backend = program.transport_module(_transport(action))
    body = "" if action == "empty" else backend.store(probe, spec)
    if action.endswith("+watch"):
        body = f"{filter_action('submit')} {body}"
    out = [backend.begin(""), f"{attach} /{flt}/ {{ {body} }}"]
    if _transport(action) in ("maps", "ring"):
        out += backend.end(cat, named=False)
    return "\n".join(out) + "\n"


def _transport(action: str) -> str:
    action = action.removesuffix("+watch")
    return action if action in ("maps", "ring") else "printf"


def traced_ns(t: Target, exe: Path, site: str, action: str, n: int, gap_ns: int) -> tuple[float, int, int]:
    transport = program.transport_module(_transport(action)).TRANSPORT
    session = tracer.TraceSession(program_text(exe, t.pid, site, action), t.pid, transport=transport)
    attached = threading.Event()
    got = {"lines": 0}
    result: dict = {}

    def on_line(line: str) -> None:
        got["lines"] += 1

    th = threading.Thread(target=lambda: result.setdefault("r", session.run(on_line, None, on_attached=attached.set)))
    th.start()
    if not attached.wait(120):
        session.stop()
        th.join()
        raise SystemExit(f"bpftrace did not attach for {site}/{action}")
    ns = t.run("syscall" if site == "syscall" else site, n, gap_ns)
    session.stop()
    th.join()
    r = result["r"]
    return ns, r.event_lines, r.lost_events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--gap-us", type=float, default=20.0)
    args = ap.parse_args()
    tracer.check_can_trace()
    with tempfile.TemporaryDirectory(prefix="qspan-probe-cost-") as tmp:
        exe = Path(tmp) / "probe_target"
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(REPO / "bench" / "probe_target.c")], check=True)
        t = Target(exe)
        try:
            rows = []
            for site, what in (("push", "uprobe, first instruction emulated (push)"),
                               ("sub", "uprobe, first instruction single-stepped (sub)"),
                               ("syscall", "tracepoint (syscalls:sys_enter_getppid)")):
                for gap in (0, int(args.gap_us * 1000)):
                    n = args.calls if gap == 0 else max(2000, args.calls // 10)
                    base = min(t.run(site, n, gap) for _ in range(3))
                    cells = {}
                    for action in ("empty", "ring", "ring+watch", "maps", "printf"):
                        ns, lines, lost = traced_ns(t, exe, site, action, n, gap)
                        cells[action] = (ns - base, lines, lost)
                    rows.append((what, gap, n, base, cells))
                    print(f"{site} gap {gap}: " + ", ".join(f"{a} +{c[0]:.0f} ns" for a, c in cells.items()), file=sys.stderr)
        finally:
            t.close()
    print(f"added nanoseconds per call on the traced thread (baseline subtracted; {args.calls} calls back to back, "
          f"{max(2000, args.calls // 10)} with a {args.gap_us:g} us gap)")
    print(f"{'probe site':<48}{'gap us':>7}{'empty':>8}{'ring':>8}{'+watch':>8}{'maps':>8}{'printf':>8}"
          "   events seen (ring/maps/printf), lost")
    for what, gap, n, base, cells in rows:
        e, r, w, m, p = cells["empty"], cells["ring"], cells["ring+watch"], cells["maps"], cells["printf"]
        print(f"{what:<48}{gap / 1000:>7.0f}{e[0]:>8.0f}{r[0]:>8.0f}{w[0]:>8.0f}{m[0]:>8.0f}{p[0]:>8.0f}"
              f"   {r[1]}/{m[1]}/{p[1]}, {r[2]}/{m[2]}/{p[2]}")
    print("ring/maps/printf - empty = what the transport's store adds to a probe hit")


if __name__ == "__main__":
    main()
