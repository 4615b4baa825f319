"""The spans document, schema `qspan.spans/1` (docs/spans-schema.md): the one builder.

`qspan spans`, `qspan attach` and the server's export all call `spans_document`,
so a document says the same things whichever way it was made: the target, how
it was traced (`trace`, from the recording header and its end marker), the
correlator's counters (`stats`) and the spans in start order.
"""

from __future__ import annotations

from qspan.model.spans import SCHEMA

# What `trace` carries from the recording header.
TRACE_FROM_HEADER = ("tool", "recorded_at", "clock", "transport", "probe_sites", "self_cost")


def spans_document(header: dict, spans: list[dict], stats: dict, end: dict | None = None,
                   truncated: bool = False) -> dict:
    """A `qspan.spans/1` document.

    `header` is the recording header (recording.make_header); `spans` are span
    dicts (model.spans.span_dict); `stats` the correlator's counters
    (correlate.Correlator.counters()); `end` the recording's end marker (why
    tracing stopped; None while a live session still traces); `truncated` when
    the recording had no end marker.
    """
    trace = {k: header[k] for k in TRACE_FROM_HEADER if k in header}
    trace["profile"] = header.get("profile", {}).get("name")
    trace["end"] = end
    trace["truncated"] = truncated
    return {
        "schema": SCHEMA,
        "target": header.get("target", {}),
        "trace": trace,
        "stats": stats,
        "spans": sorted(spans, key=lambda s: (s["start_ns"], s["id"])),
    }
