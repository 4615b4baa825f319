"""qspan's Perfetto export, read by Perfetto itself: the UI v52 and its WASM trace processor in
headless Chromium, offline, and SQL over what it imported. The export is made from real
recorded streams (tests/support/data) with `qspan perfetto`; the spans to hold it to come from
`qspan spans` on the same recording."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from playwright.sync_api import sync_playwright

from chromium import launch, require_chromium
from helpers import DATA, run_qspan
from perfetto_ui import PerfettoUI, require_perfetto_ui

pytestmark = pytest.mark.e2e
RECORDINGS = ["stock-qd4-w100.qspan.gz", "stock-ring-qd4-w100.qspan.gz"]


@pytest.fixture(scope="module")
def browser():
    require_chromium()
    require_perfetto_ui()
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.mark.parametrize("name", RECORDINGS)
def test_perfetto_reads_the_tracks_slices_and_flows_qspan_wrote(browser, tmp_path, output_dir, name):
    trace, spans_file = tmp_path / "trace.json", tmp_path / "spans.json"
    for cmd, out in (("perfetto", trace), ("spans", spans_file)):
        r = run_qspan(cmd, str(DATA / name), "--out", str(out))
        assert r.returncode == 0, r.stderr
    doc = json.loads(spans_file.read_text())
    spans = {s["id"]: s for s in doc["spans"]}
    written = json.loads(trace.read_text())["traceEvents"]
    ui = PerfettoUI(trace)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        ui.open(page)
        sql = lambda q: ui.sql(page, q)  # noqa: E731

        # nothing qspan wrote was refused or lost on import
        problems = sql("select name, idx, severity, value from stats where severity in ('error', 'data_loss') and value > 0")
        assert problems == [], problems

        # the process and its threads, with the names qspan gave them
        pid = doc["target"]["pid"]
        assert sql(f"select name from process where pid = {pid}") == [{"name": f"QEMU {doc['target']['version']} (PID {pid})"}]
        threads = {r["tid"]: r["name"] for r in sql("select tid, name from thread")}
        for t in doc["target"]["threads"]:
            label = t["comm"] + (f" [{t['role']}]" if t.get("role") not in (None, "other") else "")
            assert threads.get(t["tid"]) == label

        # one slice per request, on its process's lane for its op, as long as the span
        requests = sql("""select s.id, s.name, s.dur, extract_arg(s.arg_set_id, 'args.request') as request,
                                 t.type, p.pid from slice s join track t on s.track_id = t.id
                          join process_track pt on pt.id = t.id join process p using (upid)
                          where s.category = 'request' and s.depth = 0""")
        assert len(requests) == len(spans) == 200
        assert {r["type"] for r in requests} == {"legacy_async_process_slice"} and {r["pid"] for r in requests} == {pid}
        slice_of = {}
        for r in requests:
            s = spans[r["request"]]
            assert r["name"] == s["op"] and abs(r["dur"] - s["dur_ns"]) <= 1, (r, s["dur_ns"])  # JSON's us: 1 ns
            slice_of[r["id"]] = s

        # the phases nested in each, in order, each as long as qspan measured it
        phases = defaultdict(list)
        for r in sql("select parent_id, name, dur from slice where category = 'request' and depth = 1 order by ts, id"):
            phases[r["parent_id"]].append((r["name"], r["dur"]))
        for sid, s in slice_of.items():
            got = phases[sid]
            assert [n for n, _ in got] == [p["name"] for p in s["phases"]], s["id"]
            assert all(abs(d - p["dur_ns"]) <= 1 for (_, d), p in zip(got, s["phases"])), (got, s["phases"])

        # every handoff a flow, from the signalling thread to the resuming one
        flows = sql("""select tout.tid as from_tid, tin.tid as to_tid, extract_arg(sin.arg_set_id, 'args.request') as request
                       from flow f join slice sout on f.slice_out = sout.id join thread_track ttout on sout.track_id = ttout.id
                       join thread tout on tout.utid = ttout.utid join slice sin on f.slice_in = sin.id
                       join thread_track ttin on sin.track_id = ttin.id join thread tin on tin.utid = ttin.utid""")
        want = sorted((h["from_tid"], h["to_tid"], s["id"]) for s in spans.values() for h in s["handoffs"])
        assert sorted((f["from_tid"], f["to_tid"], f["request"]) for f in flows) == want

        # and the coroutine runs and thread states of the captured timelines, on their threads
        runs = [e for e in written if e.get("cat") == "thread"]
        assert runs and sql("select count(*) as n from slice where category = 'thread'") == [{"n": len(runs)}]
        page.screenshot(path=str(output_dir / f"perfetto-{name.split('.')[0]}.png"))
    finally:
        page.close()
        ui.close()
