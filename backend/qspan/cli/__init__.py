"""The qspan command line. Every failure is one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from qspan import __version__

from qspan import catalogue

from qspan import correlate


from qspan import program

from qspan.output import recording

from qspan.output import report

from qspan import target

from qspan.transport import bpftrace as tracer
from qspan.errors import QspanError, TracerError

EXAMPLES = """\
examples:
  qspan ps                                     list running QEMU processes
  qspan tracer --pid 1234 --print              show the bpftrace program for PID 1234
  qspan record --pid 1234 --duration 10 --out trace.qspan
  qspan spans trace.qspan --out spans.json     correlate a recording into spans
  qspan perfetto trace.qspan --out trace.json  the same as a Perfetto / chrome://tracing file
  qspan serve                                  the live dashboard on http://127.0.0.1:8321/
  qspan attach --pid 1234 --duration 10 --out spans.json
"""


def _progress(msg: str) -> None:
    print(f"qspan: {msg}", file=sys.stderr, flush=True)


# -- inspection ---------------------------------------------------------------


def cmd_ps(args) -> int:
    pids = target.list_qemu_pids()
    if not pids:
        print("no QEMU processes running")
        return 0
    print(f"{'PID':>8}  {'VERSION':<8} {'PROBES':<7} {'QMP':<28} BINARY")
    for pid in pids:
        try:
            t = target.inspect(pid)
            print(f"{pid:>8}  {t.version or '?':<8} {t.probe_source:<7} {t.qmp_path or '-':<28} {t.exe}")
        except QspanError as err:
            print(f"{pid:>8}  {'?':<8} {'-':<7} {'-':<28} ({err})")
    return 0


def cmd_inspect(args) -> int:
    t = target.inspect(args.pid)
    print(json.dumps(t.header() | {"exported_symbols": len(t.symbols)}, indent=2))
    return 0


def _program_for(pid: int, profile: str | None = None, transport: str = "maps"):
    t = target.inspect(pid)
    cat = catalogue.load()
    prof = program.choose_profile(cat, t, profile)
    return t, cat, prof, program.generate(cat, program.program_input(t, prof, cat), prof, transport)


def cmd_tracer(args) -> int:
    t, _cat, _prof, prog = _program_for(args.pid, args.profile, args.transport)
    if args.print:
        sys.stdout.write(prog.text)
        for why in prog.skipped:
            print(f"// skipped {why}")
        return 0
    print("nothing to do: use --print", file=sys.stderr)
    return 2


# -- tracing ------------------------------------------------------------------


def trace_to_file(pid: int, duration_s: float, out: Path, profile: str | None = None,
                  transport: str = "maps", sample_every: int = 1) -> tuple[tracer.TraceResult, dict]:
    """Trace PID for duration_s seconds into recording `out`; Ctrl-C ends the trace early."""
    if sample_every < 1:
        raise QspanError(f"--sample-every must be 1 or more, not {sample_every}")
    if sample_every > 1 and transport != "maps":
        raise QspanError("--sample-every needs the maps transport (windows are opened and closed in BPF)")
    tracer.check_can_trace()
    t, cat, prof, prog = _program_for(pid, profile, transport)
    header = recording.make_header(t, cat, prof, prog)
    session = tracer.TraceSession(prog.text, pid, transport=prog.transport, sample_every=sample_every)
    old = signal.signal(signal.SIGINT, lambda *_: session.stop())
    try:
        with open(out, "w") as f:
            writer = recording.RecordingWriter(f, header)
            _progress(f"attaching {len(prog.probes)} probes to QEMU {t.version} (PID {pid}, profile {prof.name}) ...")
            sampled = f", one {program.WINDOW_MS} ms window in {sample_every}" if sample_every > 1 else ""
            result = session.run(
                writer.line, duration_s,
                on_attached=lambda: _progress(f"attached; tracing for {duration_s:g} s{sampled} (Ctrl-C stops)"),
            )
            writer.end(result.summary())
    finally:
        signal.signal(signal.SIGINT, old)
    msg = f"{result.event_lines} events in {result.traced_s:.1f} s"
    if result.lost_events:
        msg += f", {result.lost_events} EVENTS LOST (spans touching them are marked incomplete)"
    _progress(msg)
    return result, header


def _check_ended(result: tracer.TraceResult, pid: int, out: Path) -> None:
    if result.reason == "qemu-exited":
        raise TracerError(f"QEMU PID {pid} exited during the trace; the {result.event_lines} events seen are saved in {out}")
    if result.reason == "tracer-died":
        raise TracerError(f"bpftrace stopped unexpectedly: {tracer.stderr_errors(result.stderr)}; events so far are in {out}")


def cmd_aggregate(args) -> int:
    """Always-on latency histograms: two probe hits per request, no spans."""
    from qspan.program import aggregate

    t = target.inspect(args.pid)
    text = aggregate.generate(program.program_input(t), args.interval)
    if args.print:
        sys.stdout.write(text)
        return 0
    tracer.check_can_trace()
    reader = aggregate.HistogramReader()
    totals: dict[str, dict[int, int]] = {}
    intervals = []
    t0 = [time.monotonic()]

    def on_line(line: str) -> None:
        done = reader.line(line)
        if done is None:
            return
        aggregate.merge(totals, done)
        row = {"t_s": round(time.monotonic() - t0[0], 1), **{op: aggregate.summary(b) for op, b in sorted(done.items())}}
        intervals.append(row)
        ops = [f"{op} {s['requests']} req p50 {s.get('p50_us', 0):.0f} p99 {s.get('p99_us', 0):.0f} us"
               for op, s in row.items() if op != "t_s" and s["requests"]]
        print(f"{row['t_s']:>7.1f} s  " + ("; ".join(ops) or "no requests"), flush=True)

    session = tracer.TraceSession(text, args.pid, transport="printf", all_lines=True)
    old = signal.signal(signal.SIGINT, lambda *_: session.stop())
    try:
        _progress(f"aggregate mode on QEMU {t.version} (PID {args.pid}): per-op latency, 10 us buckets")
        result = session.run(on_line, args.duration,
                             on_attached=lambda: (t0.__setitem__(0, time.monotonic()),
                                                  _progress(f"attached; {args.duration:g} s (Ctrl-C stops)")))
    finally:
        signal.signal(signal.SIGINT, old)
    total = {op: aggregate.summary(b) for op, b in sorted(totals.items())}
    for op, s in total.items():
        print(f"total {op}: {s['requests']} requests, p50 {s.get('p50_us', 0):.0f} us, "
              f"p90 {s.get('p90_us', 0):.0f} us, p99 {s.get('p99_us', 0):.0f} us")
    if args.out:
        Path(args.out).write_text(json.dumps({"mode": "aggregate", "qemu": t.version, "pid": args.pid,
                                              "end": result.summary(), "intervals": intervals, "total": total,
                                              "histograms_us": {op: dict(sorted(b.items())) for op, b in totals.items()}},
                                             indent=1) + "\n")
    _check_ended(result, args.pid, Path(args.out or "-"))
    return 0


def cmd_record(args) -> int:
    out = Path(args.out)
    result, _ = trace_to_file(args.pid, args.duration, out, args.profile, args.transport, args.sample_every)
    _progress(f"recording written to {out}")
    _check_ended(result, args.pid, out)
    return 0


def _write_spans(rec: recording.Recording, out: Path) -> dict:
    res = correlate.correlate([*rec.events, *rec.lost], rec.header)
    doc = res.to_json(rec.header)
    doc["trace"]["end"] = rec.end
    doc["trace"]["truncated"] = rec.truncated
    out.write_text(json.dumps(doc, indent=1) + "\n")
    s = res.stats
    _progress(
        f"{s['spans']} spans from {s['events']} events -> {out}"
        + (f" ({s['incomplete']} incomplete: {s['lost_events']} events lost)" if s["lost_events"] else "")
    )
    return doc


def cmd_summary(args) -> int:
    try:
        doc = json.loads(Path(args.spans).read_text())
        spans = doc["spans"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise QspanError(f"{args.spans}: not a qspan spans JSON file ({err})") from None
    print(report.render_text(report.breakdown(spans)))
    return 0


def cmd_spans(args) -> int:
    rec = recording.read(args.recording, allow_truncated=args.allow_truncated)
    _write_spans(rec, Path(args.out))
    return 0


def cmd_perfetto(args) -> int:
    """A recording as Chrome trace-event JSON (threads, requests, coroutine runs, handoff flows)."""
    from qspan.output import chrome as exporters
    from qspan.model.spans import span_dict

    rec = recording.read(args.recording, allow_truncated=args.allow_truncated)
    c = correlate.Correlator(rec.header, capture_timeline=True)
    for ev in correlate.in_time_order([*rec.events, *rec.lost]):
        c.add(ev)
    spans, timelines = c.take_spans()
    doc = exporters.chrome_trace([span_dict(x) for x in spans], {k: t.dicts() for k, t in timelines.items()}, rec.header)
    Path(args.out).write_text(json.dumps(doc) + "\n")
    _progress(f"{len(spans)} requests, {len(doc['traceEvents'])} trace events -> {args.out} (open it in Perfetto)")
    return 0


def cmd_attach(args) -> int:
    out = Path(args.out)
    rec_path = Path(args.record) if args.record else out.with_suffix(".qspan")
    result, _ = trace_to_file(args.pid, args.duration, rec_path, args.profile, args.transport, args.sample_every)
    rec = recording.read(rec_path)
    _write_spans(rec, out)
    _check_ended(result, args.pid, rec_path)
    return 0


# -- server -------------------------------------------------------------------


def _settings(args):
    from qspan.server.settings import Settings

    s = Settings(host=args.host, port=args.port, token=args.token or None, sampling=args.sampling,
                 record_max_mb=args.record_max_mb)
    s.check()
    return s


def cmd_serve(args) -> int:
    from qspan.server.run import serve

    serve(_settings(args))
    return 0




def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qspan", description="Per-request latency tracing for QEMU block I/O.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"qspan {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    sub.add_parser("ps", help="list running QEMU processes and how they can be traced").set_defaults(fn=cmd_ps)
    s = sub.add_parser("inspect", help="show what qspan knows about one QEMU process")
    s.add_argument("--pid", type=int, required=True)
    s.set_defaults(fn=cmd_inspect)

    s = sub.add_parser("tracer", help="show the generated bpftrace program")
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--profile", help="profile from tracers/profiles (default: the one whose library QEMU has loaded, else stock)")
    s.add_argument("--print", action="store_true", help="print the program (nothing is attached)")
    s.add_argument("--transport", default="maps", choices=program.TRANSPORTS,
                   help=f"maps: events batched in BPF maps, dumped every {program.FLUSH_MS} ms (default); printf: one print per event")
    s.set_defaults(fn=cmd_tracer)

    s = sub.add_parser("record", help="trace a QEMU process into a replayable recording")
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--profile", help="profile from tracers/profiles (default: the one whose library QEMU has loaded, else stock)")
    s.add_argument("--duration", type=float, default=10.0, help="seconds to trace (default 10)")
    s.add_argument("--out", required=True, help="recording file to write")
    s.add_argument("--transport", default="maps", choices=program.TRANSPORTS,
                   help=f"maps: events batched in BPF maps, dumped every {program.FLUSH_MS} ms (default); printf: one print per event")
    _sample_option(s)
    s.set_defaults(fn=cmd_record)

    s = sub.add_parser("aggregate", help="always-on latency histograms per op (two probe hits per request, no spans)")
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--duration", type=float, default=10.0, help="seconds to trace (default 10)")
    s.add_argument("--interval", type=int, default=1, help="seconds per printed line (default 1)")
    s.add_argument("--out", help="also write the histograms and per-interval percentiles as JSON")
    s.add_argument("--print", action="store_true", help="print the program (nothing is attached)")
    s.set_defaults(fn=cmd_aggregate)

    s = sub.add_parser("spans", help="correlate a recording into spans JSON")
    s.add_argument("recording")
    s.add_argument("--out", required=True, help="spans JSON file to write")
    s.add_argument("--allow-truncated", action="store_true", help="analyse a recording that has no end marker")
    s.set_defaults(fn=cmd_spans)

    s = sub.add_parser("perfetto", help="convert a recording to Chrome trace-event JSON for Perfetto")
    s.add_argument("recording")
    s.add_argument("--out", required=True)
    s.add_argument("--allow-truncated", action="store_true")
    s.set_defaults(fn=cmd_perfetto)

    s = sub.add_parser("summary", help="print the latency breakdown of a spans JSON file")
    s.add_argument("spans")
    s.set_defaults(fn=cmd_summary)

    s = sub.add_parser("attach", help="trace a QEMU process and write spans JSON (keeps the recording)")
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--profile", help="profile from tracers/profiles (default: the one whose library QEMU has loaded, else stock)")
    s.add_argument("--duration", type=float, default=10.0)
    s.add_argument("--out", required=True, help="spans JSON file to write")
    s.add_argument("--record", help="where to keep the recording (default: OUT with .qspan suffix)")
    s.add_argument("--transport", default="maps", choices=program.TRANSPORTS,
                   help=f"maps: events batched in BPF maps, dumped every {program.FLUSH_MS} ms (default); printf: one print per event")
    _sample_option(s)
    s.set_defaults(fn=cmd_attach)

    s = sub.add_parser("serve", help="serve the live dashboard (FastAPI) on 127.0.0.1")
    s.add_argument("--host", default="127.0.0.1", help="listen address (default %(default)s; others need --token)")
    s.add_argument("--port", type=int, default=8321)
    s.add_argument("--token", default="", help="bearer token required by the API (and ?token= for the WebSocket)")
    s.add_argument("--sampling", default="auto", choices=("auto", "off"),
                   help="auto (default): when the server falls behind, trace fewer "
                        f"{program.WINDOW_MS} ms windows, each whole; off: trace everything, lose events when behind")
    s.add_argument("--record-max-mb", type=int, default=2048,
                   help="stop each session's raw recording at this size; tracing goes on (0: no limit; default %(default)s)")
    s.set_defaults(fn=cmd_serve)
    return p


def _sample_option(s) -> None:
    s.add_argument("--sample-every", type=int, default=1, metavar="N",
                   help=f"trace one {program.WINDOW_MS} ms window in N (whole requests; default 1: everything)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except QspanError as err:
        print(f"qspan: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("qspan: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
