"""Commands that attach to a running QEMU: record, attach, aggregate."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from qspan import pipeline
from qspan.cli.common import progress, write_json
from qspan.cli.inspect import print_program
from qspan.errors import QspanError
from qspan.transport.bpftrace import check_can_trace
from qspan.output import histogram, recording


def _plan(args) -> pipeline.Plan | None:
    """The plan, or None once --print-program printed it."""
    if not args.print_program:  # what can be told without touching QEMU first
        if not args.out:
            raise QspanError(f"qspan {args.cmd}: --out is required (or --print-program to only show the program)")
        pipeline.check_sampling(args.sample_every, args.transport)
        check_can_trace()  # before inspecting: "not root" is the clearer first error
    p = pipeline.plan(args.pid, args.profile, args.transport, sites=args.probe_sites == "on",
                      accounting=args.qemu_accounting)
    if args.print_program:
        print_program(p)
        return None
    return p


def cmd_record(args) -> int:
    if (p := _plan(args)) is None:
        return 0
    result = pipeline.record(p, Path(args.out), args.duration, args.sample_every, progress)
    progress(f"recording written to {args.out}")
    pipeline.check_ended(result, args.pid, Path(args.out))
    return 0


def cmd_attach(args) -> int:
    if (p := _plan(args)) is None:
        return 0
    rec_path = Path(args.record) if args.record else Path(args.out).with_suffix(".qspan")
    result = pipeline.record(p, rec_path, args.duration, args.sample_every, progress)
    rec = recording.read(rec_path)
    corr = pipeline.correlate_recording(rec)
    write_json(args.out, pipeline.document(rec, corr))
    report_spans(corr, args.out)
    pipeline.check_ended(result, args.pid, rec_path)
    return 0


def report_spans(corr: pipeline.Correlation, out: str) -> None:
    s = corr.stats
    lost = f" ({s['incomplete']} incomplete: {s['lost_events']} events lost)" if s["lost_events"] else ""
    progress(f"{s['spans']} spans from {s['events']} events -> {out}{lost}")


class _AggregatePrinter:
    """Prints a line per interval as aggregate mode's histograms come in, and keeps the totals."""

    def __init__(self, prefix: str = ""):
        self.prefix = prefix  # qspan aggregate --all: which VM a line is about
        self.reader = histogram.HistogramReader()
        self.totals: dict[str, dict[int, int]] = {}
        self.intervals: list[dict] = []
        self.t0 = time.monotonic()

    def attached(self, duration_s: float) -> None:
        self.t0 = time.monotonic()
        progress(f"attached; {duration_s:g} s (Ctrl-C stops)")

    def line(self, line: str) -> None:
        done = self.reader.line(line)
        if done is None:
            return
        histogram.merge(self.totals, done)
        row = {"t_s": round(time.monotonic() - self.t0, 1), **{op: histogram.summary(b) for op, b in sorted(done.items())}}
        self.intervals.append(row)
        ops = [f"{op} {s['requests']} req p50 {s.get('p50_us', 0):.0f} p99 {s.get('p99_us', 0):.0f} us"
               for op, s in row.items() if op != "t_s" and s["requests"]]
        print(f"{self.prefix}{row['t_s']:>7.1f} s  " + ("; ".join(ops) or "no requests"), flush=True)


    def finish(self, t, result) -> dict:
        """Print the totals; the JSON document `--out` writes."""
        total = {op: histogram.summary(b) for op, b in sorted(self.totals.items())}
        for op, s in total.items():
            print(f"{self.prefix}total {op}: {s['requests']} requests, p50 {s.get('p50_us', 0):.0f} us, "
                  f"p90 {s.get('p90_us', 0):.0f} us, p99 {s.get('p99_us', 0):.0f} us")
        return {"mode": "aggregate", "qemu": t.version, "pid": t.pid, "end": result.summary(),
                "intervals": self.intervals, "total": total,
                "histograms_us": {op: dict(sorted(b.items())) for op, b in self.totals.items()}}


def cmd_aggregate(args) -> int:
    """Always-on latency histograms: two probe hits per request, no spans."""
    if args.all:
        if args.pid is not None or args.print or args.print_program:
            raise QspanError("qspan aggregate: --all follows every QEMU; it takes no --pid and prints no program")
        from qspan.cli.aggregate_all import cmd_aggregate_all

        return cmd_aggregate_all(args, _AggregatePrinter)
    if args.pid is None:
        raise QspanError("qspan aggregate: --pid PID, or --all for every QEMU on the host")
    t, text = pipeline.aggregate_plan(args.pid, args.interval)
    if args.print or args.print_program:
        sys.stdout.write(text)
        return 0
    check_can_trace()
    out = _AggregatePrinter()
    progress(f"aggregate mode on QEMU {t.version} (PID {args.pid}): per-op latency, {histogram.BUCKET_US} us buckets")
    result = pipeline.run_aggregate(args.pid, text, args.duration, out.line, lambda: out.attached(args.duration))
    doc = out.finish(t, result)
    if args.out:
        write_json(args.out, doc)
    pipeline.check_ended(result, args.pid, Path(args.out or "-"))
    return 0


def add(sub, parents) -> None:
    s = sub.add_parser("record", parents=[parents.GENERATE, parents.TRACE],
                       help="trace a QEMU process into a replayable recording")
    s.add_argument("--out", help="recording file to write (required unless --print-program)")
    s.set_defaults(fn=cmd_record)
    s = sub.add_parser("attach", parents=[parents.GENERATE, parents.TRACE],
                       help="trace a QEMU process and write spans JSON (keeps the recording)")
    s.add_argument("--out", help="spans JSON file to write (required unless --print-program)")
    s.add_argument("--record", help="where to keep the recording (default: OUT with .qspan suffix)")
    s.set_defaults(fn=cmd_attach)
    s = sub.add_parser("aggregate", parents=[parents.PRINT],
                       help="always-on latency histograms per op (two probe hits per request, no spans)")
    s.add_argument("--pid", type=int, help="PID of the running QEMU")
    s.add_argument("--all", action="store_true", help="every QEMU on the host, ones started later too")
    s.add_argument("--duration", type=float, default=10.0, help="seconds to trace (default %(default)s)")
    s.add_argument("--interval", type=int, default=1, help="seconds per printed line (default %(default)s)")
    s.add_argument("--out", help="also write the histograms and per-interval percentiles as JSON")
    s.add_argument("--print", action="store_true", help="the same as --print-program")
    s.set_defaults(fn=cmd_aggregate)
