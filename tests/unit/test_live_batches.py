"""How a live session hands a read's events on: in slices under its lock, with the collector paused."""

import gc
import threading

from helpers import DATA
from qspan import pipeline, runtime
from qspan.live import session as live_session
from qspan.live.feed import LiveFeed
from qspan.live.session import LiveSession
from qspan.model.spans import span_dict
from qspan.output import recording

RECORDING = DATA / "stock-qd4-w100.qspan.gz"


def _entries(rec) -> tuple[list[str], list[tuple]]:
    """The recording as a ring read hands it on: node-name lines, then (TS, CPU, SEQ, TID, CODE, ARGS) in time order."""
    code_of = {v: int(k) for k, v in rec.header["codes"].items()}
    events = sorted(rec.events, key=lambda e: e.ts_ns)
    names = ["%d %d %d %d %s %s %d" % (code_of[e.kind], e.ts_ns, e.tid, *e.args)
             for e in events if e.kind in rec.string_kinds]
    entries = [(e.ts_ns, 0, i, e.tid, code_of[e.kind], *e.args)
               for i, e in enumerate(events) if e.kind not in rec.string_kinds]
    return names, entries


def test_a_big_read_is_handed_on_in_slices_and_gives_the_offline_spans(tmp_path, monkeypatch):
    # A read behind a stall holds seconds of events: the frame builder must get the lock
    # between slices, and slicing must change no span.
    rec = recording.read(RECORDING)
    names, entries = _entries(rec)
    assert len(entries) > 2 * live_session.BATCH_SLICE, "the read must be bigger than a slice"
    s = LiveSession("s1", 0, None, tmp_path)
    s.feed = LiveFeed(rec.header)
    for line in names:
        s.feed.line(line)
    sizes, held = [], []
    real_batch = s.feed.batch

    def batch(lost, part):
        sizes.append(len(part))
        held.append(s._lock.locked())
        real_batch(lost, part)

    monkeypatch.setattr(s.feed, "batch", batch)
    s._batch(None, 0, entries, raw=True)
    s.feed.drain()
    assert max(sizes) == live_session.BATCH_SLICE and sum(sizes) == len(entries) and all(held)
    offline = pipeline.correlate_recording(rec)
    live = {x["id"]: x for x in s.feed.store.spans}
    assert len(live) == len(offline.spans) == 200
    assert [live[x.id] for x in offline.spans] == [span_dict(x) for x in offline.spans]


def test_the_live_path_makes_no_reference_cycles():
    # Why the tracer's loop may pause the collector while a read is decoded, correlated and
    # stored (transport/bpftrace.py): everything it drops is freed by reference counting.
    rec = recording.read(RECORDING)
    lines = list(recording.body_lines(RECORDING))
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        feed = LiveFeed(rec.header)
        for line in lines:
            feed.line(line)
        feed.drain()
        found = gc.collect()  # with the feed alive: the correlator's bound handlers are a cycle of its own
        kinds = sorted({type(o).__name__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert feed.store.requests == 200
    assert found == 0, f"{found} objects in reference cycles: {kinds}"


def test_the_collector_comes_back_only_when_the_last_thread_leaves_its_pause():
    assert gc.isenabled()
    a_in, b_in, a_out = (threading.Event() for _ in range(3))
    seen = {}

    def a():
        with runtime.collector_paused():
            a_in.set()
            b_in.wait(5)
        seen["after_a"] = gc.isenabled()
        a_out.set()

    def b():
        a_in.wait(5)
        with runtime.collector_paused():
            b_in.set()
            a_out.wait(5)
            seen["b_inside_after_a"] = gc.isenabled()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"after_a": False, "b_inside_after_a": False}
    assert gc.isenabled()


def test_a_pause_inside_a_pause_keeps_a_disabled_collector_disabled():
    gc.disable()
    try:
        with runtime.collector_paused():
            with runtime.collector_paused():
                pass
            assert not gc.isenabled()
        assert not gc.isenabled(), "the collector was off before: it stays off"
    finally:
        gc.enable()
