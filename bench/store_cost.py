"""Trap or store: what qspan's probes cost the traced QEMU's iothread, split in situ.

Boots the stock lab and, for --rounds alternating rounds, runs the same guest
workload with nothing attached and once per mode with qspan's full-fidelity
program attached (probe sites on), each mode a variant of one generated
program (--transport maps or ring):

- traps:    every probe's action emptied: what the probe hits themselves cost
            (uprobe traps and tracepoint calls, with a BPF program that does
            nothing);
- noseq:    maps: the events stored without their per-CPU sequence number (a
            what-if: qspan's loss accounting needs the sequence, so this
            mode's recording is not usable, only its cost);
- ungated:  ring: the events printed without first reading @qspan_off (the
            sampling gate: one hash lookup per hit);
- maps, ring: the program as qspan runs it.

and prints the iothread's on-CPU time per request (from schedstat) for each,
with the difference to "off". The vCPU's and the other threads' time is
printed too but moves with TCG far more than with the tracer. One run, one
machine: compare within the table.

    .venv/bin/python bench/store_cost.py [--rounds 6] [--count 2000] [--rate 1000] [--modes traps,noseq,maps]
    .venv/bin/python bench/store_cost.py --transport ring --modes traps,ungated,ring
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import measure  # noqa: E402
from qspan import pipeline  # noqa: E402
from qspan.transport.bpftrace import TraceSession  # noqa: E402
from qspanlab import lab  # noqa: E402

SEQ_STORE = "$s = @qspan_seq[cpu] + 1; @qspan_seq[cpu] = $s;"
RING_GATE = "if (@qspan_off == 0) { "
MODES = {"maps": ("traps", "noseq", "maps"), "ring": ("traps", "ungated", "ring")}


def variant(text: str, mode: str) -> str:
    """The generated program, changed for one mode (see the module docstring)."""
    if mode in ("maps", "ring"):
        return text
    if mode == "ungated":
        return _each_probe(text, _ungated)
    if mode == "noseq":
        assert SEQ_STORE in text, "program/maps.py's store changed: update this benchmark"
        return text.replace(SEQ_STORE, "$s = (uint64)1;").replace("clear(@qspan_seq); ", "")
    if mode == "traps":
        emptied = _each_probe(text, lambda line: line[: line.index("{")] + "{ $x = 1; }")
        return emptied.replace("clear(@qspan_named); ", "")  # no probe names nodes now
    raise ValueError(mode)


def _each_probe(text: str, edit) -> str:
    """The program with every probe's line (one probe, one line) changed by `edit`."""
    return "\n".join(edit(line) if line.startswith(("uprobe:", "tracepoint:", "usdt:")) else line
                     for line in text.splitlines())


def _ungated(line: str) -> str:
    assert RING_GATE in line, "program/ring.py's gate changed: update this benchmark"
    return line.replace(RING_GATE, "if (1 == 1) { ")  # folded away by the compiler


def traced_round(info, load: str, mode: str, transport: str) -> dict:
    plan = pipeline.plan(info.pid, transport=transport)  # the variants below edit its store
    s = TraceSession(variant(plan.program.text, mode), info.pid, transport=plan.program.transport,
                     sites=plan.program.sites)
    attached, failed = threading.Event(), []

    def run() -> None:
        try:
            s.run(lambda _line: None, None, on_attached=attached.set)
        except Exception as err:  # reported below, in the main thread
            failed.append(err)
            attached.set()

    th = threading.Thread(target=run)
    th.start()
    attached.wait(120)
    if failed or not attached.is_set():
        s.stop()
        th.join()
        raise SystemExit(f"mode {mode}: bpftrace did not attach: {failed[0] if failed else 'timeout'}")
    try:
        return measure(info, load, os.getpid())
    finally:
        s.stop()
        th.join()


def main() -> None:
    lab.sigterm_takes_lab_down()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--qd", type=int, default=4)
    ap.add_argument("--rate", type=int, default=1000, help="guest requests/s (0: as fast as it can)")
    ap.add_argument("--transport", choices=sorted(MODES), default="maps")
    ap.add_argument("--modes", help="comma-separated (default: all of the transport's, "
                    + "; ".join(f"{t}: {','.join(m)}" for t, m in MODES.items()) + ")")
    args = ap.parse_args()
    modes = ["off", *[m for m in (args.modes or ",".join(MODES[args.transport])).split(",") if m]]
    for m in modes[1:]:
        if m not in MODES[args.transport]:
            ap.error(f"unknown mode {m!r} for --transport {args.transport}")
    load = f"--op write --qd {args.qd} --count {args.count}" + (f" --rate {args.rate}" if args.rate else "")
    rows: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="qspan-bench-") as tmp:
        info = lab.up(Path(tmp) / "lab")
        try:
            lab.load(info, load)  # warm-up
            for r in range(args.rounds):
                for mode in modes:
                    row = measure(info, load, None) if mode == "off" else traced_round(info, load, mode, args.transport)
                    rows[mode].append(row)
                    print(f"round {r + 1} {mode}: iothread {row['qemu_us']['iothread']:.1f} us/req", file=sys.stderr)
        finally:
            lab.down(Path(tmp) / "lab")
    print(f"stock lab, transport {args.transport}, guest: {load}, {args.rounds} rounds alternating: {', '.join(modes)}")
    print("on-CPU time per request by QEMU thread kind (us): mean over rounds (min-max)")
    print(f"{'mode':<7}{'iothread':>22}{'vs off':>9}{'vcpu':>9}{'workers':>9}{'other':>9}")
    base = statistics.mean(r["qemu_us"]["iothread"] for r in rows["off"])
    for mode in modes:
        io = [r["qemu_us"]["iothread"] for r in rows[mode]]
        cells = [statistics.mean(r["qemu_us"][k] for r in rows[mode]) for k in ("vcpu", "workers", "other")]
        print(f"{mode:<7}{statistics.mean(io):>10.1f} ({min(io):.1f}-{max(io):.1f}){statistics.mean(io) - base:>+9.1f}"
              + "".join(f"{c:>9.1f}" for c in cells))


if __name__ == "__main__":
    main()
