"""The live pipeline's pure parts: reorder buffer and bounded span store, on the real recording."""

import random
from dataclasses import replace

from helpers import DATA
from qspan.output import recording
from qspan.correlate import Correlator, correlate, in_time_order
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


def _recorded_spans():
    rec = recording.read(DATA / "stock-qd4-w100.qspan.gz")
    c = Correlator(rec.header, capture_timeline=True)
    for ev in in_time_order(rec.events):
        c.add(ev)
    return c.take_spans()


def test_store_is_bounded():
    spans, timelines = _recorded_spans()
    store = SpanStore(max_spans=50, max_timelines=10)
    store.add(spans, timelines)
    assert len(store.spans) == 50
    # a span leaving the ring takes its timeline with it
    assert store.timelines and set(store.timelines) <= {s["id"] for s in store.spans}
    assert store.query(op="read", min_dur_us=0, limit=1000) == [s for s in store.spans if s["op"] == "read"]


def test_store_trims_timelines_but_keeps_the_slowest():
    """More spans with timelines than max_timelines (+ its trim batch of 100): the old fast ones go, the slow stay."""
    spans, timelines = _recorded_spans()
    max_timelines, batch = 30, 100
    slow_us = 10 * max(s.dur_ns for s in spans) // 1000
    rounds = 8  # 1,600 spans, all kept in the ring: only the timeline bound is at work
    copies, slow_ids = [], []
    for r in range(rounds):
        shift_ns = r * 1_000_000_000  # each round one second after the last, as a live session would see them
        for s in spans:
            sid = r * 1_000 + s.id
            dur_ns = s.dur_ns
            if r < 2 and s.id % 20 == 7:  # 20 early, much slower requests: what the dashboard drills into
                dur_ns = (slow_us + len(slow_ids)) * 1000
                slow_ids.append(sid)
            copies.append((replace(s, id=sid, start_ns=s.start_ns + shift_ns, end_ns=s.start_ns + shift_ns + dur_ns,
                                   dur_ns=dur_ns), timelines[s.id]))
    assert len(slow_ids) == 20  # the store keeps the slowest 20 spans' timelines: exactly these
    store = SpanStore(max_spans=len(copies), max_timelines=max_timelines)
    peak = 0
    for i in range(0, len(copies), 64):  # in the live path's batches
        chunk = copies[i:i + 64]
        store.add([s for s, _ in chunk], {s.id: t for s, t in chunk})
        peak = max(peak, len(store.timelines))
    assert len(store.spans) == len(copies)
    assert peak <= max_timelines + batch, "the timelines outgrew their bound"
    kept = set(store.timelines)
    assert set(slow_ids) <= kept, "the slowest requests' timelines were dropped"
    slowest = sorted(store.spans, key=lambda s: -s["dur_ns"])[:len(slow_ids)]
    assert [s["id"] for s in slowest] == slow_ids[::-1]
    old_fast = [s.id for s, _ in copies[:len(spans)] if s.id not in slow_ids]
    assert not kept & set(old_fast), "the oldest fast requests' timelines should be the first to go"
    assert copies[-1][0].id in kept, "the newest request keeps its timeline"
    assert all(store.timelines[sid] is timelines[sid % 1_000] for sid in kept)


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


def test_a_block_job_s_requests_are_a_group_of_their_own():
    """The live breakdown, the per-second rows and the query group a job's spans under "job:ID"."""
    spans, _ = _recorded_spans()
    copies = [replace(s, id=10_000 + i, job="mirror0") for i, s in enumerate(spans[:7])]
    store = SpanStore(max_spans=1000)
    store.add(spans + copies, {})
    store.flush()
    bd = store.breakdown()
    assert bd["job:mirror0"]["requests"] == 7
    assert bd["write"]["requests"] + bd["read"]["requests"] == len(spans)
    assert sum(r["requests"] for r in store.seconds if r["op"] == "job:mirror0") == 7
    assert [s["id"] for s in store.query(op="job:mirror0")] == [s.id for s in copies]
