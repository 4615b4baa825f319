"""Parsing tracer lines and reading recordings, including broken ones."""

import gzip
import json

import pytest

from helpers import DATA
from qspan.output import recording
from qspan.errors import RecordingError
from qspan.model.events import Event, Lost
from qspan.transport.text import MalformedLine, parse_lines

CODES = {1: "co.switch", 6: "node.name"}
REAL = DATA / "stock-qd4-w100.qspan.gz"


def test_parse_event_lost_and_string_lines():
    out = list(parse_lines(["1 100 7 10 20 3 0", "Lost 12 events", "6 101 7 99 disk0 file 0"], CODES))
    assert out == [
        Event("co.switch", 100, 7, (10, 20, 3, 0)),
        Lost(12, 100),
        Event("node.name", 101, 7, (99, "disk0", "file", 0)),
    ]


@pytest.mark.parametrize("line,why", [("9 1 2 3 4 5 6", "unknown event code"), ("1 1 2 3", "expected 7 fields"),
                                      ("1 x 2 3 4 5 6", "non-numeric"), ("Attaching 3 probes", "not an event line")])
def test_malformed_lines_are_named(line, why):
    with pytest.raises(MalformedLine, match=why):
        list(parse_lines(["1 1 1 1 1 1 1", line], CODES))


def test_real_recording_reads_back():
    rec = recording.read(REAL)
    assert not rec.truncated and rec.end["reason"] == "duration"
    assert rec.header["target"]["version"].startswith("7.2")
    assert len(rec.events) == rec.end["event_lines"]
    assert {e.kind for e in rec.events} >= {"co.switch", "req.submit", "sys.io", "sched.switch"}


def _body() -> list[str]:
    with gzip.open(REAL, "rt") as f:
        return f.readlines()


def test_truncated_recording_is_refused_unless_allowed(tmp_path):
    lines = _body()
    cut = tmp_path / "cut.qspan"
    cut.write_text("".join(lines[:500]) + lines[500][:5])  # no #end, last line cut
    with pytest.raises(RecordingError, match=r"truncated \(last line cut.*--allow-truncated"):
        recording.read(cut)
    rec = recording.read(cut, allow_truncated=True)
    assert rec.truncated and len(rec.events) == 498  # two header lines, the cut line dropped


@pytest.mark.parametrize("mangle,message", [
    (lambda ls: ["garbage\n"] + ls[1:], "not a qspan recording"),
    (lambda ls: ls[:1] + ["#header {nope\n"] + ls[2:], r":2: malformed #header"),
    (lambda ls: ls[:100] + ["1 2 three 4 5 6 7\n"] + ls[100:], "corrupted recording near line"),
    (lambda ls: ls[:100] + ["77 1 1 1 1 1 1\n"] + ls[100:], "unknown event code 77"),
])
def test_corrupted_recordings_give_one_clear_error(tmp_path, mangle, message):
    bad = tmp_path / "bad.qspan"
    bad.write_text("".join(mangle(_body())))
    with pytest.raises(RecordingError, match=message):
        recording.read(bad)


def test_binary_garbage_and_bad_gzip(tmp_path):
    junk = tmp_path / "junk.qspan"
    junk.write_bytes(b"#qspan-recording 1\n#header {\"codes\": {}}\n\xff\xfe\x00\n")
    with pytest.raises(RecordingError, match="not UTF-8"):
        recording.read(junk)
    gz = tmp_path / "cut.qspan.gz"
    gz.write_bytes(REAL.read_bytes()[:2000])
    with pytest.raises(RecordingError, match="corrupted|truncated"):
        recording.read(gz)
    with pytest.raises(RecordingError, match="cannot open"):
        recording.read(tmp_path / "missing.qspan")


def test_a_capped_recording_stops_growing_and_still_reads_back(tmp_path):
    """The server caps each session's recording; what was written stays a complete recording."""
    lines = _body()
    header = json.loads(lines[1][len("#header "):])
    body = [ln.rstrip("\n") for ln in lines[2:] if not ln.startswith("#")]
    out = tmp_path / "capped.qspan"
    cap = 64 * 1024
    with open(out, "w") as f:
        w = recording.RecordingWriter(f, header, max_bytes=cap)
        w.lines(body[:100])
        for ln in body[100:]:
            w.line(ln)
        assert w.capped and w.written <= cap
        written_end = w.end({"reason": "stopped"})
    assert out.stat().st_size <= cap + 1024  # the #end line comes on top
    rec = recording.read(out)
    assert rec.end["capped"]["max_bytes"] == cap and rec.end["reason"] == "stopped"
    assert written_end == rec.end  # what a live session's export says is what the file says
    n = len(rec.events)
    assert 100 < n < len(body)
    assert rec.end["capped"]["first_line_dropped"] == body[n]  # nothing skipped before the cap, nothing after


def test_server_refuses_a_negative_recording_cap():
    from qspan.errors import QspanError
    from qspan.server.settings import Settings

    with pytest.raises(QspanError, match="record-max-mb"):
        Settings(record_max_mb=-1).check()
