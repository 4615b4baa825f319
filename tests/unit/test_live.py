"""The live pipeline's pure parts: reorder buffer and bounded span store, on the real recording."""

import random

from helpers import DATA
from qspan.output import recording
from qspan.correlate import Correlator, correlate
from qspan.live import ReorderBuffer, SpanStore


def _live(events, header, lag_ns):
    """Feed events the way the server does: out of order within `lag_ns`, through the buffer."""
    buf = ReorderBuffer(lag_ns)
    c = Correlator(header, capture_timeline=True)
    store = SpanStore(max_spans=100_000)
    for i, ev in enumerate(events):
        buf.push(ev)
        if i % 64 == 0:
            for r in buf.ready():
                c.add(r)
            store.add(*c.take_spans())
    for r in buf.drain():
        c.add(r)
    store.add(*c.take_spans())
    store.flush()
    return store


def test_live_pipeline_equals_offline_correlation_despite_cpu_interleaving():
    rec = recording.read(DATA / "stock-qd4-w100.qspan.gz")
    offline = correlate(rec.events, rec.header)
    # bpftrace's per-CPU buffers interleave lines out of order; shuffle within 1 ms windows
    rng = random.Random(3)
    jittered = sorted(rec.events, key=lambda e: e.ts_ns + rng.randrange(1_000_000))
    store = _live(jittered, rec.header, lag_ns=2_000_000)
    assert [s["id"] for s in sorted(store.spans, key=lambda s: s["id"])] == [s.id for s in sorted(offline.spans, key=lambda s: s.id)]
    by_id = {s["id"]: s for s in store.spans}
    for s in offline.spans:
        assert by_id[s.id]["dur_ns"] == s.dur_ns
    bd = store.breakdown()
    assert bd["write"]["requests"] == 100 and bd["read"]["requests"] == 100
    assert sum(r["requests"] for r in store.seconds) == 200
    assert store.timelines, "timelines captured for the drill-down"


def test_store_is_bounded():
    rec = recording.read(DATA / "stock-qd4-w100.qspan.gz")
    spans = correlate(rec.events, rec.header).spans
    store = SpanStore(max_spans=50, max_timelines=10)
    store.add(spans, {s.id: [{"x": 1}] for s in spans})
    assert len(store.spans) == 50
    assert len(store.timelines) <= 10 + 100
    assert store.slowest(5)[0]["dur_ns"] == max(s["dur_ns"] for s in store.spans)
    assert store.query(op="read", min_dur_us=0, limit=1000) == [s for s in store.spans if s["op"] == "read"]


def test_a_dump_watermark_releases_events_before_the_lag_would():
    rec = recording.read(DATA / "stock-qd4-w100.qspan.gz")
    evs = rec.events[:50]
    buf = ReorderBuffer(lag_ns=10**12)  # the lag alone would hold everything
    for ev in evs:
        buf.push(ev)
    assert buf.ready() == []
    buf.watermark_ns = evs[30].ts_ns + 2_000_000  # "complete up to here", less the margin
    out = buf.ready()
    assert out and [e.ts_ns for e in out] == sorted(e.ts_ns for e in evs if e.ts_ns <= evs[30].ts_ns)


def test_load_shedder_doubles_when_behind_and_halves_only_with_room_to_spare():
    from qspan.live import LoadShedder

    s = LoadShedder(max_every=8, behind_ns=400, caught_up_ns=150, room=0.4, settle_ns=10, calm_ns=100)
    assert s.update(0, lag_ns=50, busy=0.9) == 1  # busy but keeping up: nothing to shed
    assert s.update(1, lag_ns=500, busy=0.9) == 2  # behind
    assert s.update(5, lag_ns=900, busy=0.9) == 2  # still settling: the backlog has to drain first
    assert s.update(20, lag_ns=0, busy=0.1, lost=3) == 4  # events lost: behind whatever the lag says
    assert [s.update(t, lag_ns=5000, busy=1.0) for t in (40, 60, 80)] == [8, 8, 8]  # capped
    # caught up, but busy half the time: twice the events would not fit
    assert [s.update(t, lag_ns=10, busy=0.5) for t in range(100, 400, 20)] == [8] * 15
    # caught up with room: halve once calm long enough, then again after another calm period
    got = [s.update(t, lag_ns=10, busy=0.2) for t in range(400, 700, 20)]
    assert got[0] == 8 and got[-1] == 2 and 4 in got and sorted(got, reverse=True) == got
    assert s.update(700, lag_ns=200, busy=0.2) == 2  # between the marks: stay
