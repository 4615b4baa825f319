"""Commands on files, no QEMU needed: spans, perfetto, summary."""

from __future__ import annotations

import json
from pathlib import Path

from qspan import pipeline
from qspan.cli.common import progress, write_json
from qspan.cli.trace import report_spans
from qspan.errors import QspanError
from qspan.model.spans import span_dict
from qspan.output import chrome, recording, report


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


def cmd_summary(args) -> int:
    try:
        spans = json.loads(Path(args.spans).read_text())["spans"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise QspanError(f"{args.spans}: not a qspan spans JSON file ({err})") from None
    print(report.render_text(report.breakdown(spans)))
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
