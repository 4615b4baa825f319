"""The live path (LiveFeed: reorder buffer, correlator, store) against the offline correlation of the same stream."""

from helpers import DATA
from qspan import pipeline
from qspan.live.feed import LiveFeed
from qspan.output import recording
from qspan.transport.text import parse_lines

RECORDING = DATA / "stock-qd4-w100.qspan.gz"


def _lines_with_a_loss(at: int) -> tuple[dict, list[str]]:
    rec = recording.read(RECORDING)
    lines = list(recording.body_lines(RECORDING))
    return rec.header, lines[:at] + ["Lost 3 events\n"] + lines[at:]


def _live(header: dict, lines: list[str]) -> dict[int, dict]:
    feed = LiveFeed(header)
    for line in lines:
        feed.line(line)
    feed.drain()
    return {s["id"]: s for s in feed.store.spans}


def test_a_lost_line_marks_the_requests_in_flight_where_it_was_printed():
    # The printf transport prints "Lost N events" where the loss happened in its stream: the
    # live path must put it there in time too, not at time 0 (released first, marking whatever
    # happened to be in flight when the reorder buffer let it go).
    marked = 0
    for at in (4000, 6000, 8000):
        header, lines = _lines_with_a_loss(at)
        offline = pipeline.correlate(parse_lines(lines, recording.codes(header), recording.string_kinds(header)), header)
        live = _live(header, lines)
        want = {s.id for s in offline.spans if not s.complete}
        assert {sid for sid, s in live.items() if not s["complete"]} == want, f"loss after line {at}"
        assert len(live) == len(offline.spans)
        marked += len(want)
    assert marked, "the losses must fall inside some requests, or this test proves nothing"


def test_live_spans_equal_offline_spans_on_a_recorded_stream():
    rec = recording.read(RECORDING)
    live = _live(rec.header, list(recording.body_lines(RECORDING)))
    offline = pipeline.correlate_recording(rec)
    from qspan.model.spans import span_dict

    assert [live[s.id] for s in offline.spans] == [span_dict(s) for s in offline.spans]


def test_the_maps_transport_path_gives_the_offline_spans():
    """What a live session does per dump (node names as text lines, events as decoded batches
    with a watermark after each) gives the spans `qspan spans` gives for the same events."""
    from qspan.model.spans import span_dict
    from qspan.transport.bpfmaps import KEY, VALUE
    from qspan.transport.decode import MapDumpDecoder

    rec = recording.read(RECORDING)
    code_of = {v: int(k) for k, v in rec.header["codes"].items()}
    events = sorted(rec.events, key=lambda e: e.ts_ns)
    ints = [e for e in events if e.kind not in rec.string_kinds]
    feed = LiveFeed(rec.header)
    for e in events:
        if e.kind in rec.string_kinds:  # printed once per node, ahead of the dumps
            feed.line("%d %d %d %d %s %s %d" % (code_of[e.kind], e.ts_ns, e.tid, *e.args))
    decoder, seq = MapDumpDecoder(), [0, 0]
    for i in range(0, len(ints), 500):  # a dump every 500 events, as the kernel hands them over
        chunk, entries = ints[i:i + 500], []
        for j, e in enumerate(chunk):
            cpu = j % 2
            seq[cpu] += 1
            entries.append(KEY.unpack(KEY.pack(e.ts_ns, cpu)) + VALUE.unpack(VALUE.pack(seq[cpu], e.tid, code_of[e.kind], *e.args)))
        decoder.add(entries[::-1])  # hash order, not time order
        feed.batch(*decoder.release(chunk[-1].ts_ns + 1, hold_ns=0))
        feed.watermark(chunk[-1].ts_ns + 1)
    feed.drain()
    offline = pipeline.correlate_recording(rec)
    live = {s["id"]: s for s in feed.store.spans}
    assert feed.lost == 0 and len(live) == len(offline.spans) > 0
    assert [live[s.id] for s in offline.spans] == [span_dict(s) for s in offline.spans]
    assert feed.counters() == offline.stats
