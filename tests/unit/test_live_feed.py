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
        codes = {int(k): v for k, v in header["codes"].items()}
        offline = pipeline.correlate(parse_lines(lines, codes, recording.string_kinds(header)), header)
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
