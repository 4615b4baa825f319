"""The Chrome trace-event export, on the real recorded stream (structure Perfetto relies on).

Loading it in Perfetto's own trace processor is not possible here: its binary
is downloaded from Google's storage at run time, and these machines are offline.
"""

import json
from dataclasses import asdict

from helpers import DATA
from qspan import pipeline
from qspan.output import chrome as exporters
from qspan.output import recording


def _spans():
    rec = recording.read(DATA / "stock-qd4-w100.qspan.gz")
    corr = pipeline.correlate_recording(rec, timelines=True)
    return [asdict(s) for s in corr.spans], {k: t.dicts() for k, t in corr.timelines.items()}, rec.header


def test_chrome_trace_structure():
    spans, timelines, header = _spans()
    doc = json.loads(json.dumps(exporters.chrome_trace(spans, timelines, header)))
    evs = doc["traceEvents"]
    assert all(e["ph"] in {"M", "X", "b", "e", "s", "f"} for e in evs)
    tids = {t["tid"] for t in header["target"]["threads"]}
    assert {e["tid"] for e in evs if e["ph"] == "M" and e["name"] == "thread_name"} == tids
    # every async begin has its end with the same process-local id and name, not before it
    # (tests/e2e/test_perfetto.py checks how Perfetto itself reads them)
    opened = {}
    for e in evs:
        if e["ph"] == "b":
            opened.setdefault((e["id2"]["local"], e["name"]), []).append(e["ts"])
        elif e["ph"] == "e":
            assert opened[(e["id2"]["local"], e["name"])].pop() <= e["ts"]
    assert all(not v for v in opened.values())
    requests = [e for e in evs if e["ph"] == "b" and "request" in e.get("args", {})]
    assert sorted(e["args"]["request"] for e in requests) == sorted(x["id"] for x in spans) and len(spans) == 200
    assert all(e["name"] == next(x["op"] for x in spans if x["id"] == e["args"]["request"]) for e in requests)
    # flows: one start and one finish per handoff, the finish binding to the enclosing slice
    s = {e["id"]: e for e in evs if e["ph"] == "s"}
    f = {e["id"]: e for e in evs if e["ph"] == "f"}
    assert len(s) == len(f) == sum(len(x["handoffs"]) for x in spans)
    assert all(f[i]["bp"] == "e" and s[i]["ts"] <= f[i]["ts"] for i in s)
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in evs if e["ph"] == "X")


def test_span_dict_equals_dataclasses_asdict_on_real_spans():
    from dataclasses import asdict

    from qspan.model.spans import span_dict

    rec = recording.read(DATA / "stock-qd4-w100.qspan.gz")
    spans = pipeline.correlate_recording(rec).spans
    assert spans
    for s in spans:
        d = span_dict(s)
        assert d == asdict(s)
        d["phases"][0]["dur_ns"] = -1  # a copy, not a view of the span
        assert s.phases[0].dur_ns != -1
