"""Version-2 recordings (the ring transport's records kept as read), on a real one.

stock-ring-qd4-w100.qspan.gz is `qspan record` of the stock lab while the
guest wrote 100 blocks at qd 4 and read them back (`qspan-lab load --op write
--qd 4 --count 100 --verify --log`, whose output is the .guest.txt next to it).
"""

import errno
import gzip
import json
import os

import pytest

from helpers import DATA, guest_requests
from qspan import pipeline
from qspan.errors import RecordingError
from qspan.model.events import Event, Lost
from qspan.output import recording
from qspan.output.ringrecording import END, LINE, RING, RawRecordingWriter, _CPU, _FRAME
from qspan.transport.ringdecode import RECORD_LOST, RecordCounter, layout_of

RAW = DATA / "stock-ring-qd4-w100.qspan.gz"
GUEST = DATA / "stock-ring-qd4-w100.guest.txt"


def _split(data: bytes) -> tuple[bytes, dict, list[tuple[bytes, bytes]]]:
    """A version-2 recording's two text lines, header and frames (the test's own reading of the format)."""
    first, second, rest = data.split(b"\n", 2)
    frames, at = [], 0
    while at < len(rest):
        tag, n = _FRAME.unpack_from(rest, at)
        frames.append((tag, rest[at + _FRAME.size:at + _FRAME.size + n]))
        at += _FRAME.size + n
    return first + b"\n" + second + b"\n", json.loads(second[8:]), frames


def _join(head: bytes, frames) -> bytes:
    return head + b"".join(_FRAME.pack(tag, len(p)) + p for tag, p in frames)


@pytest.fixture(scope="module")
def raw():
    return gzip.decompress(RAW.read_bytes())


def test_a_real_ring_recording_gives_one_span_per_guest_request():
    rec = recording.read(RAW)
    assert rec.header["transport"] == "ring" and rec.end["reason"] == "duration" and not rec.truncated
    assert len(rec.events) == rec.end["event_lines"] and rec.end["lost_events"] == 0
    guest = guest_requests(GUEST.read_text())
    res = pipeline.correlate_recording(rec)
    writes = [s for s in res.spans if s.op == "write"]
    assert len(guest) == 100 and len(writes) == 100
    assert {("write", s.offset) for s in writes} == set(guest)
    assert len([s for s in res.spans if s.op == "read"]) == 100  # the verify pass
    assert res.stats["unfinished"] == 0 and res.stats["incomplete"] == 0
    assert all(s.nodes and s.nodes[0].node == "disk0" for s in writes)  # node names decoded from the rings


def test_its_frames_are_whole_records_as_the_rings_held_them(raw):
    head, header, frames = _split(raw)
    assert head.startswith(b"#qspan-recording 2\n") and frames[-1][0] == END
    assert {tag for tag, _ in frames} <= {RING, LINE, END}
    counter = RecordCounter(tuple(layout_of(f, header["ring_strlen"]) for f in header["ring_printfs"]))
    counted = sum(counter.count(_CPU.unpack_from(p)[0], p[_CPU.size:])[0] for tag, p in frames if tag == RING)
    assert counted == json.loads(frames[-1][1])["event_lines"]  # what the tracer counted is what is there


def test_replayed_as_text_it_reads_back_to_the_same_events(raw, tmp_path):
    """body_lines (the server's replay) turns it into version-1 lines: the same events either way."""
    rec = recording.read(RAW)
    text = tmp_path / "v1.qspan"
    with open(text, "w") as f:
        w = recording.RecordingWriter(f, rec.header)
        w.lines(list(recording.body_lines(RAW)))
        w.end(rec.end)
    again = recording.read(text)
    assert sorted(again.events, key=lambda e: (e.ts_ns, e.tid, e.kind)) == \
        sorted(rec.events, key=lambda e: (e.ts_ns, e.tid, e.kind))


def test_a_loss_the_kernel_counted_is_placed_after_the_record_before_it(raw, tmp_path):
    head, header, frames = _split(raw)
    i = next(k for k, (tag, p) in enumerate(frames) if tag == RING and len(p) > 2 + 72 * 4)
    tag, p = frames[i]
    lost = RECORD_LOST.to_bytes(4, "little") + b"\0\0" + (24).to_bytes(2, "little") + b"\0" * 8 + (7).to_bytes(8, "little")
    cut = _CPU.size + 72 * 2
    frames[i] = (tag, p[:cut] + lost + p[cut:])
    path = tmp_path / "lost.qspan"
    path.write_bytes(_join(head, frames))
    rec = recording.read(path)
    (loss,) = rec.lost
    second_ts = int.from_bytes(p[_CPU.size + 72 + 20:_CPU.size + 72 + 28], "little")  # the 2nd record's stamp
    assert loss == Lost(7, second_ts)
    assert len(rec.events) == len(recording.read(RAW).events)


def test_a_cut_recording_is_refused_unless_allowed_and_keeps_what_is_whole(raw, tmp_path):
    cut = tmp_path / "cut.qspan"
    cut.write_bytes(raw[:len(raw) // 2])
    with pytest.raises(RecordingError, match=r"truncated \(last frame cut at byte \d+\).*--allow-truncated"):
        recording.read(cut)
    rec = recording.read(cut, allow_truncated=True)
    assert rec.truncated and 0 < len(rec.events) < len(recording.read(RAW).events)
    assert all(type(e) is Event for e in rec.events)


@pytest.mark.parametrize("mangle,message", [
    (lambda h, fr: (h.replace(b'"ring_strlen"', b'"ring_strlen_"'), fr), r":2: malformed #header"),
    (lambda h, fr: (h, fr[:3] + [(b"X", b"junk")] + fr[3:]), r"no frame can start at byte \d+"),
    (lambda h, fr: (h, fr[:3] + [(RING, _CPU.pack(0) + b"\x09\0\0\0\0\0\xa0\x0f" + b"\0" * 32)] + fr[3:]),
     "malformed perf record in CPU 0's ring"),
    (lambda h, fr: (h, fr[:-1] + [(END, b"{nope")]), "malformed end frame"),
])
def test_a_corrupted_ring_recording_gives_one_clear_error(raw, tmp_path, mangle, message):
    head, _, frames = _split(raw)
    bad = tmp_path / "bad.qspan"
    bad.write_bytes(_join(*mangle(head, frames)))
    with pytest.raises(RecordingError, match=message):
        recording.read(bad)


def test_a_capped_ring_recording_stops_at_a_frame_and_still_reads_back(raw, tmp_path):
    _, header, frames = _split(raw)
    rings = [(_CPU.unpack_from(p)[0], p[_CPU.size:]) for tag, p in frames if tag == RING]
    out = tmp_path / "capped.qspan"
    cap = sum(len(d) for _, d in rings) // 2
    formats = header.pop("ring_printfs")
    with open(out, "wb") as f:
        w = RawRecordingWriter(f, header, tuple(formats), header.pop("ring_strlen"), max_bytes=cap)
        for cpu, data in rings:
            w.ring(cpu, data)
        assert w.capped and w.written <= cap
        w.end({"reason": "stopped", "event_lines": 0})
    rec = recording.read(out)
    assert rec.end["capped"]["max_bytes"] == cap and "bytes of CPU" in rec.end["capped"]["first_line_dropped"]
    assert 0 < len(rec.events) < len(recording.read(RAW).events)


def test_a_loss_bpftrace_printed_is_placed_after_the_records_read_before_it(raw, tmp_path):
    head, _, frames = _split(raw)
    i = next(k for k, (tag, p) in enumerate(frames) if tag == RING and len(p) > 2 + 72 * 4)
    before = frames[i][1]
    newest = int.from_bytes(before[-72 + 20:-72 + 28], "little")  # the frame's last record's stamp
    frames.insert(i + 1, (LINE, b"Lost 3 events"))
    path = tmp_path / "printed-loss.qspan"
    path.write_bytes(_join(head, frames))
    (loss,) = recording.read(path).lost
    assert loss == Lost(3, newest)


class _FillsUp:
    """A file that takes `room` bytes, then fails as a full disk does (ENOSPC)."""

    def __init__(self, room: int):
        self.room, self.data = room, bytearray()

    def write(self, b: bytes) -> int:
        if len(self.data) + len(b) > self.room:
            self.room = len(self.data)  # and full it stays
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.data += b
        return len(b)

    def flush(self) -> None:
        pass


def test_a_full_disk_stops_the_recording_not_the_trace(raw):
    """ENOSPC mid-recording: the writer stops there and says why; the end marker, if it cannot be
    written either, is reported as missing. Nothing raises into the tracer."""
    _, header, frames = _split(raw)
    rings = [(_CPU.unpack_from(p)[0], p[_CPU.size:]) for tag, p in frames if tag == RING]
    formats = tuple(header.pop("ring_printfs"))
    f = _FillsUp(room=4096 + sum(len(d) for _, d in rings) // 3)
    w = RawRecordingWriter(f, header, formats, header.pop("ring_strlen"))
    for cpu, data in rings:
        w.ring(cpu, data)
    w.line("a line bpftrace printed")
    assert w.capped and w.stopped_why == "write failed: No space left on device"
    end = w.end({"reason": "stopped"})
    assert end["capped"]["why"] == "write failed: No space left on device"
    assert end["recording_error"] == "no end marker after the failed write: the file reads as cut"


def test_after_a_failed_write_the_count_is_what_the_file_holds(raw):
    """A real file whose every write fails (/dev/full): what its buffer held was counted when handed
    over, but never reached the disk. The status's recording_bytes is the file's size after that
    (a 4 MiB tmpfs once read 4,197,191 bytes in tests/e2e/test_disk.py)."""
    _, header, frames = _split(raw)
    rings = [(_CPU.unpack_from(p)[0], p[_CPU.size:]) for tag, p in frames if tag == RING]
    formats = tuple(header.pop("ring_printfs"))
    with open("/dev/full", "wb", buffering=1 << 16) as f:  # a buffer the header fits in
        w = RawRecordingWriter(f, header, formats, header.pop("ring_strlen"))
        assert 0 < w.written < 1 << 16 < sum(len(d) for _, d in rings)  # the header, in the file's buffer
        for cpu, data in rings:
            w.ring(cpu, data)
        assert w.stopped_why == "write failed: No space left on device"
        assert w.written == os.fstat(f.fileno()).st_size == 0
        _close_failing(f)
    with open("/dev/full", "w") as f:  # the text writer: the same count
        t = recording.RecordingWriter(f, {"v": 1})
        t.lines(["x" * 100] * 200)
        assert t.stopped_why == "write failed: No space left on device" and t.written == 0
        _close_failing(f)


def _close_failing(f) -> None:
    """Close a file whose buffer cannot be written (as open_writer does): the close raises, then it is closed."""
    with pytest.raises(OSError):
        f.close()
    assert f.closed


def test_a_room_check_stops_the_recording_with_its_reason(raw):
    """The free-space check (server/recordings.py room_check) is asked before the first write and
    then every ROOM_CHECK_EVERY bytes; its reason ends up in the end marker."""
    _, header, frames = _split(raw)
    rings = [(_CPU.unpack_from(p)[0], p[_CPU.size:]) for tag, p in frames if tag == RING]
    formats = tuple(header.pop("ring_printfs"))
    asked = []

    def check():
        asked.append(1)
        return "3 MiB free in /tmp, under the 1024 MiB qspan leaves free" if len(asked) > 1 else None

    w = RawRecordingWriter(_FillsUp(1 << 30), header, formats, header.pop("ring_strlen"), room_check=check)
    w._next_check = 0
    for cpu, data in rings[:1]:
        w.ring(cpu, data)  # the first write: asked, room
    assert not w.capped and len(asked) == 1
    w._next_check = 0  # as if ROOM_CHECK_EVERY bytes had gone by
    w.ring(*rings[1])
    assert w.capped and w.stopped_why.startswith("3 MiB free")
    assert w.end({})["capped"]["why"].startswith("3 MiB free")
