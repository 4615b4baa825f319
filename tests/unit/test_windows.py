"""Per-second rollups and the dashboard's views (live/windows.py, live/views.py), on spans of a real recording.

The recording's 200 spans are laid out again over several minutes on two disks (copies shifted in
time, every other copy on a second disk's nodes), and every figure the views give is held to the
same figure worked out from the spans by brute force.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from helpers import DATA

from qspan.correlate import Correlator, in_time_order
from qspan.live import SpanStore
from qspan.live.views import MAX_POINTS, View, ViewError, bin_width, charts, parse_view, scope_choices, slowest
from qspan.live.windows import ALL, SLOWEST_PER_SECOND, Windows, bucket_low_us, bucket_of
from qspan.output import recording
from qspan.output.report import percentile

NS = 1_000_000_000
DEVICES = {"disk0": "vda", "disk1": "vdb"}


def _recorded():
    rec = recording.read(DATA / "stock-qd4-w100.qspan.gz")
    c = Correlator(rec.header, capture_timeline=True)
    for ev in in_time_order(rec.events):
        c.add(ev)
    return c.take_spans()[0]


def _laid_out(copies: int, step_ns: int) -> list:
    """`copies` copies of the recording's spans, each `step_ns` later; odd copies on disk1."""
    out = []
    for k, spans in enumerate([_recorded()] * copies):
        for s in spans:
            nodes = [replace(v, node="disk1") for v in s.nodes] if k % 2 else s.nodes
            out.append(replace(s, id=k * 1000 + s.id, start_ns=s.start_ns + k * step_ns, end_ns=s.end_ns + k * step_ns,
                               nodes=nodes))
    return sorted(out, key=lambda s: s.end_ns)


@pytest.fixture(scope="module")
def laid_out():
    spans = _laid_out(240, 700_000_000)  # 48,000 spans over ~170 s
    store = SpanStore(max_spans=50, devices=DEVICES)
    for i in range(0, len(spans), 97):
        store.add(spans[i:i + 97], {})
    store.flush()
    return spans, store


def _sec(s) -> int:
    return s.end_ns // NS


def test_buckets_are_a_quarter_octave_wide():
    assert bucket_of(999) == 0 and bucket_of(1000) == 1 and bucket_of(2000) == 5
    for ns in (1_500, 25_000, 120_000, 3_000_000):
        b = bucket_of(ns)
        assert bucket_low_us(b) <= ns / 1000 < bucket_low_us(b + 1)


def test_every_span_counts_once_in_each_of_its_scopes(laid_out):
    spans, store = laid_out
    w = store.windows
    assert store.requests == len(spans) == w.scopes[ALL]
    assert w.scopes["disk:vda"] == w.scopes["disk:vdb"] == len(spans) // 2
    assert w.scopes["node:disk0"] == w.scopes["node:disk1"] == len(spans) // 2
    assert [c["scope"] for c in scope_choices(w)] == ["all", "disk:vda", "disk:vdb", "node:disk0", "node:disk1"]
    bd = store.breakdown()
    assert {g: b["requests"] for g, b in bd.items()} == {"read": len(spans) // 2, "write": len(spans) // 2}
    assert bd["write"]["mean_us"] == pytest.approx(sum(s.dur_ns for s in spans if s.op == "write") / len(spans) * 2 / 1000)


def test_a_second_s_row_has_its_exact_percentiles(laid_out):
    spans, store = laid_out
    rows = {(r["t_s"], r["op"]): r for r in store.seconds}
    for (t, op), row in list(rows.items())[::17]:
        durs = sorted(s.dur_ns for s in spans if _sec(s) == t and s.op == op)
        assert row["requests"] == len(durs)
        assert row["p99_us"] == percentile(durs, 99) / 1000 and row["max_us"] == durs[-1] / 1000


def test_charts_of_a_window_hold_its_requests_binned(laid_out):
    spans, store = laid_out
    w = store.windows
    for window in (10, 60, 600, 0):
        ch = charts(w, View(window_s=window))
        t0, t1 = ch["t0_s"], ch["t1_s"]
        inside = [s for s in spans if t0 <= _sec(s) <= t1]
        assert len(ch["t_s"]) <= MAX_POINTS and sum(ch["requests"]) == len(inside)
        assert sum(sum(row) for row in ch["heatmap"]["z"]) == len(inside)
        assert ch["breakdown"]["write"]["requests"] == sum(1 for s in inside if s.op == "write")
        if window == 10:
            assert ch["bin_s"] == 1 and ch["exact_percentiles"]
    ch = charts(w, View(window_s=0))
    assert ch["bin_s"] == bin_width(ch["t1_s"] - ch["t0_s"] + 1, 1) == 2
    # merged bins' percentiles come from the quarter-octave histogram: within half a bucket (+-9 %)
    for i, t in enumerate(ch["t_s"]):
        durs = sorted(s.dur_ns for s in spans if t <= _sec(s) < t + 2 and s.op == "write")
        if len(durs) > 20:
            assert ch["latency"]["write"]["p50_us"][i] == pytest.approx(percentile(durs, 50) / 1000, rel=0.1)


def test_a_brushed_range_a_disk_and_an_op_narrow_everything(laid_out):
    spans, store = laid_out
    w = store.windows
    first = min(_sec(s) for s in spans)
    view = parse_view({"type": "view", "scope": "disk:vdb", "op": "write", "window_s": 60, "range_s": [first + 30.2, first + 49.9]})
    ch = charts(w, view)
    assert (ch["t0_s"], ch["t1_s"]) == (first + 30, first + 49)
    inside = [s for s in spans if first + 30 <= _sec(s) <= first + 49 and s.op == "write" and s.nodes[0].node == "disk1"]
    assert inside and sum(ch["requests"]) == len(inside) and ch["groups"] == ["write"]
    assert sum(ch["instead_mean_us"]["runnable"][i] * n for i, n in enumerate(ch["requests"])) == pytest.approx(
        sum(h.instead_ns.get("runnable", 0) for s in inside for h in s.handoffs) / 1000)
    # the window's slowest few are found for a disk and an op though the ring holds only the newest 50
    got = slowest(w, store.ring, view, 10)
    want = sorted(inside, key=lambda s: (-s.dur_ns, s.id))
    assert [s.id for s in got[:SLOWEST_PER_SECOND]] == [s.id for s in want[:SLOWEST_PER_SECOND]]
    assert [s.dur_ns for s in got] == sorted((s.dur_ns for s in got), reverse=True) and len(got) == 10


def test_a_range_is_held_to_the_session_and_never_makes_more_than_max_points(laid_out):
    spans, store = laid_out
    w = store.windows
    first, last = min(_sec(s) for s in spans), max(_sec(s) for s in spans)
    for rng in ([0, 1e12], [first - 1e6, first + 3], [last - 0.5, last + 1e9], [first + 7, first + 7]):
        ch = charts(w, parse_view({"range_s": rng}))
        assert first <= ch["t0_s"] <= ch["t1_s"] <= last and len(ch["t_s"]) <= MAX_POINTS
    for n in range(1, 5000, 37):
        width = bin_width(n, 1)
        assert all(len(range(t0 - t0 % width, t0 + n, width)) <= MAX_POINTS for t0 in (0, 1, width - 1))
    for bad in ([float("nan"), 1], [0, float("inf")]):
        with pytest.raises(ViewError, match="finite"):
            parse_view({"range_s": bad})


def test_old_windows_are_read_per_minute_and_their_slowest_found():
    spans = _laid_out(240, 700_000_000)
    store = SpanStore(max_spans=50, devices=DEVICES)
    store.windows = Windows(DEVICES, seconds_kept=30)
    store.add(spans, {})
    store.flush()
    ch = charts(store.windows, View(window_s=0))
    assert ch["resolution_s"] == 60 and ch["bin_s"] == 60 and not ch["exact_percentiles"]
    assert sum(ch["requests"]) == len(spans)
    got = slowest(store.windows, store.ring, View(window_s=0), 10)
    assert [s.dur_ns for s in got[:3]] == sorted((s.dur_ns for s in spans), reverse=True)[:3]
    # rows of a key that saw no request for a while go too: a flush in the first second only
    # must not make old windows look per second
    w = Windows(DEVICES, seconds_kept=10)
    flush = replace(spans[0], op="flush", id=10 ** 6)
    for s in [flush] + spans:
        w.add(s)
    w.close(1 << 62)
    assert not w.per_second_from(w.first_s) and ("all", "flush") not in w.seconds
    ch = charts(w, View(window_s=0))
    assert sum(ch["requests"]) == len(spans) + 1 and ch["resolution_s"] == 60


def test_a_span_after_its_second_closed_counts_and_its_row_is_no_longer_exact():
    spans = _laid_out(6, 700_000_000)
    w = Windows(DEVICES)
    late = max(spans[:100], key=lambda s: s.dur_ns)
    for s in spans:
        if s is not late:
            w.add(s)
    w.close(_sec(spans[-1]) - 1)
    version = w.version
    w.add(late)
    w.close(_sec(spans[-1]) - 1)
    assert w.version > version, "the charts are sent again"
    row = next(r for r in w.seconds[("all", late.op)] if r.t_s == _sec(late))
    assert row.exact is None and row.rollup.max_ns >= late.dur_ns
    assert sum(r.rollup.requests for rows in [w.seconds[("all", "read")], w.seconds[("all", "write")]] for r in rows) \
        == sum(1 for s in spans if _sec(s) <= _sec(spans[-1]) - 1)
    assert late in list(w.kept_spans()), "among its second's slowest"


def test_an_idle_guest_s_last_second_closes_and_windows_slide_with_time():
    spans = _laid_out(4, 700_000_000)
    store = SpanStore(devices=DEVICES)
    store.add(spans, {})
    last = _sec(spans[-1])
    assert store.windows.closed_upto < last
    store.advance((last + 3) * NS)
    assert store.windows.closed_upto == last and sum(r["requests"] for r in store.seconds) == len(spans)
    store.advance((last + 30) * NS)  # nothing more: the last 10 s are empty, not the last busy ones
    ch = charts(store.windows, View(window_s=10))
    assert ch["t1_s"] == last + 28 and sum(ch["requests"]) == 0 and store.rate(10) == 0


def test_search_by_offset_latency_disk_and_the_pins(laid_out):
    spans, store = laid_out
    found = store.search(op="write", scope="disk:vda", offset_min=0, offset_max=1 << 20, min_dur_us=500)
    want = [s for s in spans[-50:] if s.op == "write" and s.nodes[0].node == "disk0" and s.offset < 1 << 20
            and s.dur_ns >= 500_000]
    assert {s.id for s in want} <= {d["id"] for d in found["spans"]}
    assert found["ring_spans"] == 50 and found["slowest_kept_per_second"] == SLOWEST_PER_SECOND
    old = next(iter(store.windows.kept_spans()))
    assert store.pin(old.id) and store.find(old.id)[0].id == old.id
    assert not store.pin(-1)


@pytest.mark.parametrize("msg, why", [
    ({"scope": "vda"}, "scope"), ({"window_s": 30}, "window_s"), ({"range_s": [5, 1]}, "range_s"),
    ({"range_s": "all"}, "range_s"), ({"op": 5}, "op"), ({"program": "BEGIN {}"}, "unknown view fields"),
])
def test_a_view_that_cannot_be_says_why(msg, why):
    with pytest.raises(ViewError, match=why):
        parse_view(msg)


def test_charts_are_json_and_before_any_second_none():
    w = Windows()
    assert charts(w, View()) is None
    store = SpanStore(devices=DEVICES)
    store.add(_laid_out(3, 700_000_000), {})
    store.flush()
    json.dumps(charts(store.windows, View()))
