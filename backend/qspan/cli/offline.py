"""Commands on files, no QEMU needed: spans, perfetto, summary, compare, otlp."""

from __future__ import annotations

import json
from pathlib import Path

from qspan import pipeline
from qspan.cli.common import name_value, progress, write_json
from qspan.cli.trace import report_spans
from qspan.errors import QspanError
from qspan.model.spans import span_dict
from qspan.output import chrome, compare, recording, report


def cmd_spans(args) -> int:
    rec = recording.read(args.recording, allow_truncated=args.allow_truncated)
    corr = pipeline.correlate_recording(rec)
    write_json(args.out, pipeline.document(rec, corr))
    report_spans(corr, args.out)
    return 0


def cmd_perfetto(args) -> int:
    """A recording as Chrome trace-event JSON (threads, requests, coroutine runs, handoff flows)."""
    rec = recording.read(args.recording, allow_truncated=args.allow_truncated)
    corr = pipeline.correlate_recording(rec, timelines=True)
    doc = chrome.chrome_trace([span_dict(s) for s in corr.spans],
                              {k: t.dicts() for k, t in corr.timelines.items()}, rec.header)
    write_json(args.out, doc, indent=None)
    progress(f"{len(corr.spans)} requests, {len(doc['traceEvents'])} trace events -> {args.out} (open it in Perfetto)")
    return 0


def _document(path: str) -> dict:
    """A spans JSON file (qspan spans, qspan attach, the dashboard's export), checked for its spans."""
    try:
        doc = json.loads(Path(path).read_text())
        if not isinstance(doc["spans"], list):
            raise TypeError("'spans' is not a list")
        return doc
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise QspanError(f"{path}: not a qspan spans JSON file ({err})") from None


def _spans_json(path: str) -> list[dict]:
    return _document(path)["spans"]


def cmd_summary(args) -> int:
    print(report.render_text(report.breakdown(_spans_json(args.spans))))
    return 0


def _window(text: str | None) -> tuple[float | None, float | None]:
    """'FROM:TO' in seconds after the first span's start; either end may be left out."""
    if text is None:
        return None, None
    lo, sep, hi = text.partition(":")
    try:
        if not sep:
            raise ValueError
        out = (float(lo) if lo else None, float(hi) if hi else None)
    except ValueError:
        raise QspanError(f"window {text!r}: expected FROM:TO in seconds, e.g. 0:10 or 30:") from None
    if out[0] is not None and out[1] is not None and out[1] <= out[0]:
        raise QspanError(f"window {text!r}: its end is not after its start")
    return out


def cmd_compare(args) -> int:
    """Two recordings, spans files or windows of them: where the latency difference went."""
    sides = []
    for path, win in ((args.a, args.window_a), (args.b, args.window_b)):
        lo, hi = _window(win)
        spans = compare.window(_header_and_spans(path)[1], lo, hi)
        if not spans:
            raise QspanError(f"{path}: no spans" + (f" in window {win}" if win else ""))
        sides.append(spans)
    result = compare.compare(*sides)
    if not result["groups"]:
        raise QspanError(f"nothing to compare: A has {', '.join(result['only_in_a'])}, "
                         f"B has {', '.join(result['only_in_b'])}")
    labels = [p + (f" [{w} s]" if w else "") for p, w in ((args.a, args.window_a), (args.b, args.window_b))]
    result["a"], result["b"] = {"source": labels[0]}, {"source": labels[1]}
    if args.out:
        write_json(args.out, result)
    print(compare.render_text(result, *labels))
    return 0


def _header_and_spans(path: str) -> tuple[dict, list[dict]]:
    """A recording's header and spans (correlated here), or a spans file's facts and spans."""
    if recording.is_recording(path):
        progress(f"{path}: correlating the recording")
        rec = recording.read(path)
        return rec.header, [span_dict(s) for s in pipeline.correlate_recording(rec).spans]
    doc = _document(path)
    return {"target": doc.get("target") or {}, **(doc.get("trace") or {})}, doc["spans"]


def cmd_otlp(args) -> int:
    """A recording's or spans file's spans to an OpenTelemetry collector, one trace per request."""
    from qspan.output import otlp

    headers = dict(name_value(h, "--header") for h in args.header)
    header, spans = _header_and_spans(args.source)
    if not spans:
        raise QspanError(f"{args.source}: no spans to send")
    offset, exact = otlp.unix_offset_ns(header, min(s["start_ns"] for s in spans))
    if not exact:
        progress("the recording predates qspan's clock anchor: wall-clock times are its start time to the second")
    exporter = otlp.OtlpExporter(args.endpoint, header, offset, headers=headers, queue_spans=len(spans))
    exporter.offer(spans)
    counts = exporter.close(timeout_s=args.timeout)
    progress(f"{counts['requests']} requests as {counts['otel_spans']} OpenTelemetry spans: "
             f"{counts['exported']} delivered, {counts['failed']} not, to {args.endpoint}")
    if counts["failed"] or counts["exported"] < counts["otel_spans"]:
        raise QspanError(f"the collector at {args.endpoint} did not take every span "
                         f"({counts['exported']} of {counts['otel_spans']}; see the messages above)")
    return 0


def add(sub, parents) -> None:
    s = sub.add_parser("spans", parents=[parents.RECORDING], help="correlate a recording into spans JSON")
    s.add_argument("--out", required=True, help="spans JSON file to write")
    s.set_defaults(fn=cmd_spans)
    s = sub.add_parser("perfetto", parents=[parents.RECORDING],
                       help="convert a recording to Chrome trace-event JSON for Perfetto")
    s.add_argument("--out", required=True, help="trace JSON file to write")
    s.set_defaults(fn=cmd_perfetto)
    s = sub.add_parser("summary", help="print the latency breakdown of a spans JSON file")
    s.add_argument("spans", help="a spans JSON file (qspan spans, qspan attach, or the dashboard's export)")
    s.set_defaults(fn=cmd_summary)
    s = sub.add_parser("compare", help="before and after: where the latency difference between two traces went")
    s.add_argument("a", help="A, the before: a recording (.qspan, .qspan.gz) or a spans JSON file")
    s.add_argument("b", help="B, the after: the same kinds (may be the same file, with another window)")
    s.add_argument("--window-a", metavar="FROM:TO", help="only A's spans that started FROM..TO s after its first")
    s.add_argument("--window-b", metavar="FROM:TO", help="the same for B")
    s.add_argument("--out", help="also write the comparison as JSON (schema qspan.compare/1)")
    s.set_defaults(fn=cmd_compare)
    s = sub.add_parser("otlp", help="send spans to an OpenTelemetry collector (OTLP/HTTP), one trace per request")
    s.add_argument("source", help="a recording (.qspan, .qspan.gz) or a spans JSON file")
    s.add_argument("--endpoint", default="http://127.0.0.1:4318/v1/traces",
                   help="the collector's OTLP/HTTP traces URL (default %(default)s)")
    s.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                   help="an HTTP header for the collector, e.g. an Authorization (repeatable)")
    s.add_argument("--timeout", type=float, default=60.0, help="give up on sending after this many seconds")
    s.set_defaults(fn=cmd_otlp)
